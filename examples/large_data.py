r"""Large data: fit a logistic regression on a minibatch of rows a step, and check it against all rows.

Run: ``python examples/large_data.py`` (about 40 s on a laptop CPU; ``--fast``: 10^4 rows and fewer
steps, for the tests). Writes into ``docs/generated/`` (``--out``): ``large_data.md`` (posterior
means and sds of both fits against the full-data posterior, seconds per step) and
``large_data.json``.

The model marks its data plate with ``subsample_size``, as NumPyro's docs do::

    with numpyro.plate("rows", N, subsample_size=B):
        xb = numpyro.subsample(x, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w), obs=yb)

``vt.fit`` then draws a fresh minibatch of B rows every step and scales its log likelihood by
N / B, an unbiased estimate of the full-data one, so a step costs what B rows cost, whatever N.
The Laplace start runs on a fixed random subset of rows, the diagnostics and draws afterwards on
all rows. The same model with ``subsample_size=None`` reads every row every step: the reference fit.

The price is gradient noise, which grows like sqrt(N / B). vt.fit cancels most of it with a
control variate: the full data's log density and gradient at one point near the posterior
(``vitools.control_variate``), which corrects each minibatch. On plain minibatches the subsampled
q's mean wandered by a fraction of a posterior sd around the full-data one; controlled, it stays
within a hundredth (measured, ``benchmarks/results/subsample_control.md``). The full-data
posterior of a logistic regression with 10^5 rows is Gaussian to O(1/sqrt(N)), so Newton's mode
and inverse Hessian (float64) are the yardstick for both fits.
Each claim is printed as a ``CHECK`` line ending in ``ok`` or ``FAILED`` (the tests read them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpyro
import numpyro.distributions as dist

import vitools as vt

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "generated"
COEFFICIENTS = np.array([1.0, -0.5, 0.25, 0.0, 0.75])  # the data's true slopes


def logistic(x, y=None, batch_size=None):
    """Bayesian logistic regression, ``w ~ N(0, 1)``; ``batch_size`` rows a step (None: all)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("rows", x.shape[0], subsample_size=batch_size):
        xb = numpyro.subsample(x, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w), obs=yb)


def make_data(num_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_rows, COEFFICIENTS.size)).astype(np.float32)  # float32: 2 MB at 10^5 rows
    y = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-x @ COEFFICIENTS))).astype(np.float32)
    return x, y


