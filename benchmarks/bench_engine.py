"""Engine speed: ``vt.fit`` vs NumPyro's ``SVI.run`` vs a bare compiled loop, side by side.

Logistic regression (seeded synthetic data) on a grid from 10 to 10^5 rows and 5 to 500 features
(``GRID``); reverse KL with the same Gaussian family on every side (vitools ``meanfield`` = NumPyro
``AutoDiagonalNormal``, ``fullrank`` = ``AutoMultivariateNormal``), the same steps and 16 draws per
step (vitools' default; ``Trace_ELBO(num_particles=16)``), Adam.

- ``SVI.run`` with its default progress bar (a jitted step per Python iteration) and without
  (one ``lax.scan``); each call traces and compiles again, as it does for a user.
- ``vt.fit(init="median")``: NumPyro's init point with scale 0.1, as the autoguides start (like
  for like). "cold" is the first call for the shapes (compiles the loop), "warm" a repeat (the
  compiled loop is reused), "loop" is ``fit.elapsed`` (the compiled chunks only). The default
  ``init="laplace"`` is timed apart: its extra cost per call and its one-off compilation.
- The bare loop is the compute limit: one ``jax.jit(lax.scan(step))`` of a hand-written STL
  reparameterized ELBO step with ``optax.adam`` on the same flat log density, timed warm.

Timings of one configuration are measured in one process: cold calls first, then the warm
contenders round-robin for ``--repeats`` rounds; the best (minimum) time of each is kept, the
usual guard against other processes' load (the machine may be shared). ``SVI.run``, cold on
every call, is the best of min(3, repeats) calls. SVI's cost per step is that of ``SVI.run``'s
own loop replayed with its step compiled beforehand (``svi_loop``); its fixed cost per call
(tracing, init, compilation) is the rest of an ``SVI.run`` call.

New process: a user's first call, each in a fresh subprocess, for ``SVI.run`` (bar) and the
default ``vt.fit`` (Laplace init), without and with JAX's persistent compilation cache (on for
both; filled by an earlier process). Fullrank rows only.

Memory: the peak resident set size of one cold fit in a fresh subprocess, after imports and
data: the peak (``VmHWM``) is reset to the current RSS through ``/proc/self/clear_refs`` before
the fit, and the extra peak over that RSS is reported (Linux; elsewhere ``ru_maxrss`` deltas,
which miss peaks below the import-time one); fullrank only (vitools' default family). JAX
reports no ``device.memory_stats()`` on CPU.

The measurements are in ``engine_runs.py`` (with the model and data ``bench_scaling`` uses), the
report in ``engine_report.py``; this script is the command line and the subprocesses' entry point.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--quick] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, format_load, load_note, now  # noqa: E402
from engine_report import report  # noqa: E402
from engine_runs import (  # noqa: E402
    FAMILIES,
    GRID,
    QUICK_GRID,
    measure,
    memory,
    memory_child,
    new_process,
    process_child,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"grid {QUICK_GRID}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--process-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-process", action="store_true", help="skip the new-process timings")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.memory_child:
        rows, features, steps, family, method = args.memory_child.split(",")
        print(json.dumps(memory_child(int(rows), int(features), int(steps), family, method)))
        return 0
    if args.process_child:
        rows, features, steps, family, method, cache = args.process_child.split(",")
        print(json.dumps(process_child(int(rows), int(features), int(steps), family, method, cache)))
        return 0
    grid = QUICK_GRID if args.quick else GRID
    load = load_note()
    print(f"# engine benchmark, {now()}; {format_load(load)}", flush=True)
    start = time.perf_counter()
    results = []
    for rows, features, steps in grid:
        for family in FAMILIES:
            print(f"## {rows} x {features + 1} {family}: {format_load(load_note())}", flush=True)
            result = measure(rows, features, steps, family, args.repeats)
            if family == "fullrank" and not args.no_memory:
                for method in ("svi_bar", "vt", "vt_laplace", "bare"):
                    result[f"mem_{method}"] = memory(rows, features, steps, family, method)
            if family == "fullrank" and not args.no_process:
                result |= new_process(rows, features, steps, family)
            print(
                "  " + ", ".join(f"{k}={v:.3g}" for k, v in result.items() if isinstance(v, float)),
                flush=True,
            )
            results.append(result)
    total = time.perf_counter() - start
    df = pd.DataFrame(results)
    process_columns = (
        "proc_svi_bar_s",
        "proc_vt_default_s",
        "proc_cached_svi_bar_s",
        "proc_cached_vt_default_s",
    )
    for column in ("mem_svi_bar", "mem_vt", "mem_vt_laplace", "mem_bare", *process_columns):
        if column not in df:
            df[column] = np.nan
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "engine.csv", index=False, float_format="%.5g")
    (out / "engine.md").write_text(report(df, load, total))
    print(f"# done in {total / 60:.1f} min -> {out / 'engine.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
