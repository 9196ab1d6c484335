"""Scaling: time per step of vt.fit's compiled loop against draws per step and data size.

Logistic regression (``bench_engine``'s model and seeded data, from ``engine_runs``; 20 features),
reverse KL, fullrank (vitools' default family), ``init="median"``. Time per step = ``fit.elapsed / steps``
of a warm fit (the loop compiled by an earlier call), best (minimum) of ``--repeats``
(the machine may be shared).

- draws per step S = 1, 2, 4, ..., 1024 at 1,000 rows;
- rows N = 10^2 ... 10^5 at S = 16.

The cost of a step is c0 + c1 x S (or x N): fixed work (optimizer update, Cholesky of a 21 x 21
factor, dispatch of the chunk) plus work per draw or row. A least-squares line in log-log space
gives the slope: 1 where the work per draw/row dominates. It is fitted over all points and over
the top decade (where the fixed part is small) and drawn on ``results/scaling.png``.

Run: ``.venv/bin/python benchmarks/bench_scaling.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, cpu_model, format_load, load_note, markdown_table, now, versions  # noqa: E402
from engine_runs import logistic_regression, make_data  # noqa: E402

import vitools as vt  # noqa: E402

FEATURES = 20
DRAWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROWS = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
FIXED_ROWS = 1_000
FIXED_DRAWS = 16
QUICK_DRAWS = (1, 4, 16, 64)
QUICK_ROWS = (100, 1_000, 10_000)
WORK_PER_RUN = 1.5e8  # draws x rows x steps per timed run, so that each run takes ~0.1-1 s


def steps_for(draws: int, rows: int) -> int:
    return int(np.clip(WORK_PER_RUN / (draws * rows), 200, 2000) // 100 * 100)


def time_per_step(rows: int, draws: int, repeats: int) -> dict:
    X, y = make_data(rows, FEATURES)
    steps = steps_for(draws, rows)

    def run():
        return vt.fit(
            logistic_regression,
            X,
            y=y,
            objective=vt.ReverseKL(draws),
            family="fullrank",
            num_steps=steps,
            init="median",
            progress=False,
            on_nonfinite="warn",
        )

    compile_s = run().compile_time
    elapsed = min(run().elapsed for _ in range(repeats))
    return {
        "rows": rows,
        "draws": draws,
        "steps": steps,
        "ms_per_step": elapsed / steps * 1e3,
        "compile_s": compile_s,
    }


def slope(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def affine(x, y) -> tuple[float, float, float]:
    """t = c0 + c1 x fitted by least squares on relative errors: (c0, c1, max relative error)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    design = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (c0, c1), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    return float(c0), float(c1), float(np.max(np.abs(c0 + c1 * x - y) / y))


def top_decade(df: pd.DataFrame, column: str) -> pd.DataFrame:
    return df[df[column] >= df[column].max() / 10]


