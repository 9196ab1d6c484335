r"""Batch and match against the default fit: gradient evaluations to reach the default fit's w1.

For each Gaussian-like zoo model and seed: the default ``vt.fit(model, seed=s)`` (reverse KL,
full rank, Laplace start, at most 2000 steps, convergence rule) gives the w1 to beat and its
``num_grad_evals``. BaM (:class:`vitools.objectives.score.BatchAndMatch`) is run by ``vt.fit``
with the same seed at increasing budgets (``num_steps`` in ``BUDGETS``, no early stop): the runs
with one seed are prefixes of one run, as the λ_t schedule does not depend on ``num_steps``.
w1 comes from ``vt.compare`` against ``model.reference()`` (10,000 draws of each q, seed 0).

A w1 estimate has Monte Carlo noise (10,000 draws of q against the reference's draws), so two
budgets are reported: *first* (the first budget whose w1 is at most the default's) and *stays*
(the first from which every larger budget's w1 is within the default's + 2 se, se the sd of the
default fit's w1 over four redraws of q). The ratio is the default fit's evaluations over
BaM's, without the start's (the loop's; the default's include its start race, 2 x 100 steps)
and with it (``num_grad_evals``, the Laplace start's ``init_grad_evals`` included on both
sides). The *start* column is the w1 of the start itself (BaM with learning_rate 1e-12, one
step: q moves by ~1e-11): where it already matches the default's, neither method needed steps.

Outputs ``benchmarks/results/score.md`` (and ``score.csv``).

Run: ``.venv/bin/python benchmarks/bench_score.py [--models a,b] [--seeds 0,1] [--configs 16:1,16:0.1]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np
import pandas as pd
from common import RESULTS_DIR, format_load, load_note, markdown_table, now, versions

import vitools as vt
from vitools.engine import PROGRAMS
from vitools.models import MODELS
from vitools.objectives.score import BatchAndMatch

MODELS_DEFAULT = (
    "gaussian_100",
    "logistic_regression",
    "collinear",
    "bad_scaling",
    "radon",
    "eight_schools_noncentered",
)
BUDGETS = (5, 10, 20, 40, 80, 160, 320, 640)
NOISE_REDRAWS = 4  # w1 of the default fit from this many draws of q (compare seeds): its se


def quiet_fit(zoo, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vt.fit(zoo.model, *zoo.args, progress=False, on_nonfinite="warn", **options, **zoo.kwargs)


def w1s(fits: dict, reference, seed: int = 0) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = vt.compare(fits, reference=reference, seed=seed)
    return {name: float(table.loc[name, "w1"]) for name in fits}


def rows_for(name: str, seeds: list[int], configs: list[tuple[int, float]]) -> list[dict]:
    zoo, rows = MODELS[name], []
    reference = zoo.reference()
    for seed in seeds:
        tic = time.perf_counter()
        default = quiet_fit(zoo, seed=seed)
        default_seconds = time.perf_counter() - tic
        redraws = [w1s({"d": default}, reference, seed=s)["d"] for s in range(NOISE_REDRAWS)]
        w1_default, se = redraws[0], float(np.std(redraws, ddof=1))
        start = quiet_fit(zoo, seed=seed, objective=BatchAndMatch(learning_rate=1e-12), num_steps=1)
        w1_start = w1s({"s": start}, reference)["s"]
        default_loop = default.num_grad_evals - default.init_grad_evals
        for batch_size, learning_rate in configs:
            objective = BatchAndMatch(batch_size=batch_size, learning_rate=learning_rate)
            fits = {str(n): quiet_fit(zoo, seed=seed, objective=objective, num_steps=n) for n in BUDGETS}
            curve = w1s(fits, reference)
            ok = [curve[str(n)] <= w1_default for n in BUDGETS]
            within = [curve[str(n)] <= w1_default + 2 * se for n in BUDGETS]
            first = next((n for n, hit in zip(BUDGETS, ok, strict=True) if hit), None)
            stays = next((n for i, n in enumerate(BUDGETS) if all(within[i:])), None)
            init = fits[str(BUDGETS[0])].init_grad_evals
            row = {
                "model": name,
                "dim": default.target.dim,
                "seed": seed,
                "B": batch_size,
                "lr": learning_rate,
                "w1_default": w1_default,
                "w1_se": se,
                "w1_start": w1_start,
                "default_evals": default.num_grad_evals,
                "default_init": default.init_grad_evals,
                "default_steps": default.num_steps,
                "default_seconds": round(default_seconds, 1),
                "bam_init": init,
                "curve": " ".join(f"{n}:{curve[str(n)]:.3f}" for n in BUDGETS),
                "w1_bam_last": curve[str(BUDGETS[-1])],
            }
            for label, steps in (("first", first), ("stays", stays)):
                loop = None if steps is None else steps * batch_size
                row[f"{label}_steps"] = steps
                row[f"{label}_evals"] = loop
                row[f"{label}_ratio_loop"] = None if loop is None else default_loop / loop
                row[f"{label}_ratio_total"] = None if loop is None else default.num_grad_evals / (loop + init)
            rows.append(row)
            print({k: row[k] for k in ("model", "seed", "B", "lr", "w1_default", "curve", "stays_evals")})
    PROGRAMS.clear()  # many models in one process: release their compiled programs
    jax.clear_caches()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS_DEFAULT))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--configs", default="16:1,16:0.1", help="batch_size:learning_rate,...")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = [(int(c.split(":")[0]), float(c.split(":")[1])) for c in args.configs.split(",")]
    started, load, tic = now(), load_note(), time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows += rows_for(name, seeds, configs)
        pd.DataFrame(rows).to_csv(RESULTS_DIR / "score_partial.csv", index=False)
    df = pd.DataFrame(rows)
    df.to_csv(RESULTS_DIR / "score.csv", index=False)
    header = ["model", "d", "seed", "B", "lr", "w1 default ± se", "w1 start", "default evals (init)"]
    header += ["BaM first: evals", "ratio loop / total", "BaM stays: evals", "ratio loop / total"]

    def pair(a, b):
        return "" if a is None or a != a else f"{a:.1f} / {b:.1f}"

    table = markdown_table(
        header,
        (
            [
                r.model, r.dim, r.seed, r.B, r.lr, f"{r.w1_default:.3f} ± {r.w1_se:.3f}", r.w1_start,
                f"{r.default_evals} ({r.default_init})",
                "not reached" if r.first_evals != r.first_evals else f"{int(r.first_evals)} (+{r.bam_init})",
                pair(r.first_ratio_loop, r.first_ratio_total),
                "not reached" if r.stays_evals != r.stays_evals else f"{int(r.stays_evals)} (+{r.bam_init})",
                pair(r.stays_ratio_loop, r.stays_ratio_total),
            ]
            for r in df.itertuples()
        ),
    )  # fmt: skip
    curves = markdown_table(
        ["model", "seed", "B", "lr", "w1 after steps: w1"],
        ([r.model, r.seed, r.B, r.lr, r.curve] for r in df.itertuples()),
    )
    text = "\n\n".join(
        [
            "# Batch and match: gradient evaluations to reach the default fit's w1",
            f"Run {started}, {time.perf_counter() - tic:.0f} s; {format_load(load)}; "
            + ", ".join(f"{k} {v}" for k, v in versions().items()),
            (__doc__ or "").split("\n\n", 1)[1].split("Outputs")[0].strip(),
            table,
            "w1 of BaM at each budget (steps; B draws, i.e. gradient evaluations, per step):",
            curves,
        ]
    )
    path = RESULTS_DIR / "score.md"
    path.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
