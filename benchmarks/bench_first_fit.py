"""A user's first fit in a new process: ``vt.fit`` vs ``SVI.run``, each in a fresh subprocess.

Every engine benchmark configuration (``engine_runs.GRID``, both families): the logistic regression
of ``bench_engine`` with its seeded data, reverse KL, 16 draws, Adam, the same steps on both sides.
Each number is one call in a fresh Python process, timed after the imports and the data (the backend
is up), with JAX's persistent compilation cache off:

- ``SVI.run`` with its progress bar (NumPyro's autoguide, ``Trace_ELBO(16)``);
- ``vt.fit`` with its defaults (``vt``): the Laplace init, the start race where the budget has
  one, the loop (compiled in a background thread while the Laplace init compiles and runs:
  ``start.prefetch_loop``), tracing the model included;
- ``vt.fit(init="median")`` (``vt_median``): SVI.run's own start (NumPyro's init point, scale 0.1)
  instead of the Laplace init, so the two do the same work: the loop and its set-up.

Wall seconds are what a user waits; CPU seconds (``time.process_time``, all threads) are reported
beside them because the machine may be shared: under load wall times are inflated, CPU much less.
The calls of one configuration run interleaved (SVI, vt, vt_median, then again for ``--repeats``)
and the best of each is kept.

Run: ``.venv/bin/python benchmarks/bench_first_fit.py [--quick] [--repeats 2]``; writes
``benchmarks/results/first_fit.md``. ``--profile ROWS,FEATURES,STEPS,FAMILY [--prefetch]``
prints where one first ``vt.fit``'s CPU seconds go instead: per phase, per thread (the main one,
XLA's compile and runtime pools), and per JAX program its tracing, lowering and XLA compilation
(``jax.monitoring`` events).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import format_load, load_note, markdown_table, now, versions, write_text  # noqa: E402

METHODS = ("svi_bar", "vt", "vt_median")


def child(rows: int, features: int, steps: int, family: str, method: str) -> dict:
    """One first call in this fresh process: wall and CPU seconds."""
    import jax
    import jax.numpy as jnp
    from engine_runs import make_data, svi_runner, vt_runner

    X, y = make_data(rows, features)
    jax.block_until_ready(jnp.sum(X))  # the backend is up before the clock starts
    wall, cpu = time.perf_counter(), time.process_time()
    if method == "svi_bar":
        jax.block_until_ready(svi_runner(family, X, y, steps, True)())
    else:
        init = "median" if method == "vt_median" else "laplace"
        jax.block_until_ready(vt_runner(family, X, y, steps, init)().losses)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


# Threads of a first fit by name (Linux's /proc names): XLA's CPU compiler compiles a program's
# kernels on threads of its own, which keep the process's name (as the prefetch's thread does);
# its runtime runs on tf_XLAEigen threads.
THREAD_ROLES = {
    "python": "XLA's compile pool, and the prefetch's thread",
    "tf_XLAEigen": "XLA's runtime pool",
}


def thread_seconds() -> dict[int, tuple[str, float]]:
    """``{thread id: (name, CPU seconds)}`` of this process's threads (empty off Linux)."""
    out = {}
    root = Path("/proc/self/task")
    for task in root.iterdir() if root.exists() else ():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def thread_report(before: dict, after: dict, main: int) -> str:
    """CPU seconds between two :func:`thread_seconds` by role: the main thread, then the others
    grouped by name. The main thread's seconds bound a fit's wall time from below, as the
    process's CPU seconds over the cores do."""
    groups: dict[str, list[float]] = {}
    for tid, (name, seconds) in after.items():
        spent = seconds - before.get(tid, (name, 0.0))[1]
        if spent >= 0.01:
            groups.setdefault("main" if tid == main else name, []).append(spent)
    parts = [f"main {sum(groups.pop('main', [0.0])):.2f}"]
    for name, spent in sorted(groups.items(), key=lambda item: -sum(item[1])):
        role = THREAD_ROLES.get(name, "")
        parts.append(f"{name} x{len(spent)} {sum(spent):.2f}" + (f" ({role})" if role else ""))
    return "threads (CPU s): " + ", ".join(parts)


