r"""Accuracy of vitools' defaults on the posteriordb corpus, against NumPyro SVI at the same budget.

For every posterior of ``benchmarks/posteriordb`` (models translated from Stan, data as
``data.json`` holds it):

- **vitools**: ``vt.fit(model, data, objective=...)`` with every other argument at its default
  (fullrank family, 2000 steps, seed 0), for ``reverse_kl`` and ``forward_kl``; a non-finite loss
  is recorded (``on_nonfinite="warn"``), not raised. Where the default fit raises (the Laplace
  init's Hessian through diffrax's ODE solve), the error is a row and the fit is run again from
  ``init="median"``.
- **NumPyro SVI** ``AutoMultivariateNormal`` with ``Trace_ELBO(num_particles=16)`` (vectorized) and
  ``optax.adam`` at a constant rate of 0.01 and of 0.1, for as many steps as vitools' reverse-KL
  fit took, hence the same density-gradient evaluations (``fit.num_grad_evals``). NumPyro's
  default init (``init_to_uniform``); where it fails (validation of a NaN at the initial point)
  the fit starts at the prior median instead, and the row says so. The markdown table shows the
  better rate by mean W1/sd (an oracle choice in SVI's favour); the CSV has both.

Scores (``posteriordb/scoring.py``) on 2000 draws of each q, per scalar parameter against the
reference: mean W1/sd, max |mean error|/sd, and the sd ratio's range; PSIS k̂ of the same draws'
log weights ``log p - log q`` with :func:`vitools.importance.psis_khat` (the function behind
``vt.diagnose``) for every method, SVI included (its q is scored through the same target).

Outputs ``benchmarks/results/posteriordb.{md,csv}``.

Run: ``make bench`` (after ``run_all.py``) or
``.venv/bin/python benchmarks/bench_posteriordb.py [--only name,name] [--out folder]`` (~15 min).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from numpyro.infer import init_to_median, init_to_uniform
from numpyro.infer.autoguide import AutoMultivariateNormal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
import vitools as vt  # noqa: E402
from benchmarks.baselines import SVI_PARTICLES, compile_svi_loop, make_svi, svi_fit  # noqa: E402
from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    cpu_model,
    format_load,
    load_note,
    markdown_table,
    now,
    versions,
)
from benchmarks.importance import importance_draws  # noqa: E402
from benchmarks.posteriordb import POSTERIORS, load  # noqa: E402
from benchmarks.posteriordb.scoring import headline, reference_summary, score  # noqa: E402
from vitools.importance import khat_threshold  # noqa: E402

OBJECTIVES = ("reverse_kl", "forward_kl")
DEFAULT_STEPS = 2000  # vt.fit's default num_steps, for SVI when the reverse-KL fit failed
SVI_LEARNING_RATES = (0.01, 0.1)
NUM_DRAWS = 2000  # draws of each q for the scores and k-hat


def evaluate(fit: vt.Fit, reference: dict, summary: dict) -> dict:
    """Scores and k̂ of one fit (vitools' or SVI's) from NUM_DRAWS draws of its q; k̂ is NaN for NaN
    log weights (a diverged fit, or draws where the ODE solve failed)."""
    weighted = importance_draws(fit, NUM_DRAWS, seed=1)
    out = headline(score(weighted.draws, reference, summary)) | {"khat": weighted.khat}
    out["nan_log_p"] = int(np.isnan(weighted.log_p).sum())
    return out


def fit_vitools(model, data, objective: str, **options) -> tuple[object | None, dict]:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low-ESS warnings: the scores say more
            fit = vt.fit(
                model, data, objective=objective, seed=0, progress=False, on_nonfinite="warn", **options
            )
    except Exception as err:  # a failing fit is a result, not a crash
        return None, {"wall_s": time.perf_counter() - start, "status": f"error: {type(err).__name__}: {err}"}
    info = {"wall_s": time.perf_counter() - start, "steps": fit.num_steps, "grad_evals": fit.num_grad_evals}
    return fit, info | {"status": fit.status}


def fit_svi(model, data, target: vt.Target, num_steps: int, learning_rate: float) -> tuple[vt.Fit, dict]:
    """NumPyro SVI AutoMultivariateNormal, ``num_steps`` steps in one compiled scan, seed 0."""
    start = time.perf_counter()
    note = ""
    for init in (init_to_uniform, init_to_median):
        guide = AutoMultivariateNormal(model, init_loc_fn=init)
        svi = make_svi(model, guide, learning_rate)
        try:
            state = svi.init(jax.random.PRNGKey(0), data)
            break
        except ValueError as err:  # NumPyro validates the concrete initial trace
            note = f"default init failed ({err}); started at the prior median; "
    state, losses = jax.block_until_ready(compile_svi_loop(svi, state, num_steps, (data,))(state))
    wall = time.perf_counter() - start
    status = "completed" if np.isfinite(np.asarray(losses)).all() else "nonfinite"
    info = {"wall_s": wall, "steps": num_steps, "grad_evals": num_steps * SVI_PARTICLES}
    record = dict(num_steps=num_steps, num_grad_evals=info["grad_evals"], elapsed=wall, status=status, seed=0)
    fit = svi_fit(guide, svi.get_params(state), target, **record)
    return fit, info | {"status": note + status, "learning_rate": learning_rate}


def run_posterior(name: str) -> list[dict]:
    model, data, reference = load(name)
    summary = reference_summary(name)
    target = vt.Target.from_model(model, data)
    base = {"posterior": name, "dim": target.dim}
    print(f"## {name} (dim {target.dim}): {format_load(load_note())}", flush=True)
    rows, num_steps = [], DEFAULT_STEPS
    for objective in OBJECTIVES:
        fit, info = fit_vitools(model, data, objective)
        rows.append(base | {"method": f"vitools {objective}"} | info)
        if fit is None:  # e.g. the Laplace init's Hessian through an ODE solve: try NumPyro's init point
            _echo(rows[-1])
            fit, info = fit_vitools(model, data, objective, init="median")
            rows.append(base | {"method": f"vitools {objective} init=median"} | info)
        if fit is not None:
            rows[-1] |= evaluate(fit, reference, summary)
            if objective == "reverse_kl":
                num_steps = fit.num_steps
        _echo(rows[-1])
    for rate in SVI_LEARNING_RATES:
        try:
            fit, info = fit_svi(model, data, target, num_steps, rate)
            row = base | {"method": "SVI AutoMVN"} | info | evaluate(fit, reference, summary)
        except Exception as err:
            row = base | {"method": "SVI AutoMVN", "learning_rate": rate}
            row |= {"status": f"error: {type(err).__name__}: {err}"}
        rows.append(row)
        _echo(row)
    return rows


def _echo(row: dict) -> None:
    rate = f" lr={row['learning_rate']:g}" if "learning_rate" in row else ""
    print(
        f"  {row['method'] + rate:<28} evals {row.get('grad_evals', '')!s:>6} "
        f"wall {row.get('wall_s', 0):6.1f}s "
        f"w1 {row.get('w1', math.nan):.3f} max err {row.get('max_mean_error', math.nan):.3f} "
        f"khat {row.get('khat', math.nan):.2f} {row.get('status', '')}",
        flush=True,
    )


def best_svi(df: pd.DataFrame) -> pd.DataFrame:
    """Every vitools row, and per posterior the SVI row with the lower w1 (NaN w1 loses)."""
    svi = df[df["method"] == "SVI AutoMVN"].copy()
    svi["_rank"] = svi["w1"].fillna(np.inf)
    best = svi.sort_values("_rank").groupby("posterior", sort=False).head(1).drop(columns="_rank")
    best["method"] = [f"SVI AutoMVN lr={r:g}" for r in best["learning_rate"]]
    order = {name: i for i, name in enumerate(df["posterior"].unique())}
    out = pd.concat([df[df["method"] != "SVI AutoMVN"], best])
    return out.sort_values("posterior", key=lambda s: s.map(order), kind="stable")


def report(df: pd.DataFrame, started: str, load: dict, minutes: float) -> str:
    shown = best_svi(df)
    header = [
        "posterior",
        "dim",
        "method",
        "evals",
        "W1/sd",
        "max mean err/sd",
        "sd ratio",
        "k̂",
        "wall s",
        "status",
    ]
    rows = [
        [
            r.posterior,
            r.dim,
            r.method,
            int(r.grad_evals) if pd.notna(r.get("grad_evals")) else None,
            r.get("w1"),
            r.get("max_mean_error"),
            f"{r.min_sd_ratio:.2f}-{r.max_sd_ratio:.2f}" if pd.notna(r.get("min_sd_ratio")) else "",
            r.get("khat"),
            r.get("wall_s"),
            _short(r.status),
        ]
        for _, r in shown.iterrows()
    ]
    failures = [
        f"- {r.posterior}, {r.method}"
        + (f" lr={r.learning_rate:g}" if pd.notna(r.get("learning_rate")) else "")
        + f": {r.status}"
        for _, r in df.iterrows()
        if r.status not in ("completed", "converged")
    ]
    # a vitools fit that raised and its init="median" rerun count as one method
    methods = (
        shown["method"].str.replace(" init=median", "").where(~shown["method"].str.startswith("SVI"), "SVI")
    )
    means = shown.dropna(subset=["w1"]).groupby(methods, sort=False)["w1"].agg(["mean", "median"])
    return f"""# vitools on the posteriordb corpus