def plot(by_draws: pd.DataFrame, by_rows: pd.DataFrame, slopes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, df, column, label, fixed in (
        (axes[0], by_draws, "draws", "draws per step S", f"{FIXED_ROWS} rows"),
        (axes[1], by_rows, "rows", "data rows N", f"S = {FIXED_DRAWS}"),
    ):
        x, y = df[column].to_numpy(float), df["ms_per_step"].to_numpy(float)
        ax.loglog(x, y, "o-", label="vt.fit loop")
        top = top_decade(df, column)
        coef = np.polyfit(np.log(top[column].astype(float)), np.log(top["ms_per_step"]), 1)
        grid = np.geomspace(x.min(), x.max(), 50)
        ax.loglog(grid, np.exp(np.polyval(coef, np.log(grid))), "--", color="gray", lw=1,
                  label=f"fit over top decade: slope {slopes[column]['top']:.2f}")  # fmt: skip
        c0, c1, _ = slopes[column]["affine"]
        ax.loglog(grid, c0 + c1 * grid, "-", color="tab:orange", lw=1, alpha=0.8,
                  label=f"affine fit {c0:.3g} + {c1:.3g} x (ms)")  # fmt: skip
        ax.loglog(grid, y[-1] * grid / x[-1], ":", color="black", lw=0.8, label="slope 1")
        ax.set_xlabel(label)
        ax.set_ylabel("ms per step")
        ax.set_title(f"time per step vs {column} ({fixed}, {FEATURES} features, fullrank)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slope_cells(s: dict) -> list:
    reading = "~linear" if 0.8 <= s["top"] <= 1.2 else ("sub-linear" if s["top"] < 0.8 else "super-linear")
    c0, c1, error = s["affine"]
    return [f"{s['all']:.2f}", f"{s['top']:.2f}", reading, f"{c0:.4f}", f"{c1:.3g}", f"{error:.0%}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    draws, rows = (QUICK_DRAWS, QUICK_ROWS) if args.quick else (DRAWS, ROWS)
    load = load_note()
    print(f"# scaling benchmark, {now()}; {format_load(load)}", flush=True)
    start = time.perf_counter()
    by_draws = []
    for s in draws:
        by_draws.append(time_per_step(FIXED_ROWS, s, args.repeats))
        print(f"  draws {s:>4}: {by_draws[-1]['ms_per_step']:.4f} ms/step", flush=True)
    by_rows = []
    for n in rows:
        by_rows.append(time_per_step(n, FIXED_DRAWS, args.repeats))
        print(f"  rows {n:>6}: {by_rows[-1]['ms_per_step']:.4f} ms/step", flush=True)
    total = time.perf_counter() - start
    by_draws, by_rows = pd.DataFrame(by_draws), pd.DataFrame(by_rows)
    slopes = {
        column: {
            "all": slope(df[column], df["ms_per_step"]),
            "top": slope(top_decade(df, column)[column], top_decade(df, column)["ms_per_step"]),
            "affine": affine(df[column], df["ms_per_step"]),
        }
        for column, df in (("draws", by_draws), ("rows", by_rows))
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([by_draws.assign(axis="draws"), by_rows.assign(axis="rows")]).to_csv(
        out / "scaling.csv", index=False, float_format="%.5g"
    )
    plot(by_draws, by_rows, slopes, out / "scaling.png")
    rows_out = [
        ["draws", r.rows, r.draws, r.steps, r.ms_per_step, r.ms_per_step / r.draws]
        for r in by_draws.itertuples()
    ]
    rows_out += [
        ["rows", r.rows, r.draws, r.steps, r.ms_per_step, r.ms_per_step / r.rows * 1e3]
        for r in by_rows.itertuples()
    ]
    table = markdown_table(
        ["axis", "rows", "draws/step", "steps", "ms/step", "ms/step per unit (draw or 1k rows)"], rows_out
    )
    slope_table = markdown_table(
        [
            "axis",
            "slope, all points",
            "slope, top decade",
            "reading",
            "affine fit c0 + c1 x: c0 (ms)",
            "c1 (ms per unit)",
            "max rel. error of the affine fit",
        ],  # fmt: skip
        [
            [f"draws per step ({FIXED_ROWS} rows)", *_slope_cells(slopes["draws"])],
            [f"data rows (S = {FIXED_DRAWS})", *_slope_cells(slopes["rows"])],
        ],
    )

    text = f"""# Scaling of the time per step

{now()}; {cpu_model()}, {load["nproc"]} cores; {format_load(load)}; total runtime {total / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())}.

Logistic regression with {FEATURES} features, reverse KL, fullrank, `init="median"`; ms/step = warm
`fit.elapsed / steps`, best of {args.repeats}. Log-log slopes (1 = linear):

{slope_table}

Below the top decade a step is dominated by its fixed cost (optimizer update, the fullrank factor,
dispatch), so the slope over all points is lower. The affine fit t = c0 + c1 x (x = draws, or rows)
over all points says whether the time is "fixed cost + linear work": its largest relative error is
in the last column (c1 for rows is per row).

{table}

Plot: `scaling.png`. Raw numbers: `scaling.csv`.
"""
    (out / "scaling.md").write_text(text)
    print(f"# done in {total / 60:.1f} min -> {out / 'scaling.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
