r"""Does the next step vitools suggests for a bad or uncertain fit help? (issue 12, item 7)

For every zoo model, one default ``vt.fit`` (full-rank, at most 2000 steps, seed 0) in each KL
direction, both compared in one table with the model's reference (``vt.compare``, 10,000 draws,
as ``vitools compare`` does, so that a fit missing mass the other covers is seen). Each fit that reads
bad or uncertain gets its :func:`vitools.advice.next_steps` suggestion, which is applied (a new fit
with the changed options; more draws re-diagnose the same fit), and compared again. A step
*helped* when the verdict improved (bad < uncertain < good) or, verdict equal, w1 to the reference
fell by more than 10%; it *hurt* when the verdict worsened or w1 rose by more than 10%.

Outputs ``benchmarks/results/next_steps.{md,csv}``.

Run: ``.venv/bin/python benchmarks/bench_next_steps.py [--models a,b]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import pandas as pd
from common import RESULTS_DIR, format_load, load_note, markdown_table, now, versions, vitools_commit

import vitools as vt
from vitools.advice import next_steps
from vitools.convert import DIAGNOSTIC_DRAWS
from vitools.engine import PROGRAMS
from vitools.models import MODELS

OBJECTIVES = ("reverse_kl", "forward_kl")
RANK = {"good": 0, "uncertain": 1, "bad": 2, "failed": 3}


def rows_for(name: str) -> list[dict]:
    """Both directions fitted and compared in one table, as ``vitools compare`` does (so a fit that
    misses mass the other covers is seen), then each suggestion applied to its fit alone."""
    zoo, rows = MODELS[name], []
    reference = zoo.reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {
            objective: vt.fit(
                zoo.model, *zoo.args, objective=objective, progress=False, on_nonfinite="warn", **zoo.kwargs
            )
            for objective in OBJECTIVES
        }
        table = vt.compare(fits, reference=reference)
    steps = next_steps(table)
    for objective, fit in fits.items():
        before, step = table.loc[objective], steps.get(objective)
        row = {
            "model": name,
            "objective": objective,
            "verdict": before["verdict"],
            "khat": before["khat"],
            "w1": before["w1"],
            "step": "" if step is None else (step.as_arguments() or step.why),
        }
        if step is not None and step.options:
            changed = dict(step.options)
            num_draws = int(changed.pop("num_draws", DIAGNOSTIC_DRAWS))
            tic = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if changed:  # a new fit with the changed options
                    options = {"objective": objective, **changed}
                    fit = vt.fit(
                        zoo.model, *zoo.args, progress=False, on_nonfinite="warn", **options, **zoo.kwargs
                    )
                # more draws: the same fit, diagnosed again
                after = vt.compare({"fit": fit}, reference=reference, num_draws=num_draws).loc["fit"]
            row |= {
                "verdict_after": after["verdict"],
                "khat_after": after["khat"],
                "w1_after": after["w1"],
                "seconds": round(time.perf_counter() - tic, 1),
                "outcome": outcome(before, after),
            }
        rows.append(row)
        print(row, flush=True)
    PROGRAMS.clear()  # many models in one process: release their compiled programs
    jax.clear_caches()
    return rows


def outcome(before: pd.Series, after: pd.Series) -> str:
    rank_before, rank_after = RANK[before["verdict"]], RANK[after["verdict"]]
    if rank_after < rank_before:
        return "helped"
    if rank_after > rank_before:
        return "hurt"
    if after["w1"] < 0.9 * before["w1"]:
        return "helped"
    if after["w1"] > 1.1 * before["w1"]:
        return "hurt"
    return "no change"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    started, load = now(), load_note()
    rows = []
    for name in args.models.split(","):
        rows += rows_for(name)
        pd.DataFrame(rows).to_csv(RESULTS_DIR / "next_steps_partial.csv", index=False)  # as it goes
    df = pd.DataFrame(rows)
    RESULTS_DIR.mkdir(exist_ok=True)
    df.to_csv(RESULTS_DIR / "next_steps.csv", index=False)
    suggested = df[df["step"] != ""]
    counts = suggested["outcome"].value_counts().to_dict() if "outcome" in suggested else {}
    header = [
        "model",
        "objective",
        "verdict",
        "k̂",
        "w1",
        "next step",
        "verdict after",
        "k̂ after",
        "w1 after",
        "outcome",
    ]
    body = [
        [
            r["model"],
            r["objective"],
            r["verdict"],
            f"{r['khat']:.2f}",
            f"{r['w1']:.3g}",
            r["step"],
            r.get("verdict_after", ""),
            _num(r.get("khat_after"), ".2f"),
            _num(r.get("w1_after"), ".3g"),
            r.get("outcome", ""),
        ]  # fmt: skip
        for r in df.to_dict("records")
    ]
    text = (
        f"# Next steps for bad and uncertain fits\n\n{started}; {format_load(load)}; vitools "
        f"{vitools_commit()}; {', '.join(f'{k} {v}' for k, v in versions().items())}.\n\n"
        f"{__doc__.split(chr(10) + chr(10))[1]}\n\n"
        f"{len(df)} default fits, {len(suggested)} read bad or uncertain and got a step: "
        f"{', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}.\n\n"
        + markdown_table(header, body)
        + "\n"
    )
    (RESULTS_DIR / "next_steps.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def _num(value, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
