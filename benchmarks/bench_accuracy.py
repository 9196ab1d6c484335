r"""Accuracy per compute on the model zoo: vitools (objective x family) vs NumPyro SVI and NUTS.

For every zoo model (``vitools.models``):

- **vitools**: ``vt.fit`` with its defaults (seed 0, progress off) for each objective
  (``reverse_kl``: 16 draws/step, ``forward_kl``: its default, max(64, 2 dim)) x family (``meanfield``,
  ``fullrank``, ``lowrank`` of rank 5, skipped where dim <= 5, ``iaf``, the normalizing flow, on models
  with dim <= ``IAF_MAX_DIM``), at ``BUDGETS`` steps (2000 is
  the default). Wall time is split into the compiled loop (``fit.elapsed``), compilation of the
  loop (``fit.compile_time``, first call of a configuration only) and the rest (tracing the
  model and the default Laplace-path initialisation, with its own compilation on the model's
  first fit).
- **vitools, issue 13's breadth** (``BREADTH_CONFIGS``): IWAE (DReG), χ²/CUBO, the reverse-to-forward
  hybrid, Markovian score climbing and batch-and-match with the full-rank family; forward KL with
  the coupling flow and the Gaussian mixture, reverse KL with the coupling flow; ``vt.pathfinder``
  with 4 paths. At the default budget only.
- **NumPyro SVI**: ``AutoNormal`` (~ meanfield) and ``AutoMultivariateNormal`` (~ fullrank) with
  ``Trace_ELBO(num_particles=16)`` (vectorized) and ``optax.adam(lr)`` at constant rate, the same
  number of steps as vitools, hence the same number of gradient evaluations as vitools' reverse
  KL (16 x steps). NumPyro's defaults otherwise (``init_to_uniform``, init scale 0.1). The loop
  is ``svi.update`` under one compiled ``lax.scan`` of 250 steps, run until each budget; with
  a constant learning rate the state after k steps is that of a k-step ``SVI.run``.
- **NUTS** at equal wall time: one chain whose warm-up + draws take, compilation included,
  about as long as the default ``vt.fit`` call on the same model (compilation included).

Accuracy against the zoo reference with :func:`vitools.comparison.compare` on 2000 draws of each q:
``w1`` (mean 1-D W1 of reference-standardized marginals), ``mean_error`` (standardized),
``sd_ratio``, PSIS ``khat`` and its verdict. ``w1_psis`` is W1 of the same kind for the draws
reweighted by their Pareto-smoothed importance weights: what k̂ vouches for.

SVI's q is read back as a vitools Fit (``vt.Fit.from_gaussian``, see ``baselines.py``), so its draws,
k̂ and distances come from the same code as vitools' fits.

Outputs ``benchmarks/results/accuracy.{md,csv}``, ``accuracy_verdicts.csv`` and
``accuracy_vs_evals.png`` (``--out DIR`` writes them elsewhere). The runs are in ``accuracy_runs.py``
(settings, fits, scores), the report in ``accuracy_report.py``; this script is the command line.

Run: ``.venv/bin/python benchmarks/bench_accuracy.py [--quick] [--models a,b] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_report import write_report  # noqa: E402
from accuracy_runs import BUDGETS, QUICK_BUDGETS, QUICK_MODELS, SVI_LEARNING_RATES, run_model  # noqa: E402
from common import RESULTS_DIR, cpu_model, format_load, load_note, now, versions  # noqa: E402

from vitools.engine import PROGRAMS  # noqa: E402
from vitools.models import list_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"3 models {QUICK_MODELS}, budgets {QUICK_BUDGETS}"
    )
    parser.add_argument("--models", default="", help="comma-separated zoo models (default: all)")
    parser.add_argument("--svi-lr", default=",".join(map(str, SVI_LEARNING_RATES)))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite accuracy.md and the plot from accuracy.csv"
    )
    args = parser.parse_args(argv)
    if args.report_only:  # keeps the header (date, load, versions) of the run that made the CSV
        out = Path(args.out)
        df = pd.read_csv(out / "accuracy.csv")
        header = "\n".join((out / "accuracy.md").read_text().splitlines()[:4]) + "\n"
        budgets = sorted(df.loc[df["method"] == "vitools", "budget"].unique().astype(int))
        rates = sorted({float(c.rsplit("lr=", 1)[1]) for c in df["config"] if "lr=" in c})
        write_report(df, out, header, budgets, rates)
        return 0
    models = args.models.split(",") if args.models else (list(QUICK_MODELS) if args.quick else list_models())
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    svi_rates = tuple(float(x) for x in args.svi_lr.split(","))
    out = Path(args.out)
    load = load_note()
    start = time.perf_counter()
    print(f"# accuracy benchmark, {now()}; {format_load(load)}", flush=True)
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for name in models:
        rows.extend(run_model(name, budgets, svi_rates))
        # Each model's programs go once it is done: with all 14 models' programs kept, every new
        # program on the last model failed with "Failed to materialize symbols" (at 7d011b1's
        # parent; see tests/conftest.py for the likely limit, memory mappings per process).
        PROGRAMS.clear()
        jax.clear_caches()
        pd.DataFrame(rows).to_csv(out / "accuracy_partial.csv", index=False, float_format="%.5g")
    total = time.perf_counter() - start
    df = pd.DataFrame(rows)
    df.to_csv(out / "accuracy.csv", index=False, float_format="%.5g")
    header = f"""# Accuracy per compute on the model zoo

{now()}; {cpu_model()}, {load["nproc"]} cores; {format_load(load)}; total runtime {total / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())}.
"""
    write_report(df, out, header, budgets, svi_rates)
    print(f"# done in {total / 60:.1f} min -> {out / 'accuracy.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
