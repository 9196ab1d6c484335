r"""Stopping on convergence by default (issue 11, item 3): steps saved, and the accuracy kept.

For every zoo model and every posterior of the posteriordb corpus (the two ODE posteriors
excepted: seconds per thousand gradients), in both KL directions, full-rank family, seed 0, budget
2000 steps:

- **fixed**: ``vt.fit(..., converge=False)``, the whole budget (what ``vt.fit`` did before);
- **default**: ``vt.fit(...)``, which stops once :class:`vitools.convergence.ConvergenceRule` holds.

Scores: mean over scalar parameters of the 1-D W1 between 2000 draws of q (draw seed 1, the same
for every fit: common random numbers, so differences between fits are not draw noise) and the
reference, standardized by the reference sd (zoo: ``vt.compare``'s ``w1``; corpus:
``posteriordb/scoring.py``, the same distance). ``w1_se`` is the draw noise of the fixed fit's W1
(standard error over ``NOISE_SEEDS`` draw seeds).

``--candidates`` adds the rules considered for the default (``CANDIDATES``), on the same fits:
the trend rule with a 300-step window (with and without the cool-down, z = 2), and Stan ADVI's
relative-change rule (Kucukelbir et al. 2017) as ``convergence.RelativeChangeRule``.

Outputs ``benchmarks/results/convergence.{md,csv}`` (and ``convergence_candidates.{md,csv}``
with ``--candidates``, which also writes the former from the same fits).

Run: ``.venv/bin/python benchmarks/bench_convergence.py [--candidates] [--only zoo|corpus]
[--models a,b]`` (~12 min on 2 cores; ~25 min with ``--candidates``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
import vitools as vt  # noqa: E402
from benchmarks.common import RESULTS_DIR, format_load, load_note, markdown_table, now, versions  # noqa: E402
from benchmarks.posteriordb import ODE_POSTERIORS, POSTERIORS, load  # noqa: E402
from benchmarks.posteriordb.scoring import headline, reference_summary, score  # noqa: E402
from vitools import convergence  # noqa: E402
from vitools.models import MODELS  # noqa: E402

OBJECTIVES = ("reverse_kl", "forward_kl")
NUM_STEPS = 2000  # the budget (vt.fit's default num_steps)
NUM_DRAWS = 2000
NOISE_SEEDS = 3  # draw seeds behind w1_se of the fixed fit
RUNS = {"fixed": False, "default": True}  # label -> vt.fit's converge
CANDIDATES = {
    "trend, no cool-down": convergence.ConvergenceRule(window=300, min_steps=300, cooldown=0.0),
    "trend, cool-down 0.5": convergence.ConvergenceRule(window=300, min_steps=300, cooldown=0.5),
    "trend, window 300": convergence.ConvergenceRule(window=300, min_steps=300),
    "trend, z=2": convergence.ConvergenceRule(window=300, min_steps=300, z=2.0),
    "stan": convergence.RelativeChangeRule(),
    "stan + cool-down": convergence.RelativeChangeRule(cooldown=0.25),
}


def problems(only: str | None, models: list[str] | None) -> list[tuple[str, str]]:
    """``(source, name)`` of every problem benchmarked."""
    out = []
    if only in (None, "zoo"):
        out += [("zoo", name) for name in MODELS]
    if only in (None, "corpus"):
        out += [("corpus", name) for name in POSTERIORS if name not in ODE_POSTERIORS]
    return [(s, n) for s, n in out if models is None or n in models]


def setup(source: str, name: str):
    """``(model, args, kwargs, w1_of)``: ``w1_of(fit, seed)`` is the fit's mean standardized W1."""
    if source == "zoo":
        zoo = MODELS[name]
        ref = zoo.reference()

        def w1_of(fit, seed):
            return float(vt.compare({"q": fit}, reference=ref, num_draws=NUM_DRAWS, seed=seed)["w1"].iloc[0])

        return zoo.model, zoo.args, zoo.kwargs, w1_of
    model, data, reference = load(name)
    summary = reference_summary(name)

    def w1_of(fit, seed):
        return headline(score(fit.sample(NUM_DRAWS, seed=seed), reference, summary))["w1"]

    return model, (data,), {}, w1_of


