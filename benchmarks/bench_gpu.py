"""GPU throughput: the compiled loop on a logistic regression of 10^4 to 10^7 rows, on one device or
split over all of them.

Logistic regression with ``--features`` features (20) and generated rows, reverse KL with
``--draws`` draws per step (16), full-rank Gaussian, started at NumPyro's initial point with scale
0.1 (the start is not what is measured). For each size the loop runs ``--steps`` steps twice: the
first compiles it, the second is timed (``Outcome.elapsed``: the host loop included, as a user's
``vt.fit`` runs it). Printed per size:

- draws x steps / s: draws of q evaluated per second (each one a pass over all rows);
- rows / s: data rows processed per second (rows x steps / s; each row once per draw);
- row evals / s: rows x draws x steps / s, the likelihood terms per second;
- ms / step, compile s, and the peak device memory (``device.memory_stats()['peak_bytes_in_use']``,
  the largest over the devices; "n/a" where the backend keeps no statistics, e.g. the CPU).

x64 stays off (JAX's default, float32 end to end, what a GPU runs) unless ``--x64``.

``--devices all`` splits the fit over every visible device (:func:`vitools.sharding.mesh_for`:
the data rows where they split evenly, else the draws; ``--split draws|data`` forces one).
Try it on a CPU with virtual devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bench_gpu.py --devices all``.

Run: ``python benchmarks/bench_gpu.py [--max-rows 1e7] [--devices all] [--steps 200]`` (on a CPU
``--max-rows 1e5`` keeps it to a minute).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, now, versions  # noqa: E402

from vitools import engine, sharding  # noqa: E402
from vitools.families.gaussian import FullRank  # noqa: E402
from vitools.objectives.reverse_kl import ReverseKL  # noqa: E402
from vitools.targets import Target  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)


def logistic_regression(X, y=None):
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("rows", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X @ beta), obs=y)


def make_data(rows: int, features: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Generated rows (seeded), in ``dtype`` on the host: float32 halves 10^7 x 20's 1.6 GB."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features), dtype=np.float32).astype(dtype, copy=False)
    beta = rng.normal(scale=0.5, size=features) / np.sqrt(features / 5)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(0.3 + X @ beta)))).astype(dtype)
    return X, y


def peak_memory(devices) -> int | None:
    """The largest ``peak_bytes_in_use`` over ``devices``, or None where no device reports it."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # a backend without statistics
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) if peaks else None


def run(rows: int, args, mesh_choice) -> dict:
    dtype = np.float64 if args.x64 else np.float32
    tic = time.perf_counter()
    X, y = make_data(rows, args.features, dtype)
    target = Target.from_model(logistic_regression, X, y=y)
    del X, y
    data_seconds = time.perf_counter() - tic
    family, objective, optimizer = FullRank(), ReverseKL(args.draws), engine.default_optimizer()
    mesh = mesh_choice(target)
    key = jax.random.PRNGKey(0)
    scale = 0.1 * jnp.eye(target.dim, dtype=target.initial_point.dtype)
    params = family.init(key, target, target.initial_point, scale)
    placed_target = sharding.place_target(target, mesh)
    placed_objective, placed_family = sharding.place((objective, family), mesh)
    programs = engine.ProgramCache()  # this size's program only (the engine's cache keys on shapes)
    outcomes = []
    for _ in range(2):  # the first call compiles, the second is timed
        state = sharding.place(engine.init_state(key, params, optimizer, 0.01, target.model_params), mesh)
        with sharding.active(mesh):
            outcomes.append(
                engine.optimize(
                    state,
                    args.steps,
                    placed_objective,
                    placed_family,
                    placed_target,
                    optimizer,
                    chunk_size=args.chunk_size,
                    progress=False,
                    programs=programs,
                )  # fmt: skip
            )
    first, timed = outcomes
    steps = int(timed.state.step)
    seconds = timed.elapsed
    return {
        "rows": rows,
        "mesh": "-" if mesh is None else " x ".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "steps": steps,
        "draws x steps / s": args.draws * steps / seconds,
        "rows / s": rows * steps / seconds,
        "row evals / s": rows * args.draws * steps / seconds,
        "ms / step": seconds / steps * 1e3,
        "compile s": first.compile_time,
        "target s": data_seconds,  # data generated and Target.from_model (its initial point compiles)
        "peak MB": "n/a" if (peak := peak_memory(jax.local_devices())) is None else peak / 2**20,
        "final loss": float(timed.losses[-1]),
        "dtype": str(timed.state.params.loc.dtype),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rows", type=float, default=1e7, help="largest size run (10^4 ... 10^7)")
    parser.add_argument("--devices", choices=["one", "all"], default="one", help="one device, or split")
    parser.add_argument("--split", choices=["auto", "draws", "data"], default="auto")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--x64", action="store_true", help="float64 (default: float32, JAX's default)")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)

    def mesh_choice(target):
        if args.devices == "one":
            return None
        if args.split == "auto":
            return sharding.mesh_for("all", target, args.draws)
        devices = jax.devices()
        return sharding.mesh_of(devices, data_shards=len(devices) if args.split == "data" else 1)

    devices = jax.devices()
    print(f"# bench_gpu, {now()}")
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); "
          f"x64 {'on' if args.x64 else 'off'}; versions {versions()}")  # fmt: skip
    print(f"logistic regression, {args.features} features; reverse KL, {args.draws} draws; fullrank; "
          f"{args.steps} steps timed after a compiling run; --devices {args.devices} "
          f"--split {args.split}")  # fmt: skip
    results = []
    for rows in SIZES:
        if rows > args.max_rows:
            break
        results.append(run(rows, args, mesh_choice))
        print(f"  {rows:>10,} rows: {results[-1]['ms / step']:.3g} ms/step", file=sys.stderr, flush=True)
    header = list(results[0]) if results else []
    print(markdown_table(header, ([r[h] for h in header] for r in results)))


if __name__ == "__main__":
    main()
