"""The multi-device checks of ``tests/test_sharding.py``, run in a process of their own.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX starts, and the
rest of the suite must keep its one device, so ``test_sharding.py`` runs this script in a
subprocess (``python tests/sharding_check.py``) and reads the JSON it prints. On a machine with
accelerators, ``python tests/sharding_check.py --gpu`` runs it on those instead (however many
there are; with one, the split fits are skipped and ``num_devices`` says so).

x64 stays off, JAX's default and what a GPU user runs: the fits are float32 end to end.

What it measures (all on a logistic regression of 256 generated rows and 4 features):
- the same fit (seed, 200 steps of reverse KL with a full-rank Gaussian) unsplit, with the draws
  split over the devices and with the data rows split: the largest difference of the parameters;
- the shardings of the placed data, of q's draws (Gaussian and mixture) and of the parameters
  after the split fits;
- ``vt.fit`` with ``devices="all"`` and with a Mesh from ``jax.make_mesh`` (Explicit axes), against
  the one-device fit, and what each says it split (``Fit.layout``, the line printed with progress);
  the warning of ``devices="all"`` for rows that do not split evenly;
- that a chunk of the compiled loop runs under ``jax.transfer_guard("disallow")`` (no transfer
  between host and device inside it) and that its HLO has no host callback, infeed or outfeed;
- the dtypes of params, draws and losses, float64 in the compiled HLO, and JAX's warnings of a
  float64 request truncated to float32.
"""

from __future__ import annotations

import os
import sys
import time

STARTED = time.perf_counter()

if __name__ == "__main__":  # before JAX starts; importing this module changes nothing
    os.environ.pop("JAX_ENABLE_X64", None)  # float32, JAX's default
    if "--gpu" not in sys.argv:  # four virtual CPU devices
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
        os.environ["JAX_PLATFORMS"] = "cpu"

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

from vitools import engine, sharding  # noqa: E402
from vitools.families.base import draw_many  # noqa: E402
from vitools.families.gaussian import FullRank  # noqa: E402
from vitools.families.mixture import GaussianMixture, MixtureParams  # noqa: E402
from vitools.objectives.reverse_kl import ReverseKL  # noqa: E402
from vitools.targets import Target  # noqa: E402

ROWS, FEATURES, DRAWS, STEPS, CHUNK = 256, 4, 16, 200, 50


def logistic_regression(X, y=None):
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("rows", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X @ beta), obs=y)


def subsampled_logistic_regression(X, y=None):
    """:func:`logistic_regression` on a minibatch of 64 rows a step (its fits take the control
    variate's snapshot, :mod:`vitools.control_variate`)."""
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("rows", X.shape[0], subsample_size=64) as idx:
        obs = None if y is None else y[idx]
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X[idx] @ beta), obs=obs)


def data(rows: int, features: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(0.3 + X @ np.full(features, 0.5))))).astype(np.float32)
    return X, y


def spec_of(x) -> list | None:
    spec = getattr(x.sharding, "spec", None)
    return None if spec is None else [None if s is None else str(s) for s in spec]


def describe(x) -> dict:
    """The sharding of one array: its spec, devices and the shape of one device's shard."""
    return {
        "spec": spec_of(x),
        "num_devices": len(x.sharding.device_set),
        "shard_shape": list(x.addressable_shards[0].data.shape),
        "dtype": str(x.dtype),
    }