def newton(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full-data posterior mode and sds (Laplace), Newton's method in float64 from 0."""
    x, y, w = x.astype(float), y.astype(float), np.zeros(x.shape[1])
    for _ in range(10):  # from 0 the step is below 1e-12 after 6-7 iterations
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.eye(x.shape[1])
        w = w + np.linalg.solve(hessian, x.T @ (y - p) - w)
    return w, np.sqrt(np.diag(np.linalg.inv(hessian)))


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"CHECK {name}: {detail} {'ok' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer rows and steps (for the tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the table and JSON go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    num_rows = 10_000 if args.fast else 100_000
    batch_size = 500 if args.fast else 1000  # N / B = 20 and 100: the gradient noise is sqrt of that
    # the subsampled fit takes 3x the steps: its noisier gradient needs a longer decay (measured)
    num_steps = {"subsampled": 1500 if args.fast else 3000, "all rows": 500 if args.fast else 1000}

    x, y = make_data(num_rows)
    mode, sds = newton(x, y)
    fits = {
        name: vt.fit(
            logistic,
            x,
            y=y,
            batch_size=batch,
            num_steps=num_steps[name],
            converge=False,
            seed=0,
            progress=False,
        )  # fmt: skip
        for name, batch in (("subsampled", batch_size), ("all rows", None))
    }
    results = {
        "num_rows": num_rows,
        "batch_size": batch_size,
        "mode": mode.tolist(),
        "sd": sds.tolist(),
        "fits": {},
    }
    for name, fit in fits.items():
        print(f"{name}: {fit}")
        mean, cov = fit.mean_and_covariance()  # w is unconstrained: q's moments are w's
        results["fits"][name] = {
            "num_steps": fit.num_steps,
            "mean": mean.tolist(),
            "sd": np.sqrt(np.diag(cov)).tolist(),
            "mean_error_sd": ((mean - mode) / sds).tolist(),
            "sd_ratio": (np.sqrt(np.diag(cov)) / sds).tolist(),
            # the loop's wall time (the start's pilot steps included, if it raced) over its steps
            "ms_per_step": 1e3 * fit.elapsed / fit.num_steps,
            "compile_s": fit.compile_time,
            "init_s": fit.init_time,
        }
    sub, full = results["fits"]["subsampled"], results["fits"]["all rows"]
    sub_vs_full = (np.array(sub["mean"]) - np.array(full["mean"])) / sds
    results["subsampled_vs_all_rows_sd"] = sub_vs_full.tolist()
    (args.out / "large_data.json").write_text(json.dumps(results, indent=2) + "\n")

    rows = ["| | " + " | ".join(f"w[{j}]" for j in range(mode.size)) + " | ms per step |",
            "|---" * (mode.size + 2) + "|",
            "| full-data posterior (Newton) | "
            + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mode, sds, strict=True)) + " | |"]  # fmt: skip
    for name, row in results["fits"].items():
        label = (
            f"q, {name} ({batch_size} of {num_rows} rows a step)" if name == "subsampled" else f"q, {name}"
        )
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(row["mean"], row["sd"], strict=True)]
        rows.append(
            f"| {label}, {row['num_steps']} steps | " + " | ".join(cells) + f" | {row['ms_per_step']:.2f} |"
        )
    errors = " | ".join(f"{e:+.2f}" for e in sub_vs_full)
    rows.append(f"| (subsampled - all rows) / posterior sd | {errors} | |")
    (args.out / "large_data.md").write_text(
        "\n".join(rows)
        + "\n\nmean ± sd of each w; ms per step: the compiled loop's wall time over its steps "
        "on the machine that wrote this (a shared 2-core CPU, so an upper bound; compile time excluded).\n"
    )
    speedup = full["ms_per_step"] / sub["ms_per_step"]
    print(f"seconds per step: subsampled {sub['ms_per_step']:.2f} ms, all rows {full['ms_per_step']:.2f} ms "
          f"({speedup:.0f}x; not checked: timings are the machine's)")  # fmt: skip

    max_sub = float(np.max(np.abs(sub["mean_error_sd"])))
    max_full = float(np.max(np.abs(full["mean_error_sd"])))
    max_between = float(np.max(np.abs(sub_vs_full)))
    ratios = np.array(sub["sd_ratio"] + full["sd_ratio"])
    oks = [
        # every step sees every row: only the 16-draw reparameterised gradient's noise is left, which
        # the decayed learning rate averages out; 0.2 sd is what it leaves at most (measured ~0.05)
        check(
            "the all-rows fit's mean sits on the posterior mode",
            max_full < 0.2,
            f"max |mean - mode| {max_full:.2f} sd < 0.2",
        ),  # fmt: skip
        # sqrt(N / B) = 10 times noisier gradients: bench_subsample measured up to 1.0 sd at N / B =
        # 244 over 10 seeds; 1.0 sd leaves q's mean inside the posterior's bulk
        check(
            "the subsampled fit's mean is within 1 posterior sd of the mode",
            max_sub < 1.0,
            f"max |mean - mode| {max_sub:.2f} sd < 1.0",
        ),  # fmt: skip
        check(
            "the two fits agree", max_between < 1.0, f"max |mean_sub - mean_all| {max_between:.2f} sd < 1.0"
        ),
        # both q's sds against the Laplace sds: bench_subsample measured 0.75-1.39 subsampled
        check(
            "both fits have the posterior's sds",
            bool(np.all((ratios > 0.6) & (ratios < 1.5))),
            f"sd ratios {ratios.min():.2f}-{ratios.max():.2f} within 0.6-1.5",
        ),  # fmt: skip
    ]
    print(f"wrote {args.out}/large_data.md, large_data.json")
    return all(oks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