Generated by `benchmarks/bench_posteriordb.py` ({started}), {minutes:.1f} min.

- Machine: {cpu_model()}, CPU only; {format_load(load)}.
- Versions: {", ".join(f"{k} {v}" for k, v in versions().items())}.
- vitools: `vt.fit(model, data, objective=...)`, defaults otherwise (fullrank, 2000 steps, seed 0,
  float32); where that raised, the same from `init="median"` on the next row.
- SVI: `AutoMultivariateNormal`, `Trace_ELBO(num_particles={SVI_PARTICLES})`, Adam at a constant rate,
  as many steps as vitools' reverse KL (the same gradient evaluations); the better of lr
  {" and ".join(map(str, SVI_LEARNING_RATES))} by W1/sd is shown (both are in `posteriordb.csv`).
- evals: target log-density evaluations (with gradients, except forward KL's 64 per step).
- Scores on {NUM_DRAWS} draws of each q against the reference (1000 draws; means and sds from
  10,000): mean over scalar parameters of W1/sd (exact draws: about 0.04-0.06), max |mean error|/sd,
  range of sd ratios; PSIS k̂ of the same draws (threshold {khat_threshold(NUM_DRAWS):.2f}).

{markdown_table(header, rows)}

Over the corpus (W1/sd, a raised default fit counted by its init="median" rerun):
{chr(10).join(f"- {m}: mean {v['mean']:.3f}, median {v['median']:.3f}" for m, v in means.iterrows())}

## Failures, non-finite fits and fallbacks

{chr(10).join(failures) or "None."}
"""


def _short(status: str) -> str:
    """A status for the table: the exception's type, or the SVI fallback, in a few words."""
    if status.startswith("error"):
        return status.split(":")[0] + ": " + status.split(":")[1].strip()
    if status.startswith("default init failed"):
        return "prior-median init; " + status.rsplit("; ", 1)[-1]
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated posteriors (default: all)")
    parser.add_argument("--out", default="", help="output folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(POSTERIORS)
    started, load, tick = now(), load_note(), time.perf_counter()
    rows = [row for name in names for row in run_posterior(name)]
    df = pd.DataFrame(rows)
    df.to_csv(out / "posteriordb.csv", index=False)
    (out / "posteriordb.md").write_text(report(df, started, load, (time.perf_counter() - tick) / 60))
    print(f"# wrote {out / 'posteriordb.md'} and posteriordb.csv", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
