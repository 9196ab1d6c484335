r"""Your own model, end to end: a NumPyro model in a file of yours, through the command line and Python.

Run: ``python examples/your_own_model.py`` (about 40 s on a laptop CPU; ``--fast``: fewer steps
and draws, for the tests). It writes the user's files, runs the commands on them and writes into
``docs/generated/`` (``--out``): ``your_own_model.md`` (the commands and what they printed),
``your_own_model.json`` (every number) and ``your_own_model.png`` (the data and the posterior
predictive band from q). The working folder ``your_own_model/`` under ``--out`` holds what a user
would have: ``my_model.py``, ``data.json``, the saved fit and the compare report (not committed).

The steps, as a user would type them:

1. ``my_model.py`` defines ``model(x, y=None)``, written as NumPyro's docs write models (a
   Student-t regression: robust to the outliers in the data); ``data.json`` holds ``x`` and ``y``.
2. ``vitools fit my_model.py:model --data data.json --out fit.vitools.npz``: one fit, its
   posterior summary and diagnostics, saved.
3. ``vitools compare my_model.py:model --data data.json --objectives reverse_kl,forward_kl
   --reference nuts --out report``: both KL directions against NUTS run on the spot; the table,
   and ``report/report.html`` with the plots.
4. In Python: ``from my_model import model``; ``vt.fit``, ``vt.diagnose``, ``vt.save`` and
   ``vt.load`` (the command line's saved fit too), ``fit.predictive`` at new x.

The example runs the commands through :func:`vitools.cli.main`, the function the ``vitools``
command calls, in this one process (a new process per command would spend seconds importing JAX);
each is printed as the shell line it stands for. Each claim is printed as a ``CHECK`` line ending
in ``ok`` or ``FAILED`` (the tests read them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shlex
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import vitools as vt  # noqa: E402
from vitools.cli import main as vitools_command  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "generated"
USER_MODEL = textwrap.dedent(
    '''
    """A user's model: a straight line with Student-t noise, robust to a few outliers."""
    import numpyro
    import numpyro.distributions as dist


    def model(x, y=None):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 10.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))  # degrees of freedom (Juarez & Steel 2010)
        with numpyro.plate("obs", len(x)):
            numpyro.sample("y", dist.StudentT(nu, alpha + beta * x, sigma), obs=y)
    '''
).lstrip()
TRUE_LINE = (1.0, 2.0)  # alpha, beta of the simulated data


def make_data(num_rows: int = 40, seed: int = 0) -> dict[str, list[float]]:
    """A line with unit noise and 3 gross outliers (what the Student-t likelihood is for)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-2.0, 2.0, num_rows))
    y = TRUE_LINE[0] + TRUE_LINE[1] * x + rng.normal(size=num_rows)
    y[rng.choice(num_rows, 3, replace=False)] += 15.0
    return {"x": x.round(4).tolist(), "y": y.round(4).tolist()}


def run_command(argv: list[str], log: list[str]) -> str:
    """Run ``vitools ARGV`` in this process; return its stdout (the table, with --json)."""
    log.append("$ vitools " + shlex.join(argv))
    print(log[-1], flush=True)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = vitools_command(argv)
    if code != 0:
        raise RuntimeError(f"vitools {argv[0]} exited {code}")
    return stdout.getvalue()


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"CHECK {name}: {detail} {'ok' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer steps and draws (for the tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the outputs go")
    args = parser.parse_args(argv)
    work = args.out / "your_own_model"  # the user's folder
    work.mkdir(parents=True, exist_ok=True)
    num_steps = 500 if args.fast else 2000
    num_draws = 1000 if args.fast else 4000  # draws of q for the diagnostics, tables and plots
    nuts = ["--nuts-chains", "1", "--nuts-warmup", "200", "--nuts-draws", "400"] if args.fast else []

    # 1. the user's files
    (work / "my_model.py").write_text(USER_MODEL)
    data = make_data()
    (work / "data.json").write_text(json.dumps(data))
    spec, data_file = f"{work}/my_model.py:model", str(work / "data.json")

    # 2-3. the command line
    log: list[str] = []
    common = ["--data", data_file, "--num-steps", str(num_steps), "--num-draws", str(num_draws), "--quiet"]
    fit_table = json.loads(
        run_command(["fit", spec, *common, "--out", str(work / "fit.vitools.npz"), "--json"], log)
    )
    compare_out = run_command(
        ["compare", spec, *common, "--objectives", "reverse_kl,forward_kl", "--reference", "nuts", *nuts,
         "--out", str(work / "report"), "--json"],
        log,
    )  # fmt: skip
    compare_table = json.loads(compare_out)
    print(json.dumps(compare_table, indent=1))

    # 4. the Python API on the same file: a user imports their model
    sys.path.insert(0, str(work))
    model = importlib.import_module("my_model").model
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    fit = vt.fit(model, x, y=y, num_steps=num_steps, seed=0, progress=False)  # what `vitools fit` ran
    diagnosis = vt.diagnose(fit, num_draws=num_draws, warn=False)
    print(fit, diagnosis, sep="\n")
    saved = vt.save(fit, work / "api.vitools.npz")
    loaded = vt.load(saved, model, x, y=y)  # the model and its data, as vt.fit took them
    from_cli = vt.load(work / "fit.vitools.npz", model, x, y=y)
    same_draws = max(float(np.max(np.abs(loaded.sample(100, seed=3)[k] - fit.sample(100, seed=3)[k])))
                     for k in ("alpha", "beta", "sigma", "nu"))  # fmt: skip
    mean_fit, _ = fit.mean_and_covariance()
    cli_gap = float(np.max(np.abs(from_cli.mean_and_covariance()[0] - mean_fit)))
    # posterior predictive at new x: y given x_new, the observed site left None
    x_new = np.linspace(-2.5, 2.5, 41)
    y_new = loaded.predictive(num_draws, x_new, seed=4)["y"]  # (num_draws, 41)
    band = np.quantile(y_new, [0.05, 0.5, 0.95], axis=0)
    draws = fit.sample(num_draws, seed=5)
    line_mean = float(np.mean(draws["alpha"])), float(np.mean(draws["beta"]))
    line_sd = float(np.std(draws["alpha"])), float(np.std(draws["beta"]))
    line_z = max(abs(m - t) / s for m, t, s in zip(line_mean, TRUE_LINE, line_sd, strict=True))

    fig, ax = plt.subplots(figsize=(6.5, 4.0), constrained_layout=True)
    ax.fill_between(x_new, band[0], band[2], color="tab:blue", alpha=0.25, label="90% posterior predictive")
    ax.plot(x_new, band[1], color="tab:blue", lw=2, label="predictive median")
    ax.plot(
        x_new, TRUE_LINE[0] + TRUE_LINE[1] * x_new, color="k", ls=":", label="the line that made the data"
    )
    ax.scatter(x, y, s=14, color="k", zorder=3, label="data (3 outliers)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("my_model.py:model, reverse KL, after vt.save / vt.load")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(args.out / "your_own_model.png", dpi=80)
    plt.close(fig)

    inside = float(np.mean((y >= np.interp(x, x_new, band[0])) & (y <= np.interp(x, x_new, band[2]))))
    results = {
        "num_steps": num_steps,
        "num_draws": num_draws,
        "commands": [line.replace(f"{work}/", "") for line in log],  # as typed in the user's folder
        "fit_table": fit_table,
        "compare_table": compare_table,
        "api": {"khat": diagnosis.khat, "verdict": diagnosis.verdict, "ess": diagnosis.ess,
                "elbo": diagnosis.elbo, "log_evidence": diagnosis.log_evidence,
                "posterior_mean_alpha_beta": line_mean, "max_draw_difference_after_load": same_draws,
                "max_mean_difference_cli_vs_api": cli_gap, "data_inside_90_band": inside},
    }  # fmt: skip
    (args.out / "your_own_model.json").write_text(json.dumps(results, indent=2) + "\n")
    columns = ("verdict", "khat", "ess", "elbo", "log_evidence", "mean_error", "sd_ratio", "w1")
    lines = ["| fit | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in compare_table.items():
        cells = ["" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
                 for v in (row.get(c) for c in columns)]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (args.out / "your_own_model.md").write_text(
        "```console\n" + "\n".join(results["commands"]) + "\n```\n\n" + "\n".join(lines)
        + f"\n\n{num_steps} steps per fit, {num_draws} draws of each q; NUTS is the reference (its row "
        "reads mean error 0, W1 0).\n"
    )  # fmt: skip

    verdicts = {name: row["verdict"] for name, row in compare_table.items() if name != "NUTS"}
    w1 = {name: row["w1"] for name, row in compare_table.items() if name != "NUTS"}
    oks = [
        check(
            "vitools fit ran and reported one fit",
            list(fit_table) == ["reverse_kl/fullrank"],
            f"rows {list(fit_table)}",
        ),  # fmt: skip
        check(
            "vitools compare fitted both directions and NUTS",
            list(compare_table) == ["reverse_kl/fullrank", "forward_kl/fullrank", "NUTS"],
            f"rows {list(compare_table)}",
        ),  # fmt: skip
        # a 4-parameter regression: both Gaussians sit close to NUTS (W1 measured 0.05-0.15 in NUTS
        # sds; nu's long right tail is the largest term); 0.3 is a fit gone wrong
        check(
            "both fits are close to NUTS",
            max(w1.values()) < 0.3,
            f"W1 {', '.join(f'{v:.3f}' for v in w1.values())} < 0.3",
        ),  # fmt: skip
        check("the report was written", (work / "report" / "report.html").is_file(), "report/report.html"),
        # same options, same seed: `vitools fit` is vt.fit; float32 rounding is ~1e-6
        check(
            "the command line's saved fit is the Python API's",
            cli_gap < 1e-4,
            f"max |mean difference| {cli_gap:.2g} < 1e-4",
        ),  # fmt: skip
        check(
            "vt.load gives back the same q",
            same_draws < 1e-5,
            f"max |draw difference| {same_draws:.2g} < 1e-5",
        ),
        # the Student-t likelihood discounts the 3 outliers: the true line lies within 3 posterior sds
        # of q's mean (a normal likelihood would be pulled up by 15 x 3 / 40 = 1.1, ~5 sds)
        check(
            "the fitted line is the one that made the data",
            line_z < 3.0,
            f"(alpha, beta) = ({line_mean[0]:.2f}, {line_mean[1]:.2f}): {line_z:.1f} sd from {TRUE_LINE} < 3",
        ),  # fmt: skip
        # 37 inliers of 40: about 90% of them fall in the 90% band; 0.75 leaves room for 40 rows' noise
        check(
            "the predictive band holds most of the data", inside > 0.75, f"{inside:.2f} of the rows > 0.75"
        ),
    ]
    print(f"verdicts: {verdicts}")
    print(f"wrote {args.out}/your_own_model.md, .json, .png; the user's files in {work}")
    return all(oks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