def run_problem(source: str, name: str, runs: dict) -> list[dict]:
    model, args, kwargs, w1_of = setup(source, name)
    rows = []
    for objective in OBJECTIVES:
        for label, converge in runs.items():
            tic = time.perf_counter()
            row = {"source": source, "model": name, "objective": objective, "run": label}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = vt.fit(
                        model, *args, objective=objective, num_steps=NUM_STEPS, converge=converge,
                        seed=0, progress=False, on_nonfinite="warn", **kwargs,
                    )  # fmt: skip
            except Exception as err:  # a failing fit is a result, not a crash
                rows.append(row | {"status": f"error: {type(err).__name__}: {err}"[:160]})
                print(rows[-1], flush=True)
                continue
            seeds = range(1, NOISE_SEEDS + 1) if label == "fixed" else (1,)
            w1s = [w1_of(fit, seed) for seed in seeds]
            c = fit.convergence
            row |= {
                "dim": fit.target.dim,
                "steps": fit.num_steps,
                "status": fit.status,
                "converged": c.converged,
                "decrease": c.decrease,
                "decrease_se": c.decrease_se,
                "w1": w1s[0],
                "w1_se": float(np.std(w1s, ddof=1) / math.sqrt(len(w1s))) if len(w1s) > 1 else math.nan,
                "wall_s": time.perf_counter() - tic,
            }
            rows.append(row)
            print(
                f"{source} {name} {objective} {label}: steps {row['steps']} w1 {row['w1']:.4f} "
                f"{fit.status} ({c}) {row['wall_s']:.1f}s",
                flush=True,
            )
    return rows


def report(df: pd.DataFrame, labels: list[str]) -> str:
    """One row per problem and direction: steps and W1 of each run, and the summary line."""
    header = ["source", "model", "objective", "dim", "fixed W1 (± draw se)", "fixed converged"]
    for label in labels[1:]:
        header += [f"{label} steps", f"{label} W1", f"{label} converged"]
    lines, summary = [], {label: [] for label in labels[1:]}
    for (source, model, objective), group in df.groupby(["source", "model", "objective"], sort=False):
        runs = {r.run: r for r in group.itertuples()}
        fixed = runs.get("fixed")
        if fixed is None or not isinstance(getattr(fixed, "w1", None), float):
            continue
        line = [source, model, objective, fixed.dim, f"{fixed.w1:.3f} ± {fixed.w1_se:.3f}", fixed.converged]
        for label in labels[1:]:
            r = runs.get(label)
            if r is None or not pd.notna(getattr(r, "w1", math.nan)):
                line += ["error", None, None]
                continue
            line += [int(r.steps), r.w1, r.converged]
            summary[label].append((r.steps, r.w1 - fixed.w1, 2 * max(fixed.w1_se, 1e-12), r.w1 / fixed.w1))
        lines.append(line)
    notes = []
    for label, values in summary.items():
        if not values:
            continue
        steps, diff, noise, ratio = (np.array(v, float) for v in zip(*values, strict=True))
        notes.append(
            f"- **{label}**: median {np.median(steps):.0f} steps of {NUM_STEPS} "
            f"(mean {np.mean(steps):.0f}, {np.mean(steps < NUM_STEPS):.0%} of fits stopped early); "
            f"W1 minus fixed W1: median {np.median(diff):+.4f}, max {np.max(diff):+.4f}; "
            f"within 2 draw-se of the fixed fit in {np.mean(diff <= noise):.0%} of fits; "
            f"W1 ratio to fixed: median {np.median(ratio):.3f}, max {np.max(ratio):.3f}"
        )
    return "\n".join(notes) + "\n\n" + markdown_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", action="store_true", help="also the rules not chosen")
    parser.add_argument("--only", choices=("zoo", "corpus"))
    parser.add_argument("--models", help="comma-separated names")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = RUNS | (CANDIDATES if args.candidates else {})
    stem = "convergence_candidates" if args.candidates else "convergence"
    started, load_at_start, tic = now(), load_note(), time.perf_counter()
    selected = problems(args.only, args.models.split(",") if args.models else None)
    rows = [row for source, name in selected for row in run_problem(source, name, runs)]
    df = pd.DataFrame(rows)
    df.to_csv(out / f"{stem}.csv", index=False)
    rule = convergence.ConvergenceRule()
    header = (
        f"# Stopping on convergence: steps used and W1 against the fixed {NUM_STEPS}-step fit\n\n"
        f"Generated by `benchmarks/bench_convergence.py{' --candidates' if args.candidates else ''}` "
        f"({started}), {(time.perf_counter() - tic) / 60:.1f} min; {format_load(load_at_start)}; "
        f"{', '.join(f'{k} {v}' for k, v in versions().items())}.\n\n"
        f"Full-rank family, seed 0, budget {NUM_STEPS} steps. fixed: `converge=False`; default: "
        f"`vt.fit`'s rule, {rule}. W1: mean standardized 1-D W1 over parameters, {NUM_DRAWS} "
        f"draws of q (draw seed 1 for every fit; fixed ± its se over {NOISE_SEEDS} draw seeds). "
        "converged: `fit.converged` (for fixed, the rule on its last window).\n\n"
    )
    (out / f"{stem}.md").write_text(header + report(df, list(runs)) + "\n")
    print((out / f"{stem}.md").read_text())
    if args.candidates:  # the default's table from the same fits (deterministic: the same numbers)
        chosen = df[df["run"].isin(list(RUNS))]
        chosen.to_csv(out / "convergence.csv", index=False)
        (out / "convergence.md").write_text(header + report(chosen, list(RUNS)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
