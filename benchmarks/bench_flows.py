r"""A flow cheap in both directions: the coupling family against IAF and full-rank.

1. banana (d = 2), reverse and forward KL, default ``vt.fit`` (2000 steps at most, seed 0), with
   :class:`vitools.families.coupling.Coupling` (affine and spline) and full-rank for scale: k̂ and
   W1 to the exact posterior (``vt.compare``, 10,000 draws).
2. forward KL at d ~ 100 (zoo ``gaussian_100``, and ``stochastic_volatility``, d = 103): the
   coupling flow for a whole default fit (2000 steps at most), IAF for a few steps only (its
   ``log_prob`` inverts each layer by d sequential network passes; a whole fit at d = 103 ran past
   15 minutes). Wall time per step (the loop's, compilation apart), compile time, total, and the
   CPU seconds of the process (the machine is shared: wall time reads high under load).

Outputs ``benchmarks/results/flows.md``.

Run: ``.venv/bin/python benchmarks/bench_flows.py [--parts banana,d100] [--iaf-steps 5]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
from common import format_load, load_note, markdown_table, now, versions, write_text

import vitools as vt
from vitools.families.coupling import Coupling
from vitools.models import get_model

HEADER = ("model", "d", "objective", "family", "steps", "status", "ms/step", "compile s", "total s",
          "CPU s", "k̂", "W1")  # fmt: skip


def one_fit(name: str, objective: str, family, label: str, num_steps: int, compare: bool) -> list:
    zoo = get_model(name)
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = vt.fit(
            zoo.model, *zoo.args, objective=objective, family=family, num_steps=num_steps, seed=0,
            progress=False, on_nonfinite="warn", **zoo.kwargs,
        )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    khat = w1 = None
    if compare:
        table = vt.compare({label: fit}, reference=zoo.reference())
        khat, w1 = float(table.loc[label, "khat"]), float(table.loc[label, "w1"])
    step_ms = 1000 * (fit.elapsed / max(fit.num_steps, 1))
    row = [name, fit.params.loc.shape[0], objective, label, fit.num_steps, fit.status, step_ms,
           fit.compile_time, wall, cpu, khat, w1]  # fmt: skip
    print(" | ".join(str(v) for v in row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="banana,d100")
    parser.add_argument("--iaf-steps", type=int, default=5)
    args = parser.parse_args()
    parts = args.parts.split(",")
    load = load_note()
    rows = []
    if "banana" in parts:
        for objective in ("reverse_kl", "forward_kl"):
            for label, family in (
                ("coupling", Coupling()),
                ("coupling spline", Coupling(transformer="spline")),
                ("fullrank", "fullrank"),
            ):
                rows.append(one_fit("banana", objective, family, label, 2000, compare=True))
    if "d100" in parts:
        for name in ("gaussian_100", "stochastic_volatility"):
            rows.append(one_fit(name, "forward_kl", Coupling(), "coupling", 2000, compare=True))
            rows.append(one_fit(name, "forward_kl", "iaf", "iaf", args.iaf_steps, compare=False))
            jax.clear_caches()
    text = "\n\n".join(
        [
            "# Coupling flow: banana, and forward KL at d ~ 100",
            f"Run {now()}, `benchmarks/bench_flows.py --parts {args.parts}`. {format_load(load)}.",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
            "ms/step: the loop's wall time per step (compilation apart); total: the whole `vt.fit` "
            "(Laplace start included); CPU s: the process's CPU seconds over that fit. IAF rows run "
            f"{args.iaf_steps} steps only. k̂ and W1 from `vt.compare` against the zoo reference.",
            markdown_table(HEADER, rows),
        ]
    )
    path = write_text("flows.md", text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
