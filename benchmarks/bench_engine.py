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

Run: ``.venv/bin/python benchmarks/bench_engine.py [--quick] [--repeats 5]``
"""

from __future__ import annotations

import argparse
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
import pandas as pd
import tqdm
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, cpu_model, format_load, load_note, markdown_table, now, versions  # noqa: E402

import vitools as vt  # noqa: E402
from vitools.cache import enable_compilation_cache  # noqa: E402
from vitools.laplace import initial_gaussian  # noqa: E402

# (rows, features, steps): steps keep one fit at about a second or two on a laptop core
GRID = ((10, 5, 2000), (100, 5, 2000), (10_000, 50, 1000), (100_000, 50, 200), (1_000, 500, 300))
QUICK_GRID = ((100, 5, 1000), (10_000, 50, 500))
DRAWS = 16  # vitools' ReverseKL default
LEARNING_RATE = 0.01
FAMILIES = {"meanfield": AutoDiagonalNormal, "fullrank": AutoMultivariateNormal}
TARGET_SVI_RATIO = 2.0  # issue 4: vitools >= 2x faster per fit than SVI.run with its progress bar
TARGET_BARE_RATIO = 1.3  # issue 4: vitools' loop within 1.3x of the bare compiled loop


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
        [sys.executable, __file__, flag, spec], capture_output=True, text=True, check=False
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


# --------------------------------------------------------------------------------------------
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
    memory_table = markdown_table(
        ["rows", "params", "SVI.run bar (MiB)", "vt.fit median (MiB)", "vt.fit laplace (MiB)", "bare (MiB)"],
        [[r.rows, r.params, r.mem_svi_bar, r.mem_vt, r.mem_vt_laplace, r.mem_bare] for r in mem.itertuples()],
    )
    proc = df[df["family"] == "fullrank"]
    process_table = markdown_table(
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
