r"""How stable is a fit's verdict over the seed of its diagnostic draws? (issue 11, item 1)

For every zoo model and both KL directions, one default ``vt.fit`` (full-rank, at most 2000
steps, seed 0) is diagnosed (``vt.diagnose``) with ``SEEDS`` draw seeds at each of ``SIZES``
numbers of draws, and read three ways (``RULES``): k̂ alone as before issue 11, k̂ ± 2 bootstrap
sds, and diagnose's combined verdict. Per rule and size: the share of fits whose most common
verdict holds on >= 95% of seeds, the share whose seeds never contradict it ("uncertain" does
not contradict), and the number of fits read good on one seed and bad on another.

Outputs ``benchmarks/results/verdicts.{md,csv}``.

Run: ``.venv/bin/python benchmarks/bench_verdicts.py [--models a,b] [--out DIR]``
"""

from __future__ import annotations

import argparse
import collections
import math
import time
import warnings
from pathlib import Path

import pandas as pd
from common import RESULTS_DIR, format_load, load_note, markdown_table, now, versions, vitools_commit

import vitools as vt
from vitools.diagnostics import verdict
from vitools.importance import khat_threshold
from vitools.models import MODELS

SIZES = (2000, 5000, 10_000)
SEEDS = 20
OBJECTIVES = ("reverse_kl", "forward_kl")
RULES = {  # column -> what it reads
    "point": "k̂ alone, as before issue 11: good < 0.5 <= ok <= threshold < bad",
    "khat_verdict": "k̂ ± 2 bootstrap sds against the threshold: good / uncertain / bad",
    "verdict": "vt.diagnose's verdict: the k̂ interval, the mean-shift check and convergence combined",
}


def point_verdict(khat: float, num_draws: int) -> str:
    if math.isnan(khat) or khat > khat_threshold(num_draws):
        return "bad"
    return "good" if khat < 0.5 else "ok"


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
                            khat_se=d.khat_se,
                            point=point_verdict(d.khat, size),
                            khat_verdict=verdict(d.khat, size, d.khat_se)[0],
                            verdict=d.verdict,
                            biased=any("PSIS moves" in r for r in d.reasons),
                            steps=fit.num_steps,
                        )
                    )
                print(f"{name} {objective} S={size}: {time.perf_counter() - tic:.1f} s", flush=True)
    return rows


def agreement(verdicts: pd.Series) -> float:
    """Share of seeds with the most common verdict."""
    return max(collections.Counter(verdicts).values()) / len(verdicts)


def consistency(verdicts: pd.Series) -> float:
    """Share of seeds that do not contradict the most common definite verdict: "uncertain" never
    contradicts; "good" and "ok" (both: trust the fit) contradict "bad"."""
    side = verdicts.map({"good": "trust", "ok": "trust", "bad": "bad"})
    definite = side.dropna()
    if definite.empty:
        return 1.0
    modal = collections.Counter(definite).most_common(1)[0][0]
    return 1.0 - float((side.notna() & (side != modal)).sum()) / len(side)


def summarise(df: pd.DataFrame) -> str:
    sizes = " | ".join(f"S={s}: agree >= 95% / consistent >= 95% / good-and-bad fits" for s in SIZES)
    lines = [f"| rule | {sizes} |"]
    lines.append("|---" * (len(SIZES) + 1) + "|")
    for rule, meaning in RULES.items():
        cells = []
        for size in SIZES:
            by_fit = df[df.num_draws == size].groupby(["model", "objective"])[rule]
            agree = (by_fit.agg(agreement) >= 0.95).mean()
            consistent = (by_fit.agg(consistency) >= 0.95).mean()
            contradictions = by_fit.agg(lambda v: {"good", "bad"} <= set(v) or {"ok", "bad"} <= set(v)).sum()
            cells.append(f"{agree:.0%} / {consistent:.0%} / {contradictions}")
        lines.append(f"| {rule}: {meaning} | " + " | ".join(cells) + " |")
    header = ["model", "objective", "S=2000 k̂ alone (old)"] + [
        f"S={s}: verdict (k̂ ± se range)" for s in SIZES
    ]
    rows = []
    for (model, objective), group in df.groupby(["model", "objective"], sort=False):
        old = group[group.num_draws == SIZES[0]]
        cells = [_counts(old.point) + f"; {old.khat.min():.2f}-{old.khat.max():.2f}"]
        for size in SIZES:
            at = group[group.num_draws == size]
            cells.append(
                _counts(at.verdict)
                + f"; {at.khat.min():.2f}-{at.khat.max():.2f} ± {at.khat_se.median():.2f}"
                + (f"; biased {int(at.biased.sum())}" if at.biased.any() else "")
            )
        rows.append([model, objective, *cells])
    return "\n".join(lines) + "\n\n" + markdown_table(header, rows)


def _counts(verdicts: pd.Series) -> str:
    counts = collections.Counter(verdicts)
    return f"{agreement(verdicts):.0%} (" + ", ".join(f"{v} {c}" for v, c in counts.most_common()) + ")"


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
        "One default fit (full rank, at most 2000 steps, seed 0) per model and direction, diagnosed "
        f"with {SEEDS} draw seeds at each size. Agree: the share of seeds with the most common verdict; "
        "consistent: the share of seeds that do not contradict the most common definite verdict "
        '("uncertain" never contradicts; good/ok contradict bad); good-and-bad fits: fits that read '
        "good (or ok) on one seed and bad on another.\n\n"
    )
    (out / "verdicts.md").write_text(header + summarise(df) + "\n")
    print((out / "verdicts.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
