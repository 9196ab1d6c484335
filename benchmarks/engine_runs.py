"""The measurements of ``bench_engine`` (and the model and data ``bench_scaling`` shares): the
contenders of one configuration timed in this process, the memory peak and a user's first call
each in a fresh subprocess (``bench_engine.py --memory-child`` / ``--process-child``).

What is timed and why is in ``bench_engine``'s docstring; ``engine_report`` writes the report.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import tqdm
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

import vitools as vt
from vitools.cache import enable_compilation_cache
from vitools.laplace import initial_gaussian

CLI = Path(__file__).with_name("bench_engine.py")  # the subprocesses run its child modes

# (rows, features, steps): steps keep one fit at about a second or two on a laptop core
GRID = ((10, 5, 2000), (100, 5, 2000), (10_000, 50, 1000), (100_000, 50, 200), (1_000, 500, 300))
QUICK_GRID = ((100, 5, 1000), (10_000, 50, 500))
DRAWS = 16  # vitools' ReverseKL default
LEARNING_RATE = 0.01
FAMILIES = {"meanfield": AutoDiagonalNormal, "fullrank": AutoMultivariateNormal}


def logistic_regression(X, y=None):
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("rows", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X @ beta), obs=y)


def make_data(num_rows: int, num_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(num_rows, num_features))
    beta = rng.normal(scale=0.5, size=num_features) / np.sqrt(num_features / 5)
    y = rng.random(num_rows) < 1 / (1 + np.exp(-(0.3 + X @ beta)))
    return jnp.asarray(X), jnp.asarray(y.astype(np.float64))


def timed(fn, repeats: int) -> float:
    """Best (minimum) wall time of ``fn()`` over ``repeats`` calls (its result blocked on)."""
    return min(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def bare_loop(target, family, steps, draws, learning_rate):
    """The compute limit: the same ELBO gradient, the same optimizer, nothing else."""
    optimizer = optax.adam(learning_rate)

    def loss(params, key):
        q = family.distribution(params)
        z = jax.vmap(q.rsample)(jax.random.split(key, draws))
        q_sg = family.distribution(jax.lax.stop_gradient(params))
        return -jnp.mean(jax.vmap(target.log_density)(z) - jax.vmap(q_sg.log_prob)(z))

    def step(carry, key):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    @jax.jit
    def run(params, key):
        return jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))

    params = family.init(jax.random.PRNGKey(0), target, target.initial_point, 0.1 * jnp.eye(target.dim))
    return lambda: run(params, jax.random.PRNGKey(0))[1]


def family_object(name: str):
    return {"meanfield": vt.MeanField(), "fullrank": vt.FullRank()}[name]


def svi_runner(family: str, X, y, steps: int, progress_bar: bool):
    guide = FAMILIES[family](logistic_regression)
    svi = SVI(logistic_regression, guide, optax.adam(LEARNING_RATE), Trace_ELBO(DRAWS))

    def run(num_steps=steps):
        return svi.run(jax.random.PRNGKey(0), num_steps, X, y=y, progress_bar=progress_bar).losses

    return run


def svi_loop(family: str, X, y, steps: int, progress_bar: bool):
    """``SVI.run``'s own loop (numpyro 0.22, ``svi.py``), compiled beforehand: its cost per step
    without the tracing, initialisation and compilation that each ``SVI.run`` call repeats."""
    guide = FAMILIES[family](logistic_regression)
    svi = SVI(logistic_regression, guide, optax.adam(LEARNING_RATE), Trace_ELBO(DRAWS))
    state = svi.init(jax.random.PRNGKey(0), X, y=y)

    def body_fn(svi_state, _):
        return svi.update(svi_state, X, y=y)

    if not progress_bar:
        compiled = jax.jit(lambda s: jax.lax.scan(body_fn, s, None, length=steps)).lower(state).compile()
        return lambda: compiled(state)[1]
    jitted_body_fn = jax.jit(body_fn)
    jax.block_until_ready(jitted_body_fn(state, None))

    def run():
        svi_state, losses = state, []
        with tqdm.trange(1, steps + 1) as t:
            batch = max(steps // 20, 1)
            for i in t:
                svi_state, loss = jitted_body_fn(svi_state, None)
                losses.append(loss)
                if i % batch == 0:
                    losses[i - batch :] = jax.device_get(losses[i - batch :])
                    avg_loss = sum(losses[i - batch :]) / batch
                    t.set_postfix_str(f"init loss: {losses[0]:.4f}, avg. loss: {avg_loss:.4f}", refresh=False)
        return jnp.stack(losses)

    return run


def vt_runner(family: str, X, y, steps: int, init: str):
    def run():
        return vt.fit(
            logistic_regression,
            X,
            y=y,
            objective=vt.ReverseKL(DRAWS),
            family=family,
            num_steps=steps,
            init=init,
            progress=False,
            on_nonfinite="warn",
        )

    return run


def measure(rows: int, features: int, steps: int, family: str, repeats: int) -> dict:
    """Every timing of one configuration, in this process.

    Cold calls first (``SVI.run`` is cold on every call); then every warm contender once per round,
    round-robin over ``repeats`` rounds, so that load from other processes hits them alike; the
    best (minimum) time of each is kept.
    """
    X, y = make_data(rows, features)
    out: dict = {"rows": rows, "params": features + 1, "family": family, "steps": steps, "draws": DRAWS}
    for label, bar in (("svi_bar", True), ("svi_nobar", False)):
        out[f"{label}_s"] = timed(svi_runner(family, X, y, steps, bar), min(3, repeats))
    median = vt_runner(family, X, y, steps, "median")
    start = time.perf_counter()
    out["vt_compile_s"] = median().compile_time
    out["vt_cold_s"] = time.perf_counter() - start
    target = vt.Target.from_model(logistic_regression, X, y=y)

    def init_only():
        return initial_gaussian(target, jax.random.PRNGKey(0), "laplace")

    out["laplace_first_s"] = _once(init_only)  # compilation + one run
    laplace = vt_runner(family, X, y, steps, "laplace")
    start = time.perf_counter()
    laplace()  # its loop runs in the frame of the Laplace start (a target of another shape): compiled once
    out["vt_cold_laplace_s"] = time.perf_counter() - start
    bare = bare_loop(target, family_object(family), steps, DRAWS, LEARNING_RATE)
    out["bare_compile_s"] = _once(bare)
    svi_bar_loop = svi_loop(family, X, y, steps, True)
    svi_nobar_loop = svi_loop(family, X, y, steps, False)
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        fit = median()
        times.setdefault("vt_warm_s", []).append(time.perf_counter() - start)
        times.setdefault("vt_loop_s", []).append(fit.elapsed)
        times.setdefault("bare_s", []).append(_once(bare))
        times.setdefault("vt_warm_laplace_s", []).append(_once(lambda: laplace().losses))
        times.setdefault("laplace_init_s", []).append(_once(init_only))
        times.setdefault("svi_bar_loop_s", []).append(_once(svi_bar_loop))
        times.setdefault("svi_nobar_loop_s", []).append(_once(svi_nobar_loop))
    out |= {key: min(values) for key, values in times.items()}
    for label in ("svi_bar", "svi_nobar"):
        out[f"{label}_step_ms"] = out[f"{label}_loop_s"] / steps * 1e3
        out[f"{label}_fixed_s"] = out[f"{label}_s"] - out[f"{label}_loop_s"]
    out["vt_step_ms"] = out["vt_loop_s"] / steps * 1e3
    out["bare_step_ms"] = out["bare_s"] / steps * 1e3
    out["laplace_extra_s"] = out["vt_warm_laplace_s"] - out["vt_warm_s"]
    out["svi_bar_over_vt_warm"] = out["svi_bar_s"] / out["vt_warm_s"]
    out["svi_bar_over_vt_cold"] = out["svi_bar_s"] / out["vt_cold_s"]
    out["svi_bar_over_vt_laplace"] = out["svi_bar_s"] / out["vt_warm_laplace_s"]
    out["svi_nobar_over_vt_warm"] = out["svi_nobar_s"] / out["vt_warm_s"]
    out["vt_loop_over_bare"] = out["vt_loop_s"] / out["bare_s"]
    return out


# --------------------------------------------------------------------------------------------
# Memory: one cold fit per fresh subprocess
def _rss_kib() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, KiB (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0])
    return values


def memory_child(rows: int, features: int, steps: int, family: str, method: str) -> dict:
    X, y = make_data(rows, features)
    target = vt.Target.from_model(logistic_regression, X, y=y)
    jax.block_until_ready(target.log_density(target.initial_point))
    try:  # reset the peak to the current RSS, so the peak below is this fit's alone
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        baseline, how = _rss_kib()["VmRSS"], "VmHWM after clear_refs"
    except OSError:
        baseline, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    if method == "svi_bar":
        jax.block_until_ready(svi_runner(family, X, y, steps, True)())
    elif method == "vt":
        vt_runner(family, X, y, steps, "median")()
    elif method == "vt_laplace":
        vt_runner(family, X, y, steps, "laplace")()
    elif method == "bare":
        jax.block_until_ready(bare_loop(target, family_object(family), steps, DRAWS, LEARNING_RATE)())
    else:
        raise ValueError(method)
    if how == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        peak = _rss_kib()["VmHWM"]
    return {"baseline_kib": baseline, "peak_kib": peak, "how": how}


def memory(rows: int, features: int, steps: int, family: str, method: str) -> float:
    """Extra peak RSS (MiB) of one cold fit, from a fresh subprocess."""
    data = _child("--memory-child", f"{rows},{features},{steps},{family},{method}")
    return (data["peak_kib"] - data["baseline_kib"]) / 1024 if data else float("nan")


# --------------------------------------------------------------------------------------------
# A user's first call in a new process, with and without JAX's persistent compilation cache
def process_child(rows: int, features: int, steps: int, family: str, method: str, cache: str) -> dict:
    """Seconds of one call in this fresh process: ``SVI.run`` with its bar, or the default
    ``vt.fit`` (Laplace init, tracing the model included). With ``cache`` a directory, JAX's
    persistent compilation cache is on for both (``vt.enable_compilation_cache``)."""
    if cache != "none":
        enable_compilation_cache(cache)
    X, y = make_data(rows, features)
    jax.block_until_ready(jnp.sum(X))  # the backend is up before the clock starts
    if method == "svi_bar":
        return {"seconds": _once(svi_runner(family, X, y, steps, True))}
    return {"seconds": _once(lambda: vt_runner(family, X, y, steps, "laplace")().losses)}


def _child(flag: str, spec: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(CLI), flag, spec], capture_output=True, text=True, check=False
    )
    for line in result.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    print(result.stderr[-2000:], file=sys.stderr)
    return {}


def new_process(rows: int, features: int, steps: int, family: str) -> dict:
    """First-call seconds in a fresh process for SVI.run (bar) and the default vt.fit: without a
    disk cache, and with a warm one (a first process filled it; the second is timed)."""
    out = {}
    for method in ("svi_bar", "vt_default"):
        spec = f"{rows},{features},{steps},{family},{method}"
        out[f"proc_{method}_s"] = _child("--process-child", f"{spec},none").get("seconds", np.nan)
        with tempfile.TemporaryDirectory(prefix="vitools-bench-cache-") as cache:
            _child("--process-child", f"{spec},{cache}")
            out[f"proc_cached_{method}_s"] = _child("--process-child", f"{spec},{cache}").get(
                "seconds", np.nan
            )
    out["proc_svi_over_vt"] = out["proc_svi_bar_s"] / out["proc_vt_default_s"]
    out["proc_cached_svi_over_vt"] = out["proc_cached_svi_bar_s"] / out["proc_cached_vt_default_s"]
    return out
