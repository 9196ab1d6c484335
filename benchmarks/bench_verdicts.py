r"""How stable is a fit's verdict over the seed of its diagnostic draws? (issue 11, item 1)

For every zoo model and both KL directions, one default ``vt.fit`` (full-rank, 2000 steps,
seed 0) is diagnosed (``vt.diagnose``) with ``SEEDS`` draw seeds at each of ``SIZES`` numbers of
draws. Agreement at a size is the share of seeds whose verdict is that size's most common one;
the k̂ range shows the spread behind it. The default (2000 draws) is the first column.

Outputs ``benchmarks/results/verdicts.{md,csv}``.

Run: ``.venv/bin/python benchmarks/bench_verdicts.py [--models a,b] [--out DIR]``
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings
from pathlib import Path

import pandas as pd
from common import RESULTS_DIR, format_load, load_note, markdown_table, now, versions, vitools_commit

import vitools as vt
from vitools.models import MODELS

SIZES = (2000, 5000, 10_000, 20_000)
SEEDS = 20
OBJECTIVES = ("reverse_kl", "forward_kl")


def rows_for(name: str) -> list[dict]:
    zoo, rows = MODELS[name], []
    for objective in OBJECTIVES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = vt.fit(
                zoo.model, *zoo.args, objective=objective, progress=False, on_nonfinite="warn", **zoo.kwargs
            )
            for size in SIZES:
                tic = time.perf_counter()
                for seed in range(SEEDS):
                    d = vt.diagnose(fit, num_draws=size, seed=seed, warn=False)
                    rows.append(
                        dict(
                            model=name,
                            objective=objective,
                            num_draws=size,
                            seed=seed,
                            khat=d.khat,
                            verdict=d.verdict,
                        )
                    )
                print(f"{name} {objective} S={size}: {time.perf_counter() - tic:.1f} s", flush=True)
    return rows


def summarise(df: pd.DataFrame) -> str:
    header = ["model", "objective"] + [f"S={s}: agree (verdicts; k̂ range)" for s in SIZES]
    lines = []
    for (model, objective), group in df.groupby(["model", "objective"], sort=False):
        cells = []
        for size in SIZES:
            at = group[group.num_draws == size]
            counts = collections.Counter(at.verdict)
            agree = max(counts.values()) / len(at)
            spread = ", ".join(f"{v} {c}" for v, c in counts.most_common())
            cells.append(f"{agree:.0%} ({spread}; {at.khat.min():.2f}-{at.khat.max():.2f})")
        lines.append([model, objective, *cells])
    share = {
        size: (
            df[df.num_draws == size]
            .groupby(["model", "objective"])
            .verdict.agg(lambda v: max(collections.Counter(v).values()) / len(v))
            >= 0.95
        ).mean()
        for size in SIZES
    }
    summary = "; ".join(f"S={s}: {share[s]:.0%} of fits agree on >= 95% of seeds" for s in SIZES)
    return summary + "\n\n" + markdown_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load = now(), load_note()
    rows = [row for name in args.models.split(",") for row in rows_for(name)]
    df = pd.DataFrame(rows)
    df.to_csv(out / "verdicts.csv", index=False)
    header = (
        f"# Verdict stability over diagnostic draw seeds\n\n{started}; {format_load(load)}; vitools "
        f"{vitools_commit()}; {', '.join(f'{k} {v}' for k, v in versions().items())}.\n\n"
        f"One default fit (full rank, 2000 steps, seed 0) per model and direction, diagnosed with {SEEDS} "
        "draw seeds at each size; agreement = share of seeds with the most common verdict.\n\n"
    )
    (out / "verdicts.md").write_text(header + summarise(df) + "\n")
    print((out / "verdicts.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
