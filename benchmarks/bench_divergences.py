r"""Every objective with every family on five posteriors, compared in one table each (issue 13).

For the zoo's ``bimodal``, ``banana`` and ``funnel`` and two real regressions of the posteriordb
corpus (``kidiq-kidscore_momiq``, ``earnings-earn_height``): one ``vt.fit`` per objective x family
(each at its defaults: at most 2000 steps, seed 0; named objectives take their default
hyperparameters), plus ``vt.pathfinder`` (single- and 4-path) where it exists, all compared by
``vt.compare`` against the reference draws (10,000 draws of each q). A combination the library
refuses (e.g. batch-and-match with a flow) is a row with the refusal's first words. Below each
table: the sentence the report prints on which fit to trust (:func:`vitools.advice.which_to_trust`).

Outputs ``benchmarks/results/divergences.{md,csv}``.

Run: ``.venv/bin/python benchmarks/bench_divergences.py [--models a,b] [--objectives a,b] [--families a,b]``
(about 30 min on 2 cores).
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
from vitools.advice import which_to_trust  # noqa: E402
from vitools.engine import PROGRAMS  # noqa: E402
from vitools.families import FAMILIES  # noqa: E402
from vitools.objectives import OBJECTIVES  # noqa: E402

ZOO = ("bimodal", "banana", "funnel")
REGRESSIONS = ("kidiq-kidscore_momiq", "earnings-earn_height")
COLUMNS = ("verdict", "khat", "w1", "mean_error", "sd_ratio", "elbo", "cubo", "grad_evals", "seconds")


def _fits(name: str, objectives: list[str], families: list[str]) -> tuple[dict, dict, dict]:
    model, args, kwargs, reference = problem(name)
    fits, seconds, refused = {}, {}, {}
    runs = [(f"{o}/{f}", dict(objective=o, family=f)) for o in objectives for f in families]
    pathfinder = getattr(vt, "pathfinder", None)
    for label, options in runs + ([("pathfinder", None), ("pathfinder x4", 4)] if pathfinder else []):
        tic = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if label.startswith("pathfinder"):
                    fit = pathfinder(model, *args, num_paths=options or 1, progress=False, **kwargs)
                else:
                    fit = vt.fit(model, *args, progress=False, on_nonfinite="warn", **options, **kwargs)
        except Exception as err:  # a refusal is a result: keep its first words
            refused[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
            print(f"  {label}: {refused[label]}", flush=True)
            continue
        fits[label], seconds[label] = fit, time.perf_counter() - tic
        print(f"  {label}: {fit.status} in {seconds[label]:.1f} s", flush=True)
    return fits, seconds, refused | {"__reference__": reference}


def run(name: str, objectives: list[str], families: list[str]) -> tuple[pd.DataFrame, str]:
    print(f"## {name}: {format_load(load_note())}", flush=True)
    fits, seconds, refused = _fits(name, objectives, families)
    reference = refused.pop("__reference__")
    table = vt.compare(fits, reference=reference)
    table["seconds"] = pd.Series(seconds)
    advice = which_to_trust(table)
    rows = table.reindex(columns=[c for c in COLUMNS if c in table or c == "seconds"])
    for label, why in refused.items():
        rows.loc[label, "verdict"] = f"refused ({why})"
    rows.insert(0, "model", name)
    PROGRAMS.clear()
    jax.clear_caches()
    return rows, advice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO + REGRESSIONS))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    start, note = time.perf_counter(), load_note()
    tables, sections = [], []
    for name in args.models.split(","):
        rows, advice = run(name, args.objectives.split(","), args.families.split(","))
        tables.append(rows)
        header = ["fit", *[c for c in rows.columns if c != "model"]]
        body = [[label, *[rows.loc[label, c] for c in header[1:]]] for label in rows.index]
        sections.append(f"## {name}\n\n{markdown_table(header, body)}\n\nThe report says: {advice}\n")
    frame = pd.concat(tables)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS_DIR / "divergences.csv", index_label="fit")
    text = f"""# Every objective with every family (issue 13)

{now()}; {format_load(note)}; total runtime {(time.perf_counter() - start) / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())} (vitools {vitools_commit()}).

Each fit: `vt.fit(model, objective=o, family=f)` at its defaults (at most 2000 steps, seed 0),
compared by `vt.compare` against the reference draws (10,000 draws of q). `w1`: mean 1-D
Wasserstein-1 of reference-standardized marginals; `elbo` ≤ log Z ≤ `cubo` (estimates from the
same draws); `grad_evals`: every log-density gradient the fit spent (start included); `seconds`:
wall time of the fit, compile included. "refused": the library stopped the combination with an
error before fitting (its first words shown).

{chr(10).join(sections)}"""
    (RESULTS_DIR / "divergences.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
