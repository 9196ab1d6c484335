"""The report of ``bench_engine``: ``engine.md`` from the table of every configuration's timings
that ``engine_runs`` measures (``engine.csv``), with issue 4's targets."""

from __future__ import annotations

import pandas as pd
from common import cpu_model, format_load, markdown_table, now, versions
from engine_runs import DRAWS, LEARNING_RATE

TARGET_SVI_RATIO = 2.0  # issue 4: vitools >= 2x faster per fit than SVI.run with its progress bar
TARGET_BARE_RATIO = 1.3  # issue 4: vitools' loop within 1.3x of the bare compiled loop


def report(df: pd.DataFrame, load: dict, total_s: float) -> str:
    per_fit = markdown_table(
        [
            "rows", "params", "family", "steps", "SVI.run bar (s)", "SVI.run no bar (s)", "vt.fit cold (s)",
            "vt compile (s)", "vt.fit warm (s)", "vt.fit warm, Laplace init (s)", "bar / vt warm",
            "bar / vt cold", "bar / vt warm Laplace", "no bar / vt warm",
        ],
        [
            [r.rows, r.params, r.family, r.steps, r.svi_bar_s, r.svi_nobar_s, r.vt_cold_s, r.vt_compile_s,
             r.vt_warm_s, r.vt_warm_laplace_s, f"{r.svi_bar_over_vt_warm:.1f}x",
             f"{r.svi_bar_over_vt_cold:.1f}x", f"{r.svi_bar_over_vt_laplace:.1f}x",
             f"{r.svi_nobar_over_vt_warm:.1f}x"]
            for r in df.itertuples()
        ],
    )  # fmt: skip
    per_step = markdown_table(
        [
            "rows", "params", "family", "SVI bar (ms/step)", "SVI no bar (ms/step)", "vt loop (ms/step)",
            "bare loop (ms/step)", "vt loop / bare", "SVI bar fixed (s)", "SVI no bar fixed (s)",
            "bare compile (s)", "Laplace init warm (s)", "Laplace 1st call (s) (*)",
        ],
        [
            [r.rows, r.params, r.family, r.svi_bar_step_ms, r.svi_nobar_step_ms, r.vt_step_ms, r.bare_step_ms,
             f"{r.vt_loop_over_bare:.2f}x", r.svi_bar_fixed_s, r.svi_nobar_fixed_s, r.bare_compile_s,
             r.laplace_init_s, r.laplace_first_s]
            for r in df.itertuples()
        ],
    )  # fmt: skip
    mem = df[df["family"] == "fullrank"]
    memory_table = (
        "Not measured (`--no-memory`)."
        if "mem_svi_bar" not in df
        else markdown_table(
            [
                "rows",
                "params",
                "SVI.run bar (MiB)",
                "vt.fit median (MiB)",
                "vt.fit laplace (MiB)",
                "bare (MiB)",
            ],
            [
                [r.rows, r.params, r.mem_svi_bar, r.mem_vt, r.mem_vt_laplace, r.mem_bare]
                for r in mem.itertuples()
            ],
        )
    )
    proc = df[df["family"] == "fullrank"]
    process_table = "Not measured (`--no-process`)." if "proc_svi_over_vt" not in df else markdown_table(
        ["rows", "params", "SVI.run bar (s)", "vt.fit default (s)", "SVI / vt", "disk cache: SVI.run bar (s)",
         "disk cache: vt.fit default (s)", "SVI / vt (disk cache)"],
        [[r.rows, r.params, r.proc_svi_bar_s, r.proc_vt_default_s,
          f"{r.proc_svi_over_vt:.1f}x", r.proc_cached_svi_bar_s, r.proc_cached_vt_default_s,
          f"{r.proc_cached_svi_over_vt:.1f}x"] for r in proc.itertuples()],
    )  # fmt: skip
    svi_ok = df["svi_bar_over_vt_warm"] >= TARGET_SVI_RATIO
    cold_ok = df["svi_bar_over_vt_cold"] >= TARGET_SVI_RATIO
    laplace_ok = df["svi_bar_over_vt_laplace"] >= TARGET_SVI_RATIO
    bare_ok = df["vt_loop_over_bare"] <= TARGET_BARE_RATIO
    misses_svi = ", ".join(f"{r.rows}x{r.params} {r.family}" for r in df[~svi_ok].itertuples()) or "none"
    misses_bare = ", ".join(
        f"{r.rows}x{r.params} {r.family} ({r.vt_loop_over_bare:.2f}x)" for r in df[~bare_ok].itertuples()
    )
    return f"""# Engine speed

{now()}; {cpu_model()}, {load["nproc"]} cores; {format_load(load)}; total runtime {total_s / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())}.

Logistic regression, reverse KL, {DRAWS} draws/step on every side, Adam (SVI and bare loop: lr
{LEARNING_RATE} constant; vitools: its default schedule). vitools timed with `init="median"` (like
for like with the autoguides' init); the Laplace-path init is timed apart. Best of the repeats
(warm contenders interleaved round-robin); `SVI.run` is cold on every call.

## Targets

- vitools >= {TARGET_SVI_RATIO:g}x faster per fit than `SVI.run` with its default progress bar:
  warm `vt.fit` (loop already compiled): **{int(svi_ok.sum())} of {len(df)}** configurations
  (misses: {misses_svi}); warm with the default Laplace init: {int(laplace_ok.sum())} of {len(df)};
  cold `vt.fit` (first call for the shapes, compiles): {int(cold_ok.sum())} of {len(df)}.
  Median ratio bar / warm {df["svi_bar_over_vt_warm"].median():.1f}x, bar / cold
  {df["svi_bar_over_vt_cold"].median():.1f}x.
- vitools' loop within {TARGET_BARE_RATIO:g}x of the bare compiled loop: **{int(bare_ok.sum())} of
  {len(df)}** (misses: {misses_bare or "none"}); median {df["vt_loop_over_bare"].median():.2f}x.

## Per fit (seconds)

`SVI.run` recompiles on every call (a fresh closure), so each of its calls pays tracing and
compilation; `vt.fit` keeps its compiled loop across calls of the same shapes ("warm").

{per_fit}

## Per step, fixed costs

{per_step}

(*) the Laplace init compiles once per data shape, so the fullrank row after the meanfield row of
the same data reuses it. "fixed" = an `SVI.run` call minus its loop (tracing, init, compilation).

## A user's first call in a new process (fullrank)

Each number is one call in a fresh process (data made and the backend up first): `SVI.run` with its
bar, and the default `vt.fit` (Laplace init; tracing the model, the init and the loop compiled).
"Disk cache": JAX's persistent compilation cache on for both (`vt.enable_compilation_cache()`; the
`vitools` command line turns it on by default), filled by an earlier process.

{process_table}

## Memory peak of one cold fit (fullrank; extra peak RSS over the RSS after imports and data)

{memory_table}

Raw numbers: `engine.csv`.
"""