def profile(rows: int, features: int, steps: int, family: str, prefetch: bool = False) -> str:
    """One first ``vt.fit`` in this fresh process, broken down: the seconds of each phase of the fit
    and of each JAX program's tracing, lowering and XLA compilation (CPU seconds of this process,
    all threads: with the background compile of the loop switched off, they are the program's),
    and each thread's CPU seconds (:func:`thread_report`). ``prefetch``: leave the background
    compile of the loop on (the programs' seconds then overlap)."""
    import collections
    import threading

    import jax
    import jax.numpy as jnp
    from engine_runs import make_data, vt_runner

    import vitools.alerts
    import vitools.fitting
    import vitools.start

    starts, programs, phases = {}, [], []

    def started(event, value, **kwargs):
        starts[event, kwargs.get("fun_name"), threading.get_ident()] = time.process_time()

    def ended(event, start, end, **kwargs):
        began = starts.pop((event, kwargs.get("fun_name"), threading.get_ident()), float("nan"))
        stage = event.rsplit("/", 1)[-1].replace("_duration", "")
        programs.append((kwargs.get("fun_name", "?"), stage, time.process_time() - began))

    jax.monitoring.register_scalar_listener(started)
    jax.monitoring.register_event_time_span_listener(ended)
    if not prefetch:
        vitools.start.prefetch_loop = lambda *args, **kwargs: False

    def timed(module, name):
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            cpu = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                phases.append((name, time.process_time() - cpu))

        setattr(module, name, wrapper)

    for module, name in [
        (vitools.fitting, "target_of"),
        (vitools.fitting, "check_distribution"),
        (vitools.start, "starting_point"),
        (vitools.start, "race"),
        (vitools.fitting, "optimize"),
        (vitools.alerts, "warn_improper"),
    ]:
        timed(module, name)
    X, y = make_data(rows, features)
    jax.block_until_ready(jnp.sum(X))
    programs.clear()
    threads, cpu = thread_seconds(), time.process_time()
    jax.block_until_ready(vt_runner(family, X, y, steps, "laplace")().losses)
    total = time.process_time() - cpu
    by_thread = thread_report(threads, thread_seconds(), threading.get_native_id())
    table = collections.defaultdict(lambda: {"trace": 0.0, "lower": 0.0, "compile": 0.0})
    names = {"jaxpr_trace": "trace", "jaxpr_to_mlir_module": "lower", "backend_compile": "compile"}
    for name, stage, seconds in programs:
        table[name.removeprefix("jit(").removesuffix(")")][names.get(stage, stage)] += seconds
    rows_out = sorted(table.items(), key=lambda item: -sum(item[1].values()))
    lines = [
        f"{rows} rows x {features + 1} params, {family}, {steps} steps"
        f"{', loop prefetched' if prefetch else ''}: {total:.2f} CPU s in all",
        "phases (CPU s): " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases),
        by_thread,
        "",
        markdown_table(
            ("program", "trace", "lower", "XLA compile", "total"),
            [(name, t["trace"], t["lower"], t["compile"], sum(t.values())) for name, t in rows_out],
        ),
    ]
    return "\n".join(lines)


def run_child(spec: str) -> dict:
    env = dict(os.environ)
    env.pop("VITOOLS_CACHE_DIR", None)  # no persistent compilation cache
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False, env=env
    )
    for line in result.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    print(result.stderr[-2000:], file=sys.stderr)
    return {"wall": float("nan"), "cpu": float("nan")}


def main(argv: list[str] | None = None) -> int:
    from engine_runs import FAMILIES, GRID, QUICK_GRID

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"grid {QUICK_GRID}, fullrank only")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="", metavar="ROWS,FEATURES,STEPS,FAMILY")
    parser.add_argument(
        "--prefetch", action="store_true", help="with --profile: the loop compiles in the background"
    )
    args = parser.parse_args(argv)
    if args.profile:
        rows, features, steps, family = args.profile.split(",")
        print(profile(int(rows), int(features), int(steps), family, args.prefetch))
        return 0
    if args.child:
        rows, features, steps, family, method = args.child.split(",")
        print(json.dumps(child(int(rows), int(features), int(steps), family, method)))
        return 0
    grid = QUICK_GRID if args.quick else GRID
    families = ("fullrank",) if args.quick else tuple(FAMILIES)
    start_load, start = load_note(), time.perf_counter()
    print(f"# first fit, {now()}; {format_load(start_load)}", flush=True)
    rows_out, peak_load = [], start_load["load_1m"]
    for rows, features, steps in grid:
        for family in families:
            best = {m: {"wall": float("inf"), "cpu": float("inf")} for m in METHODS}
            for _ in range(args.repeats):
                for method in METHODS:
                    out = run_child(f"{rows},{features},{steps},{family},{method}")
                    for k in ("wall", "cpu"):
                        best[method][k] = min(best[method][k], out[k])
                    peak_load = max(peak_load, load_note()["load_1m"])
            svi, vt, median = (best[m] for m in METHODS)
            row = (
                rows, features + 1, family, steps,
                svi["wall"], vt["wall"], svi["wall"] / vt["wall"],
                median["wall"], svi["wall"] / median["wall"],
                svi["cpu"], vt["cpu"], median["cpu"],
            )  # fmt: skip
            print("  " + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row), flush=True)
            rows_out.append(row)
    header = (
        "rows", "params", "family", "steps",
        "SVI.run bar wall (s)", "vt.fit wall (s)", "SVI / vt.fit",
        "vt.fit median init wall (s)", "SVI / median init",
        "SVI.run bar CPU (s)", "vt.fit CPU (s)", "median init CPU (s)",
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    stack = versions()
    text = "\n".join(
        [
            "# A user's first fit in a new process (no persistent compilation cache)",
            "",
            f"Run {now()} ({minutes:.1f} min), best of {args.repeats} fresh processes per cell, interleaved;"
            f" {format_load(start_load)}; highest 1-min load seen: {peak_load}.",
            f"Versions: {', '.join(f'{k} {v}' for k, v in stack.items())}.",
            "",
            "What is timed: see `benchmarks/bench_first_fit.py`. Wall is what a user waits; CPU (all",
            "threads) is less sensitive to other processes' load on a shared machine, but it does not",
            "show the gain of compiling two programs at once (the loop's prefetch), which needs an idle",
            "core.",
            "",
            markdown_table(header, rows_out),
            "",
        ]
    )
    path = write_text("first_fit.md", text)
    print(f"# done in {minutes:.1f} min -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