def max_diff(a, b) -> float:
    """The largest absolute difference between two trees of arrays of the same structure."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def fit(mesh, target, family, objective, optimizer, key, programs):
    """200 steps from the same start and key, on ``mesh`` (None: unsplit), with the programs of
    ``programs`` (a cache of its own for each placement: the engine's cache keys on shapes only)."""
    params = family.init(key, target, target.initial_point, 0.5 * jnp.eye(target.dim, dtype=jnp.float32))
    state = engine.init_state(key, params, optimizer, 0.05, target.model_params)
    state, objective, family = sharding.place((state, objective, family), mesh)
    target = sharding.place_target(target, mesh)
    with sharding.active(mesh):
        outcome = engine.optimize(
            state, STEPS, objective, family, target, optimizer, chunk_size=CHUNK, progress=False,
            programs=programs,
        )  # fmt: skip
    return outcome, target


def main() -> dict:
    float64_warnings = []
    warnings.showwarning = lambda message, *args, **kwargs: float64_warnings.append(str(message))
    warnings.simplefilter("always")
    devices = jax.devices()
    X, y = data(ROWS, FEATURES)
    target = Target.from_model(logistic_regression, X, y=y)
    family, objective = FullRank(), ReverseKL(DRAWS)
    optimizer = engine.default_optimizer()
    key = jax.random.PRNGKey(0)
    seconds = {"imports": time.perf_counter() - STARTED}
    tic = time.perf_counter()
    report = {
        "seconds": seconds,
        "num_devices": len(devices),
        "platform": devices[0].platform,
        "x64": jax.config.jax_enable_x64,
    }

    seconds["target"], tic = time.perf_counter() - tic, time.perf_counter()
    unsplit_programs = engine.ProgramCache()
    base, _ = fit(None, target, family, objective, optimizer, key, unsplit_programs)
    report["unsplit"] = {
        "final_loss": float(base.losses[-1]),
        "steps": int(base.state.step),
        "params": {k: describe(v) for k, v in base.state.params._asdict().items()},
        "loss_dtype": str(base.losses.dtype),
    }
    seconds["unsplit_fit"], tic = time.perf_counter() - tic, time.perf_counter()
    base_params = [np.asarray(x) for x in jax.tree.leaves(base.state.params)]
    scale = max(float(np.max(np.abs(x))) for x in base_params)
    report["param_scale"] = scale

    if len(devices) > 1:
        for name, data_shards in (("draws", 1), ("data", len(devices))):
            mesh = sharding.mesh_of(devices, data_shards=data_shards)
            outcome, placed = fit(mesh, target, family, objective, optimizer, key, engine.ProgramCache())
            params = [np.asarray(x) for x in jax.tree.leaves(outcome.state.params)]
            report[name] = {
                "mesh": dict(mesh.shape),
                "max_param_diff": max(
                    float(np.max(np.abs(a - b))) for a, b in zip(params, base_params, strict=True)
                ),
                "max_loss_diff": float(np.max(np.abs(outcome.losses - base.losses))),
                "steps": int(outcome.state.step),
                "status": outcome.status,
                "data": [describe(x) for x in placed.density.data],
                "params": {k: describe(v) for k, v in outcome.state.params._asdict().items()},
            }
            seconds[f"{name}_fit"], tic = time.perf_counter() - tic, time.perf_counter()
        mesh = sharding.mesh_of(devices)  # every device on the draws
        params = family.init(key, target, target.initial_point, jnp.eye(target.dim, dtype=jnp.float32))
        mixture = GaussianMixture(2)  # its parameters by hand: its init is a program of its own
        loc = jnp.stack([target.initial_point, target.initial_point + 1.0])
        mixture_params = MixtureParams(jnp.zeros(2), loc, jnp.zeros((2, target.dim, target.dim)))

        def all_draws(params, mixture_params, key):
            return (
                draw_many(family.distribution(params), key, DRAWS),
                mixture.stratified_draws(mixture_params, key, DRAWS)[0],
                draw_many(family.distribution(params), key, DRAWS + 2),  # not divisible by 4
            )

        with sharding.active(mesh):
            split = jax.jit(all_draws)(params, mixture_params, key)
        unsplit = jax.jit(all_draws)(params, mixture_params, key)
        report["draws"]["q_draws"] = describe(split[0])
        report["draws"]["mixture_draws"] = describe(split[1])
        report["draws"]["odd_draws"] = describe(split[2])
        report["draws"]["draws_equal_unsplit"] = [
            bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(split, unsplit, strict=True)
        ]
        uneven = dataclasses.replace(
            target, density=dataclasses.replace(target.density, data=(X[:-1], y[:-1]))
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            placed = sharding.place_target(uneven, sharding.mesh_of(devices, data_shards=len(devices)))
        report["uneven_rows"] = {
            "data": [describe(x) for x in placed.density.data],
            "warnings": [str(w.message) for w in caught],
        }
        report["mesh_for"] = {
            "logistic": dict(sharding.mesh_for("all", target, DRAWS).shape),
            "few_rows": dict(sharding.mesh_for("all", target, ROWS * 2).shape),
        }

        # vt.fit's own option: the same seed's fit with devices="all" and on one device
        import vitools as vt

        options = dict(num_steps=STEPS, seed=0, converge=False, progress=False)
        one = vt.fit(logistic_regression, X, y=y, **options)
        everywhere = vt.fit(logistic_regression, X, y=y, devices="all", **options)
        report["vt_fit"] = {
            "max_param_diff": max_diff(one.params, everywhere.params),
            "steps": [one.num_steps, everywhere.num_steps],
            "draws_shape": list(everywhere.sample(8, seed=1)["beta"].shape),
            "layout": everywhere.layout,
            "one_device_layout": one.layout,
            # the fit's arrays come back to one device (sharding.gather), where the diagnostics run
            "params_devices": sorted({len(x.devices()) for x in jax.tree.leaves(everywhere.params)}),
            "max_log_weight_diff": max_diff(
                *(f.sample_with_log_densities(200, seed=1)[1:] for f in (one, everywhere))
            ),
        }
        # a Mesh as users make it: jax.make_mesh, whose axes are Explicit by default (JAX 0.12.1),
        # with progress on (its first line says what was split)
        user_mesh = jax.make_mesh((2, 2), (sharding.DRAWS, sharding.DATA))
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            made = vt.fit(logistic_regression, X, y=y, devices=user_mesh, **{**options, "progress": True})
        report["make_mesh"] = {
            "axis_types": [str(t) for t in user_mesh.axis_types],
            "used_axis_types": [str(t) for t in sharding.mesh_of(user_mesh).axis_types],
            "max_param_diff": max_diff(one.params, made.params),
            "steps": made.num_steps,
            "layout": made.layout,
            "printed": [line for line in printed.getvalue().splitlines() if line.startswith("vitools:")],
        }
        with sharding.active(sharding.mesh_of(jax.make_mesh((4,), (sharding.DRAWS,)))):
            report["make_mesh"]["q_draws"] = describe(jax.jit(all_draws)(params, mixture_params, key)[0])
        # devices="all" with rows that outnumber the draws but do not split evenly: the draws are
        # split, with the warning a Mesh of one's own splitting the rows gets
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            uneven_mesh = sharding.mesh_for("all", uneven, DRAWS)
        report["uneven_rows"]["all"] = {
            "mesh": dict(uneven_mesh.shape),
            "layout": sharding.layout(uneven_mesh, uneven, DRAWS),
            "warnings": [str(w.message) for w in caught],
            "warned_at": [os.path.basename(w.filename) for w in caught],
        }

    seconds["draws_checks"], tic = time.perf_counter() - tic, time.perf_counter()

    # one device's program: no constraint traced (the same jaxpr as before vitools.sharding)
    params = family.init(key, target, target.initial_point, jnp.eye(target.dim, dtype=jnp.float32))
    jaxpr = str(jax.make_jaxpr(lambda p, k: draw_many(family.distribution(p), k, DRAWS))(params, key))
    report["unsplit"]["constraint_in_jaxpr"] = "sharding_constraint" in jaxpr
    report["one_device_mesh"] = sharding.mesh_of(devices[:1]) is None

    # host syncs and float64 in the compiled loop (the unsplit program; the split ones are the same
    # program partitioned by XLA, which adds collectives, never host transfers)
    state = engine.init_state(key, params, optimizer, 0.05, target.model_params)
    total = jnp.asarray(STEPS, jnp.int32)
    executable, _ = engine.compiled_chunks(
        state,
        total,
        objective,
        family,
        target,
        optimizer,
        CHUNK,
        engine.MAX_CHUNKS_PER_CALL,
        unsplit_programs,
    )  # the unsplit fit's program, compiled once
    hlo = executable.as_text()
    count = jax.device_put(np.int32(2))
    with jax.transfer_guard("disallow"):
        new_state, (losses, _) = executable(state, total, count, objective, family, target)
        jax.block_until_ready(new_state)
    report["host"] = {
        "ran_under_transfer_guard": True,
        "host_ops_in_hlo": sorted(set(re.findall(r"(callback|outfeed|infeed|is_host_transfer)", hlo))),
        "f64_in_hlo": bool(re.search(r"\bf64\[", hlo)),
        "steps": int(new_state.step),
    }
    report["dtypes"] = {
        "params": sorted({str(x.dtype) for x in jax.tree.leaves(new_state.params)}),
        "opt_state_floats": sorted(
            {
                str(x.dtype)
                for x in jax.tree.leaves(new_state.opt_state)
                if jnp.issubdtype(x.dtype, jnp.floating)
            }
        ),
        "losses": str(losses.dtype),
        "draws": str(draw_many(family.distribution(new_state.params), key, DRAWS).dtype),
        "target_initial_point": str(target.initial_point.dtype),
    }
    seconds["host_checks"] = time.perf_counter() - tic
    # a subsampled fit with its control variate's snapshot (placed like the rest of the target)
    import vitools as vt

    X, y = data(ROWS, FEATURES)
    options = dict(num_steps=STEPS, seed=0, progress=False)
    split_sub = vt.fit(subsampled_logistic_regression, X, y=y, devices="all", **options)
    one_sub = vt.fit(subsampled_logistic_regression, X, y=y, **options)
    report["subsampled"] = {
        "layout": str(split_sub.layout),
        "max_param_diff": max_diff(split_sub.params, one_sub.params),
        "steps": [split_sub.num_steps, one_sub.num_steps],
        "init_grad_evals": [split_sub.init_grad_evals, one_sub.init_grad_evals],
    }
    report["float64_warnings"] = [w for w in float64_warnings if "float64" in w]
    return report


if __name__ == "__main__":
    print(json.dumps(main()), file=sys.stdout, flush=True)
