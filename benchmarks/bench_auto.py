r"""The automatic mode against the default fit and the best hand-chosen configuration (issue 16).

For zoo models and the posteriordb corpus: ``vt.fit(model)`` at its defaults (reverse KL, full-rank
Gaussian, at most 2000 steps, seed 0) and ``vt.auto_fit(model)`` (seed 0, its default budget of
10^6 gradient evaluations), both compared by ``vt.compare`` against the reference draws (10,000
draws of q): verdict, k̂, mean W1/sd of the marginals, gradient evaluations (starts included) and
wall time (compile included; the automatic mode's comparisons between attempts included). The
``best hand-chosen`` columns are the lowest-W1 configuration among those that read good in the
stored all-objectives-by-all-families table (``results/divergences.csv``, five posteriors) or the
accuracy benchmark (``results/accuracy.csv``, the zoo at its 2000-step budget), where the model is
in one of them. ``path``: the attempts auto made, ``+`` between them, its choice starred, ``(NaN)``
after one whose loss turned non-finite (auto tries it again at half the learning rate).
``--seeds 0,1,2`` repeats each model over seeds (the fits' and the comparison's draws).

Outputs ``benchmarks/results/{out}.{md,csv}`` (``--out``, default ``auto``).

Run: ``.venv/bin/python benchmarks/bench_auto.py [--models a,b] [--seeds 0,1,2] [--out name]`` (about
an hour on 2 cores). The funnel over three seeds (issue 16's "on the funnel it ends on a flow with k̂
under threshold", too slow for the tests: 4-10 minutes a seed on 2 cores):
``--models funnel --seeds 0,1,2 --out auto_funnel``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from common import RESULTS_DIR, format_load, load_note, markdown_table, now, problem, versions, vitools_commit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
import vitools as vt  # noqa: E402
from vitools.engine import PROGRAMS  # noqa: E402

ZOO = (
    "banana", "bimodal", "funnel", "eight_schools_noncentered", "logistic_regression", "radon",
    "gp_poisson", "collinear_large",
)  # fmt: skip


def _corpus() -> tuple[str, ...]:
    from benchmarks.posteriordb import POSTERIORS

    return tuple(POSTERIORS)


def _best_by_hand(name: str) -> tuple[str, float, float]:
    """``(configuration, w1, grad_evals)`` of the stored tables' best good fit of ``name``."""
    rows = []
    divergences = RESULTS_DIR / "divergences.csv"
    if divergences.exists():
        table = pd.read_csv(divergences)
        rows.append(table[table["model"] == name].rename(columns={"fit": "config"}))
    accuracy = RESULTS_DIR / "accuracy.csv"
    if accuracy.exists():
        table = pd.read_csv(accuracy)
        keep = (table["model"] == name) & (table["method"] == "vitools") & (table["budget"] == 2000)
        rows.append(table[keep])
    rows = [r for r in rows if len(r)]
    if not rows:
        return "", np.nan, np.nan
    table = pd.concat(rows)
    good = table[table["verdict"] == "good"]
    if good.empty:
        return "(none reads good)", np.nan, np.nan
    best = good.loc[good["w1"].idxmin()]
    return str(best["config"]), float(best["w1"]), float(best["grad_evals"])


def run(name: str, seed: int = 0) -> dict:
    print(f"## {name}, seed {seed}: {format_load(load_note())}", flush=True)
    model, args, kwargs, reference = problem(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tic = time.perf_counter()
        default = vt.fit(model, *args, seed=seed, progress=False, on_nonfinite="warn", **kwargs)
        default_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        auto = vt.auto_fit(model, *args, seed=seed, progress=False, **kwargs)
        auto_seconds = time.perf_counter() - tic
        table = vt.compare({"default": default, "auto": auto}, reference=reference, seed=seed)
    print(auto.auto, flush=True)
    config, best_w1, best_evals = _best_by_hand(name)
    path = " + ".join(
        f"{a.objective}/{a.family}"
        + (" (NaN)" if a.status == "nonfinite" else "")
        + ("*" if a.name == auto.auto.chosen else "")
        for a in auto.auto.attempts
    )
    PROGRAMS.clear()
    jax.clear_caches()
    return {
        "model": name,
        "seed": seed,
        "dim": auto.target.dim,
        "default_verdict": table.loc["default", "verdict"],
        "default_w1": table.loc["default", "w1"],
        "default_grad_evals": default.num_grad_evals,
        "default_seconds": default_seconds,
        "auto_verdict": table.loc["auto", "verdict"],
        "auto_khat": table.loc["auto", "khat"],
        "auto_w1": table.loc["auto", "w1"],
        "auto_grad_evals": auto.auto.grad_evals,
        "auto_seconds": auto_seconds,
        "auto_stopped": auto.auto.stopped,
        "path": path,
        "best_by_hand": config,
        "best_w1": best_w1,
        "best_grad_evals": best_evals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=None, help="comma-separated (default: the zoo list and the corpus)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", default="auto", help="results file name, without extension (default: auto)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    names = args.models.split(",") if args.models else [*ZOO, *_corpus()]
    start, note = time.perf_counter(), load_note()
    rows = []
    for name in names:
        for seed in map(int, args.seeds.split(",")):
            try:
                rows.append(run(name, seed))
            except Exception as err:  # one model's failure is a row, not the end of the run
                failed = f"failed: {type(err).__name__}: {str(err)[:100]}"
                rows.append({"model": name, "seed": seed, "path": failed})
            pd.DataFrame(rows).to_csv(RESULTS_DIR / f"{args.out}.csv", index=False)  # kept as it goes
    frame = pd.DataFrame(rows)
    header = list(frame.columns)
    body = [[row.get(c, "") for c in header] for row in rows]
    text = f"""# The automatic mode against the default and the best hand-chosen fit (issue 16)

{now()}; {format_load(note)}; total runtime {(time.perf_counter() - start) / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())} (vitools {vitools_commit()}).

{__doc__.split(chr(10) + chr(10), 1)[1].split("Outputs")[0].strip()}

{markdown_table(header, body)}
"""
    (RESULTS_DIR / f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
