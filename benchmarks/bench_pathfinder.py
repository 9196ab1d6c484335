r"""Pathfinder against the default ``vt.fit`` on the zoo: gradient evaluations, time, k̂ and W1.

For every zoo model (``vitools.models.list_models()``): Pathfinder with one path and with four
(``vitools.pathfinder.pathfinder``, seed 0) and the default ``vt.fit`` (reverse KL, full rank, at
most 2000 steps, seed 0), compared in one table with the model's reference (``vt.compare``:
W1 of reference-standardized marginals, PSIS k̂ and its verdict). Four-path W1 is that of q, the
mixture of the paths' Gaussians; ``w1_psis`` is that of 4000 PSIS-resampled draws of it
(``fit.sample(4000, resample="psis")``), what the paper returns.

Outputs ``benchmarks/results/pathfinder.md``, rows written as they come.

Run: ``.venv/bin/python benchmarks/bench_pathfinder.py [--models a,b] [--skip c,d]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np
from common import format_load, load_note, markdown_table, now, versions, write_text

import vitools as vt
from vitools import pathfinder as pathfinder_module
from vitools.comparison import compare
from vitools.engine import PROGRAMS
from vitools.models import MODELS, list_models
from vitools.pathfinder import pathfinder

HEADER = ("model", "dim", "method", "grad_evals", "time_s", "khat", "verdict", "w1", "w1_psis")
NUM_RESAMPLED = 4000


def rows_for(name: str) -> list[tuple]:
    zoo = MODELS[name]
    reference = zoo.reference()
    fits, seconds = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, run in (
            ("pathfinder", lambda: pathfinder(zoo.model, *zoo.args, progress=False, **zoo.kwargs)),
            (
                "pathfinder x4",
                lambda: pathfinder(zoo.model, *zoo.args, num_paths=4, progress=False, **zoo.kwargs),
            ),
            (
                "vt.fit",
                lambda: vt.fit(zoo.model, *zoo.args, progress=False, on_nonfinite="warn", **zoo.kwargs),
            ),
        ):
            tic = time.perf_counter()
            fits[label] = run()
            seconds[label] = time.perf_counter() - tic  # compile included, as a user waits for it
        table = compare(fits, reference=reference)
        resampled = fits["pathfinder x4"].sample(NUM_RESAMPLED, seed=1, resample="psis")
        resampled = {site: resampled[site] for site in fits["pathfinder x4"].target.site_names}  # latent
        psis_w1 = compare({"psis": vt.to_datatree(resampled)}, reference=reference).loc["psis", "w1"]
    rows = []
    for label, fit in fits.items():
        row = table.loc[label]
        rows.append(
            (
                name,
                fit.target.dim,
                label,
                int(fit.num_grad_evals),
                round(seconds[label], 1),
                float(row["khat"]),
                row["verdict"],
                float(row["w1"]),
                float(psis_w1) if label == "pathfinder x4" else None,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--skip", default="")
    parser.add_argument("--out", default="pathfinder.md", help="file name in benchmarks/results")
    args = parser.parse_args()
    skipped = [m for m in args.skip.split(",") if m]
    names = [m for m in args.models.split(",") if m and m not in skipped]
    note = load_note()
    intro = [
        "# Pathfinder against the default vt.fit on the zoo",
        "",
        f"{now()}; {format_load(note)}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "`pathfinder`: one path (family FullRank); `pathfinder x4`: four paths, q the mixture of their "
        "Gaussians weighted by each path's log-evidence estimate (1000 draws each); `vt.fit`: "
        "reverse KL, full rank, at most 2000 steps. All seed 0. grad_evals: every gradient "
        "(or density) evaluation, a Hessian counted as dim; time_s: wall seconds with compilation. "
        "khat/verdict/w1 from one `vt.compare` table against the model's reference; w1_psis: W1 of "
        f"{NUM_RESAMPLED} PSIS-resampled draws of the four-path mixture.",
        "",
    ]
    if skipped:
        intro.append(f"Skipped (too slow for this run): {', '.join(skipped)}.\n")
    rows: list[tuple] = []
    for name in names:
        tic = time.perf_counter()
        try:
            rows.extend(rows_for(name))
        except Exception as err:  # a model that fails is a row, not the end of the run
            rows.append((name, None, f"failed: {type(err).__name__}: {err}"[:120], *[None] * 6))
        print(f"{name}: {time.perf_counter() - tic:.0f} s", flush=True)
        write_text(args.out, "\n".join(intro) + "\n" + markdown_table(HEADER, rows))
        PROGRAMS.clear()  # many models in one process: release their compiled programs
        pathfinder_module._PROGRAMS.clear()
        jax.clear_caches()
    summary = _summary(rows)
    write_text(args.out, "\n".join(intro) + "\n" + markdown_table(HEADER, rows) + "\n\n" + summary)


def _summary(rows: list[tuple]) -> str:
    """Median ratio of Pathfinder's gradient evaluations to vt.fit's, over the models run."""
    by_model: dict[str, dict[str, tuple]] = {}
    for row in rows:
        by_model.setdefault(row[0], {})[row[2]] = row
    ratios = [
        m["pathfinder"][3] / m["vt.fit"][3]
        for m in by_model.values()
        if "pathfinder" in m and "vt.fit" in m and m["vt.fit"][3]
    ]
    if not ratios:
        return ""
    return (
        f"Median over {len(ratios)} models of one-path Pathfinder's gradient evaluations / vt.fit's: "
        f"{np.median(ratios):.3f}."
    )


if __name__ == "__main__":
    main()
