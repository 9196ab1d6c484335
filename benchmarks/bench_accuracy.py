r"""Accuracy per compute on the model zoo: vitools (objective x family) vs NumPyro SVI and NUTS.

For every zoo model (``vitools.models``):

- **vitools**: ``vt.fit`` with its defaults (seed 0, progress off) for each objective
  (``reverse_kl``: 16 draws/step, ``forward_kl``: its default, max(64, 2 dim)) x family (``meanfield``,
  ``fullrank``, ``lowrank`` of rank 5, skipped where dim <= 5, ``iaf``, the normalizing flow, on models
  with dim <= ``IAF_MAX_DIM``), at ``BUDGETS`` steps (2000 is
  the default). Wall time is split into the compiled loop (``fit.elapsed``), compilation of the
  loop (``fit.compile_time``, first call of a configuration only) and the rest (tracing the
  model and the default Laplace-path initialisation, with its own compilation on the model's
  first fit).
- **NumPyro SVI**: ``AutoNormal`` (~ meanfield) and ``AutoMultivariateNormal`` (~ fullrank) with
  ``Trace_ELBO(num_particles=16)`` (vectorized) and ``optax.adam(lr)`` at constant rate, the same
  number of steps as vitools, hence the same number of gradient evaluations as vitools' reverse
  KL (16 x steps). NumPyro's defaults otherwise (``init_to_uniform``, init scale 0.1). The loop
  is ``svi.update`` under one compiled ``lax.scan`` of 250 steps, run until each budget; with
  a constant learning rate the state after k steps is that of a k-step ``SVI.run``.
- **NUTS** at equal wall time: one chain whose warm-up + draws take, compilation included,
  about as long as the default ``vt.fit`` call on the same model (compilation included).

Accuracy against the zoo reference with :func:`vitools.compare.compare` on 2000 draws of each q:
``w1`` (mean 1-D W1 of reference-standardized marginals), ``mean_error`` (standardized),
``sd_ratio``, PSIS ``khat`` and its verdict. ``w1_psis`` is W1 of the same kind for the draws
reweighted by their Pareto-smoothed importance weights: what k̂ vouches for.

Outputs ``benchmarks/results/accuracy.{md,csv}`` and ``accuracy_vs_evals.png``.

Run: ``.venv/bin/python benchmarks/bench_accuracy.py [--quick] [--models a,b]``
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.stats
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    cpu_model,
    format_load,
    load_note,
    markdown_table,
    now,
    versions,
)

import vitools as vt  # noqa: E402
from vitools.compare import compare, reference_draws  # noqa: E402
from vitools.diagnostics import khat_threshold, psis_khat  # noqa: E402
from vitools.models import get_model, list_models  # noqa: E402

DEFAULT_STEPS = 2000  # vt.fit's default num_steps
BUDGETS = (250, 1000, 2000, 4000)
QUICK_BUDGETS = (250, 2000)
QUICK_MODELS = ("banana", "eight_schools_noncentered", "logistic_regression")
OBJECTIVES = ("reverse_kl", "forward_kl")
FAMILIES = ("meanfield", "fullrank", "lowrank", "iaf")
# IAF's log q at a given point (forward KL's draws) inverts each layer in d sequential network
# passes: at d = 103 (stochastic_volatility) a forward-KL fit ran past 15 minutes (measured), so
# the flow is benchmarked on the models up to this dimension (all but gaussian_100 and
# stochastic_volatility).
IAF_MAX_DIM = 30
DEFAULT_CONFIG = ("reverse_kl", "fullrank")
NUM_DRAWS = 2000  # draws of each q for the distances and k-hat
NOISE_SEEDS = 3  # at the default budget, w1 is averaged over this many sets of draws (and its noise)
# The fits the targets compare (vitools' reverse KL fullrank and meanfield, every SVI row) are
# repeated at the default budget with this many fit seeds: on the close calls (funnel, gp_poisson)
# the spread between seeds exceeds the noise of one fit's draws. w1 is then the mean over seeds
# and w1_se its standard error over seeds (draw noise included).
FIT_SEEDS = 3
SEEDED_CONFIGS = ("reverse_kl/fullrank", "reverse_kl/meanfield")
SVI_PARTICLES = 16  # = ReverseKL's default draws per step
SVI_CHUNK = 250
SVI_LEARNING_RATES = (0.01, 0.1)
SVI_GUIDES = {"meanfield": AutoNormal, "fullrank": AutoMultivariateNormal}
NUTS_MIN, NUTS_MAX = 100, 20_000  # warm-up = draws, per chain
FAILURE_W1 = 0.25  # issue 4: a fit with mean W1/sd above this is a failure


# --------------------------------------------------------------------------------------------
# A Gaussian q over the model's flat unconstrained space that ``compare`` can read (FitLike)
@dataclasses.dataclass(frozen=True)
class GaussianFit:
    """q = N(loc, scale_tril scale_trilᵀ) over ``target``'s flat unconstrained space: how SVI's
    AutoNormal/AutoMultivariateNormal results are scored exactly like vitools fits."""

    name: str
    objective: str
    family: str
    target: vt.Target
    loc: jax.Array
    scale_tril: jax.Array
    num_steps: int
    num_grad_evals: int
    elapsed: float
    compile_time: float
    status: str
    seed: int = 0

    def sample_with_log_densities(self, num_draws: int, seed: int = 0):
        eps = jax.random.normal(jax.random.PRNGKey(seed), (num_draws, self.target.dim))
        draws, log_p, log_q = _gaussian_densities(self.target, self.loc, self.scale_tril, eps)
        return jax.device_get(draws), np.asarray(log_p), np.asarray(log_q)


@jax.jit
def _gaussian_densities(target, loc, scale_tril, eps):
    q = jax.scipy.stats.norm.logpdf(eps).sum(-1) - jnp.log(jnp.abs(jnp.diagonal(scale_tril))).sum()
    flat = loc + eps @ scale_tril.T

    def one(u):
        log_jac = target.log_abs_det_jacobian(u)
        return target.constrain(u, deterministic=True), target.log_density(u) - log_jac, log_jac

    draws, log_p, log_jac = jax.vmap(one)(flat)
    return draws, log_p, q - log_jac


def guide_gaussian(guide, params: dict, target: vt.Target) -> tuple[jax.Array, jax.Array]:
    """(loc, scale_tril) of an AutoNormal/AutoMultivariateNormal in the target's flat layout.

    Both guides live in NumPyro's unconstrained space (``biject_to(support)``), the same as
    ``Target``'s; only the order of the flat vector differs for AutoMultivariateNormal.
    """
    if isinstance(guide, AutoNormal):
        loc = jnp.concatenate([jnp.ravel(params[f"{s.name}_auto_loc"]) for s in target.sites])
        scale = jnp.concatenate([jnp.ravel(params[f"{s.name}_auto_scale"]) for s in target.sites])
        return loc, jnp.diag(scale)
    index = guide._unpack_latent(jnp.arange(target.dim, dtype=jnp.float32))
    perm = np.rint(np.concatenate([np.ravel(index[s.name]) for s in target.sites])).astype(int)
    tril = params["auto_scale_tril"]
    cov = (tril @ tril.T)[perm][:, perm]
    return params["auto_loc"][perm], jnp.linalg.cholesky(cov)


# --------------------------------------------------------------------------------------------
# Runs
def fit_vitools(zoo, objective: str, family: str, steps: int, seed: int = 0) -> tuple[Any, dict]:
    """One default ``vt.fit``; returns (fit or None, timing and status)."""
    caught: list[str] = []
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fit = vt.fit(
                zoo.model,
                *zoo.args,
                objective=objective,
                family=family,
                num_steps=steps,
                seed=seed,
                progress=False,
                on_nonfinite="warn",
                **zoo.kwargs,
            )
        caught = sorted({_short_warning(w) for w in record if _short_warning(w)})
    except Exception as err:  # a failing configuration is a result, not a crash
        return None, {"wall_s": time.perf_counter() - start, "status": f"error: {type(err).__name__}: {err}"}
    wall = time.perf_counter() - start
    return fit, {
        "wall_s": wall,
        "elapsed_s": fit.elapsed,
        "compile_s": fit.compile_time,
        "init_s": wall - fit.elapsed - fit.compile_time,
        "steps": fit.num_steps,
        "grad_evals": fit.num_grad_evals,
        "status": fit.status,
        "warnings": "; ".join(caught),
    }


def _short_warning(record) -> str:
    text = str(record.message)
    if "ESS" in text:
        return "forward-KL ESS collapsed"
    if "non-finite" in text:
        return "non-finite loss"
    return ""


@dataclasses.dataclass(frozen=True)
class SVISetup:
    """One NumPyro SVI (autoguide, optimizer, loss) and its compiled ``SVI_CHUNK``-step loop.

    The states of other seeds have the same shapes, so the extra fit seeds reuse the compiled
    loop instead of compiling it again; ``compile_s`` (tracing, init and compilation) is what each
    ``SVI.run`` call pays, and is reported as part of every seed's wall time."""

    guide: Any
    svi: Any
    compiled: Any
    compile_s: float

    @classmethod
    def build(cls, zoo, family: str, learning_rate: float) -> SVISetup:
        guide = SVI_GUIDES[family](zoo.model)
        svi = SVI(zoo.model, guide, optax.adam(learning_rate), Trace_ELBO(num_particles=SVI_PARTICLES))
        args, kwargs = zoo.args, zoo.kwargs
        start = time.perf_counter()
        state = svi.init(jax.random.PRNGKey(0), *args, **kwargs)

        def chunk(state):
            return jax.lax.scan(lambda s, _: svi.update(s, *args, **kwargs), state, None, length=SVI_CHUNK)

        compiled = jax.jit(chunk).lower(state).compile()
        return cls(guide, svi, compiled, time.perf_counter() - start)


def run_svi(
    zoo, target: vt.Target, setup: SVISetup, family: str, learning_rate: float, budgets, seed: int = 0
) -> list[tuple[Any, dict]]:
    """NumPyro SVI with the family's autoguide from ``seed``, scored at each budget (steps)."""
    guide, svi, compiled, compile_s = setup.guide, setup.svi, setup.compiled, setup.compile_s
    # Each seed starts from a fresh guide, as a user's script with that seed would: an autoguide
    # draws its initial point on its first init and keeps it, so the setup's guide would start
    # every seed from seed 0's point (checked: the same auto_loc). The compiled loop takes any
    # state of these shapes.
    fresh = SVI(zoo.model, SVI_GUIDES[family](zoo.model), svi.optim, svi.loss)
    state = fresh.init(jax.random.PRNGKey(seed), *zoo.args, **zoo.kwargs)
    out, done, elapsed, finite = [], 0, 0.0, True
    for budget in sorted(budgets):
        while done < budget and finite:
            tick = time.perf_counter()
            state, losses = compiled(state)
            losses = jax.device_get(losses)
            elapsed += time.perf_counter() - tick
            done += SVI_CHUNK
            finite = bool(np.isfinite(losses).all())
        label = f"SVI {guide.__class__.__name__} lr={learning_rate:g}"
        info = {
            "wall_s": elapsed + compile_s,
            "elapsed_s": elapsed,
            "compile_s": compile_s,
            "init_s": 0.0,
            "steps": budget,
            "grad_evals": budget * SVI_PARTICLES,
            "status": "completed" if finite else "nonfinite",
        }
        if not finite:
            out.append((None, info))
            continue
        loc, tril = guide_gaussian(guide, svi.get_params(state), target)
        fit = GaussianFit(
            label, f"svi_lr{learning_rate:g}", family, target, loc, tril, budget, budget * SVI_PARTICLES,
            elapsed, compile_s, info["status"],
        )  # fmt: skip
        out.append((fit, info))
    return out


def run_nuts(zoo, budget_s: float) -> tuple[MCMC, dict]:
    """One NUTS chain whose wall time, compilation included, is about ``budget_s``.

    Pilots: a cold run of 100 + 100 iterations (compiles), the same again warm, and 400 + 400
    warm; they give the compile time and the cost per iteration. Then warm-up = draws = n with
    compile + overhead + 2 n x cost = budget (100 <= n <= 20000), corrected from each run's
    own time (up to 3 runs) until within 25% of the budget."""

    def run(num, seed=0):
        mcmc = MCMC(NUTS(zoo.model), num_warmup=num, num_samples=num, num_chains=1, progress_bar=False)
        tick = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), *zoo.args, extra_fields=("num_steps",), **zoo.kwargs)
        jax.block_until_ready(mcmc.get_samples())
        return mcmc, time.perf_counter() - tick

    _, cold = run(100)
    _, warm_small = run(100)
    _, warm_large = run(400)
    per_iter = max((warm_large - warm_small) / 600, 1e-6)
    overhead = max(warm_small - 200 * per_iter, 0.0)
    compile_s = max(cold - warm_small, 0.0)
    num = _nuts_size((budget_s - compile_s - overhead) / (2 * per_iter))
    for _ in range(3):  # the pilots' cost per iteration is rough: correct it from the run itself
        mcmc, wall = run(num, seed=1)
        total = wall + compile_s
        if abs(total / budget_s - 1) < 0.25 or num in (NUTS_MIN, NUTS_MAX) and total < budget_s:
            break
        per_iter = max((wall - overhead) / (2 * num), 1e-6)
        resized = _nuts_size((budget_s - compile_s - overhead) / (2 * per_iter))
        if resized == num:
            break
        num = resized
    steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    return mcmc, {
        "wall_s": wall + compile_s,
        "elapsed_s": wall,
        "compile_s": compile_s,
        "init_s": 0.0,
        "steps": 2 * num,
        "grad_evals": steps,  # leapfrog steps of the kept draws (warm-up not recorded)
        "status": f"{num} warm-up + {num} draws" + (" (cap)" if num == NUTS_MAX else ""),
    }


def _nuts_size(num: float) -> int:
    return int(max(NUTS_MIN, min(NUTS_MAX, num)))


# --------------------------------------------------------------------------------------------
# Scoring
def score(obj: Any, name: str, ref_draws: dict, seeds: int = 1) -> dict:
    """compare()'s columns for one fit, plus ``w1_psis`` for fits with importance weights.

    With ``seeds`` > 1 the reference distances (``mean_error``, ``sd_ratio``, ``w1``) are averaged
    over that many independent sets of draws of q and ``w1_se`` is their standard error (the
    Monte Carlo noise of w1); k̂ and the other diagnostics come from the first set.
    """
    if obj is None:
        return {}
    rows = []
    for seed in range(1, seeds + 1):
        try:
            table = compare({name: obj}, reference=ref_draws, num_draws=NUM_DRAWS, seed=seed)
        except Exception as err:
            return {"verdict": f"compare failed: {type(err).__name__}: {err}"[:120]}
        rows.append(table.iloc[0].to_dict())
    keys = ("khat", "verdict", "ess", "log_evidence", "elbo")
    out = {k: rows[0].get(k) for k in keys}
    for key in ("mean_error", "sd_ratio", "w1"):
        out[key] = float(np.mean([r[key] for r in rows]))
    w1s = [r["w1"] for r in rows]
    out["w1_se"] = float(np.std(w1s, ddof=1) / np.sqrt(len(w1s))) if len(w1s) > 1 else math.nan
    if hasattr(obj, "sample_with_log_densities"):
        out["w1_psis"] = psis_w1(obj, ref_draws)
    return out


def over_fit_seeds(first: dict, others: list[dict]) -> dict:
    """Reference distances averaged over fit seeds: ``first`` (seed 0, itself averaged over
    NOISE_SEEDS sets of draws) and ``others`` (seeds 1.., one set each; {} for a failed fit,
    which makes the mean NaN: a configuration that fails at some seed does not pass)."""
    out = {f"{key}_seed0": first.get(key) for key in ("w1", "sd_ratio", "mean_error")}
    out["fit_seeds"] = 1 + len(others)
    for key in ("mean_error", "sd_ratio", "w1"):
        values = [first.get(key, math.nan)] + [o.get(key, math.nan) for o in others]
        out[key] = float(np.mean(values))
        if key == "w1":
            out["w1_se"] = float(np.std(values, ddof=1) / np.sqrt(len(values)))
    return out


def psis_w1(fit: Any, ref_draws: dict) -> float:
    """Mean standardized 1-D W1 of q's draws reweighted by Pareto-smoothed importance weights."""
    draws, log_p, log_q = fit.sample_with_log_densities(NUM_DRAWS, seed=1)
    try:
        smoothed, _ = psis_khat(np.asarray(log_p - log_q, dtype=float))
    except ValueError:
        return math.nan
    weights = np.exp(smoothed - smoothed.max())
    if not np.all(np.isfinite(weights)):  # a diverged fit (NaN log densities): no PSIS answer
        return math.nan
    labels, values = reference_draws(draws)
    ref_labels, ref = reference_draws(ref_draws)
    index = {label: j for j, label in enumerate(ref_labels)}
    w1s = []
    for i, label in enumerate(labels):
        if label not in index:
            continue
        y = ref[:, index[label]]
        mean, sd = y.mean(), y.std(ddof=1)
        x = values[:, i]
        if sd > 0 and np.isfinite(x).all():
            w1s.append(scipy.stats.wasserstein_distance((x - mean) / sd, (y - mean) / sd, u_weights=weights))
    return float(np.mean(w1s)) if w1s else math.nan


# --------------------------------------------------------------------------------------------
def run_model(name: str, budgets, svi_rates) -> list[dict]:
    zoo = get_model(name)
    ref = zoo.reference()
    rows: list[dict] = []
    base = {"model": name, "dim": None}
    print(f"## {name}: {format_load(load_note())}", flush=True)
    try:
        target = vt.Target.from_model(zoo.model, *zoo.args, **zoo.kwargs)
    except Exception as err:
        rows.append(base | {"method": "vitools", "config": "all", "status": f"error: {err}"})
        return rows
    base["dim"] = target.dim
    rank = vt.LowRank().rank
    configs = [DEFAULT_CONFIG] + [
        (o, f)
        for o in OBJECTIVES
        for f in FAMILIES
        if (o, f) != DEFAULT_CONFIG
        and not (f == "lowrank" and target.dim <= rank)
        and not (f == "iaf" and target.dim > IAF_MAX_DIM)
    ]
    order = [DEFAULT_STEPS] + [b for b in budgets if b != DEFAULT_STEPS]
    default_wall = math.nan
    for objective, family in configs:
        for steps in order:
            fit, info = fit_vitools(zoo, objective, family, steps)
            if (objective, family, steps) == (*DEFAULT_CONFIG, DEFAULT_STEPS):
                default_wall = info["wall_s"]
            row = base | {"method": "vitools", "config": f"{objective}/{family}", "family": family}
            seeds = NOISE_SEEDS if steps == DEFAULT_STEPS else 1
            row |= {"objective": objective, "budget": steps} | info
            row |= score(fit, row["config"], ref.draws, seeds)
            if steps == DEFAULT_STEPS and row["config"] in SEEDED_CONFIGS:
                extra = [fit_vitools(zoo, objective, family, steps, seed)[0] for seed in range(1, FIT_SEEDS)]
                row |= over_fit_seeds(row, [score(f, row["config"], ref.draws) for f in extra])
            rows.append(row)
            _echo(row)
    for family in SVI_GUIDES:
        for rate in svi_rates:
            setup = SVISetup.build(zoo, family, rate)
            for fit, info in run_svi(zoo, target, setup, family, rate, budgets):
                label = f"SVI {SVI_GUIDES[family].__name__} lr={rate:g}"
                row = base | {"method": "svi", "config": label, "family": family, "objective": "svi"}
                seeds = NOISE_SEEDS if info["steps"] == DEFAULT_STEPS else 1
                row |= {"budget": info["steps"]} | info | score(fit, label, ref.draws, seeds)
                if info["steps"] == DEFAULT_STEPS:
                    extra = [
                        run_svi(zoo, target, setup, family, rate, [DEFAULT_STEPS], seed)[0][0]
                        for seed in range(1, FIT_SEEDS)
                    ]
                    row |= over_fit_seeds(row, [score(f, label, ref.draws) for f in extra])
                rows.append(row)
                _echo(row)
    mcmc, info = run_nuts(zoo, default_wall)
    row = base | {"method": "nuts", "config": "NUTS (equal wall time)", "family": "", "objective": "nuts"}
    row |= {"budget": DEFAULT_STEPS} | info | score(mcmc, "NUTS", ref.draws)
    rows.append(row)
    _echo(row)
    return rows


def _echo(row: dict) -> None:
    print(
        f"  {row['config']:<36} steps {row.get('steps', '')!s:>5} evals {row.get('grad_evals', '')!s:>7} "
        f"wall {row.get('wall_s', math.nan):6.2f}s w1 {row.get('w1', math.nan):.3f} "
        f"khat {row.get('khat', math.nan):.2f} {row.get('verdict', '')} {row.get('status', '')}",
        flush=True,
    )


# --------------------------------------------------------------------------------------------
# Reporting
def _seed0(row: pd.Series) -> pd.Series:
    """The row with its seed-0 distances where it was averaged over fit seeds."""
    row = row.copy()
    for key in ("w1", "sd_ratio", "mean_error"):
        seed0 = row.get(f"{key}_seed0")
        if seed0 is not None and pd.notna(seed0):
            row[key] = seed0
    return row


def silent_reason(row: pd.Series, tags: tuple[str, ...]) -> str:
    """Why k̂ did not flag a fit whose draws are far from the reference (w1 > FAILURE_W1)."""
    sd_ratio, mean_error = row["sd_ratio"], row["mean_error"]
    psis = row.get("w1_psis", math.nan)
    after = f"; PSIS-reweighted draws reach w1 = {psis:.2f}" if np.isfinite(psis) else ""
    tag = f" (model: {', '.join(tags)})" if tags else ""
    if sd_ratio > 1.15:
        why = (
            f"q is over-dispersed (sd ratio {sd_ratio:.2f}): it covers p, so the weights p/q stay "
            "bounded and k̂ is low. k̂ judges q as an importance-sampling proposal, not its raw draws"
        )
    elif sd_ratio < 0.85:
        why = (
            f"q is too narrow (sd ratio {sd_ratio:.2f}) yet k̂ is low: the mass q misses lies where "
            f"none of its {NUM_DRAWS} draws land, so no weight reveals it"
        )
    elif mean_error > FAILURE_W1:
        why = f"q's centre is off by {mean_error:.2f} sd while its tails still cover p"
    else:
        why = (
            f"mean and sd are right (error {mean_error:.2f} sd, sd ratio {sd_ratio:.2f}) but the "
            "marginals' shape is not Gaussian (several modes, skew or heavy tails); q covers p, "
            "so k̂ is low"
        )
    mass = row.get("missed_mass", math.nan)
    if np.isfinite(mass):
        seen = "flags it" if mass > 0.1 else "does not flag it either"
        after += f"; compare's missed_mass {mass:.2f} {seen}"
    return why + after + tag


def with_missed_mass(at: pd.DataFrame) -> pd.DataFrame:
    """``compare``'s ``missed_mass`` over all fits of a model at one budget, as if in one table:
    1 - exp(log Z_fit - max log Z), from the importance estimates of the evidence (no reference)."""
    at = at.copy()
    if "log_evidence" not in at:
        at["missed_mass"] = math.nan
        return at
    best = at.groupby("model")["log_evidence"].transform("max")
    at["missed_mass"] = -np.expm1(at["log_evidence"] - best)
    return at


def summarise(df: pd.DataFrame) -> tuple[str, list[str], str, pd.DataFrame]:
    """(summary table, silent failures, default-budget table, summary frame)."""
    at = with_missed_mass(df[df["budget"] == DEFAULT_STEPS])
    lines, silent, verdicts = [], [], []
    for name, group in at.groupby("model", sort=False):
        vit = group[(group["method"] == "vitools") & group["w1"].notna()]
        svi = group[(group["method"] == "svi") & group["w1"].notna()]
        nuts = group[group["method"] == "nuts"]
        default = vit[vit["config"] == "/".join(DEFAULT_CONFIG)]
        best = vit.loc[vit["w1"].idxmin()] if len(vit) else None
        d = default.iloc[0] if len(default) else None
        svi_full = svi[svi["family"] == "fullrank"]
        svi_best = svi_full.loc[svi_full["w1"].idxmin()] if len(svi_full) else None
        svi_mf_rows = svi[svi["family"] == "meanfield"]
        svi_mf = svi_mf_rows.loc[svi_mf_rows["w1"].idxmin()] if len(svi_mf_rows) else None
        vt_mf_rows = vit[vit["config"] == "reverse_kl/meanfield"]
        vt_mf = vt_mf_rows.iloc[0] if len(vt_mf_rows) else None
        svi_any = svi.loc[svi["w1"].idxmin()] if len(svi) else None
        ok, ok_text = at_least_as_good(d, svi_best)
        ok_mf, ok_mf_text = at_least_as_good(vt_mf, svi_mf)
        better, better_text = strictly_better(best, svi_any)
        verdicts.append({"model": name, "default_ok": ok, "meanfield_ok": ok_mf, "best_beats_svi": better})
        lines.append(
            [
                name,
                int(group["dim"].iloc[0]) if pd.notna(group["dim"].iloc[0]) else "",
                _w1_cell(d),
                _svi_cell(group[(group["method"] == "svi") & (group["family"] == "fullrank")]),
                ok_text,
                ok_mf_text,
                f"{best['config']}" if best is not None else "",
                _w1_cell(best),
                better_text,
                _w1_cell(nuts.iloc[0]) if len(nuts) else "",
                f"{nuts.iloc[0]['wall_s']:.1f} s / {nuts.iloc[0]['status']}" if len(nuts) else "",
            ]
        )
        tags = get_model(name).tags
        for _, row in group[group["method"] != "nuts"].iterrows():
            # k̂ is that of the seed-0 fit, so a seeded row is judged on its seed-0 distances.
            row = _seed0(row)
            if row["w1"] > FAILURE_W1 and row["verdict"] in ("good", "ok"):
                silent.append(
                    f"- **{name}**, {row['config']} (w1 {row['w1']:.2f}, "
                    f"k̂ {row['khat']:.2f} {row['verdict']}): " + silent_reason(row, tags)
                )
    header = [
        "model", "dim", "vitools default w1 (k̂)", "SVI AutoMVN w1 (lr 0.01 / 0.1)",
        "default ≥ best SVI AutoMVN? (Δ w1 ± noise)",
        "meanfield: vitools rev. KL ≥ best SVI AutoNormal?", "vitools recommends (best w1)", "its w1 (k̂)",
        "beats every SVI beyond noise?",
        "NUTS equal-time w1", "NUTS wall / draws",
    ]  # fmt: skip
    full_cols = [
        "model", "dim", "config", "steps", "grad_evals", "wall_s", "elapsed_s", "compile_s", "init_s",
        "khat", "verdict", "ess", "elbo", "missed_mass", "mean_error", "sd_ratio", "w1", "w1_se", "fit_seeds",
        "w1_seed0", "w1_psis", "status", "warnings",
    ]  # fmt: skip
    full = at.reindex(columns=full_cols)
    full_rows = [[_cell(v) for v in r] for r in full.itertuples(index=False)]
    return (
        markdown_table(header, lines),
        silent,
        markdown_table(full_cols, full_rows),
        pd.DataFrame(verdicts),
    )


def _difference(a, b) -> tuple[float, float]:
    """w1(a) - w1(b) and the noise allowance: twice the standard error of the difference (each
    w1 a mean over fit seeds, or over NOISE_SEEDS sets of draws for unseeded rows), at least 0.005."""
    se = math.hypot(_finite(a.get("w1_se")), _finite(b.get("w1_se")))
    return float(a["w1"] - b["w1"]), max(2 * se, 0.005)


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


def at_least_as_good(a, b) -> tuple[bool, str]:
    """Is fit row ``a`` at least as accurate as ``b`` (w1 not larger beyond the noise)?"""
    if a is None:
        return False, "no fit"
    if b is None:
        return True, "yes (no SVI fit)"
    diff, tol = _difference(a, b)
    ok = diff <= tol
    return (
        ok,
        f"{'yes' if ok else '**no**'} ({_number(a['w1'])} vs {_number(b['w1'])}, Δ {diff:+.3f} ± {tol:.3f})",
    )


def strictly_better(a, b) -> tuple[bool, str]:
    """Is fit row ``a`` more accurate than ``b`` beyond the noise?"""
    if a is None or b is None:
        return False, ""
    diff, tol = _difference(a, b)
    better = diff < -tol
    return better, f"{'yes' if better else 'no'} (vs {b['config'].removeprefix('SVI ')} {_number(b['w1'])})"


def _svi_cell(svi_rows: pd.DataFrame) -> str:
    """w1 of each SVI learning rate; "diverged" where its loss went non-finite, "failed" where
    scoring failed (e.g. non-finite log densities at q's draws)."""
    cells = []
    for r in svi_rows.sort_values("config").itertuples():
        if pd.notna(r.w1):
            cells.append(_number(r.w1))
        else:
            cells.append("diverged" if r.status == "nonfinite" else "failed")
    return " / ".join(cells)


def _w1_cell(row) -> str:
    if row is None or pd.isna(row.get("w1")):
        return ""
    khat = row.get("khat")
    if khat is None or pd.isna(khat):
        return f"{row['w1']:.3f}"
    return f"{row['w1']:.3f} ({khat:.2f} {row['verdict']})"


def _number(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _cell(v):
    if isinstance(v, float) and np.isnan(v):
        return ""
    if isinstance(v, float):
        if v == 0 or not np.isfinite(v):
            return "0" if v == 0 else str(v)
        return round(v, 3) if abs(v) >= 0.001 else f"{v:.1e}"
    return v


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(df["model"]))
    cols = 4
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colors = {"meanfield": "tab:blue", "fullrank": "tab:red", "lowrank": "tab:green", "iaf": "tab:purple"}
    for ax, name in zip(axes.flat, models, strict=False):
        group = df[(df["model"] == name) & df["w1"].notna()]
        for config, g in group[group["method"] != "nuts"].groupby("config", sort=False):
            g = g.sort_values("grad_evals")
            svi = g["method"].iloc[0] == "svi"
            marker = ("^" if "lr=0.1" in config else "x") if svi else "o"
            ax.plot(
                g["grad_evals"],
                g["w1"],
                marker=marker,
                mfc="none" if marker == "^" else None,
                ms=4,
                lw=1.2,
                color=colors.get(g["family"].iloc[0], "gray"),
                ls=":" if svi else ("-" if g["objective"].iloc[0] == "reverse_kl" else "--"),
                label=config,
            )
        nuts = group[group["method"] == "nuts"]
        if len(nuts):
            ax.plot(nuts["grad_evals"], nuts["w1"], "k*", ms=10, label="NUTS (equal wall time)")
        ax.axhline(FAILURE_W1, color="gray", lw=0.6, ls="-.")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("gradient (density) evaluations", fontsize=8)
        ax.set_ylabel("mean W1 / sd", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2, frameon=False)
    fig.suptitle(
        "Accuracy vs gradient evaluations (solid: reverse KL, dashed: forward KL, dotted: NumPyro SVI; "
        "dash-dot: w1 = 0.25)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"3 models {QUICK_MODELS}, budgets {QUICK_BUDGETS}"
    )
    parser.add_argument("--models", default="", help="comma-separated zoo models (default: all)")
    parser.add_argument("--svi-lr", default=",".join(map(str, SVI_LEARNING_RATES)))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite accuracy.md and the plot from accuracy.csv"
    )
    args = parser.parse_args(argv)
    if args.report_only:  # keeps the header (date, load, versions) of the run that made the CSV
        out = Path(args.out)
        df = pd.read_csv(out / "accuracy.csv")
        header = "\n".join((out / "accuracy.md").read_text().splitlines()[:4]) + "\n"
        budgets = sorted(df.loc[df["method"] == "vitools", "budget"].unique().astype(int))
        rates = sorted({float(c.rsplit("lr=", 1)[1]) for c in df["config"] if "lr=" in c})
        write_report(df, out, header, budgets, rates)
        return 0
    models = args.models.split(",") if args.models else (list(QUICK_MODELS) if args.quick else list_models())
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    svi_rates = tuple(float(x) for x in args.svi_lr.split(","))
    out = Path(args.out)
    load = load_note()
    start = time.perf_counter()
    print(f"# accuracy benchmark, {now()}; {format_load(load)}", flush=True)
    rows = []
    for name in models:
        rows.extend(run_model(name, budgets, svi_rates))
    total = time.perf_counter() - start
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "accuracy.csv", index=False, float_format="%.5g")
    header = f"""# Accuracy per compute on the model zoo

{now()}; {cpu_model()}, {load["nproc"]} cores; {format_load(load)}; total runtime {total / 60:.1f} min.
Versions: {", ".join(f"{k} {v}" for k, v in versions().items())}.
"""
    write_report(df, out, header, budgets, svi_rates)
    print(f"# done in {total / 60:.1f} min -> {out / 'accuracy.md'}", flush=True)
    return 0


def write_report(df: pd.DataFrame, out: Path, header: str, budgets, svi_rates) -> None:
    """accuracy.md, accuracy_verdicts.csv and the plot from the table of all fits."""
    plot(df, out / "accuracy_vs_evals.png")
    summary, silent, full, verdicts = summarise(df)
    rates = ", ".join(f"{r:g}" for r in svi_rates)
    text = f"""{header}
Budgets: {", ".join(map(str, budgets))} steps; the tables below are at vt.fit's default {DEFAULT_STEPS}
steps (reverse KL: 16 draws/step = {16 * DEFAULT_STEPS} gradient evaluations; forward KL: its default
max(64, 2 dim) draws/step, density evaluations without gradients).
**NumPyro SVI: `Trace_ELBO(num_particles={SVI_PARTICLES})` and the same number of steps as vitools**, so
the same {SVI_PARTICLES} x steps gradient evaluations as vitools' reverse KL; `optax.adam(lr)`, lr in
({rates}), at constant rate; NumPyro's default init (`init_to_uniform`, scale 0.1).
vitools families: meanfield, fullrank, lowrank (rank 5, where dim > 5) and iaf (a normalizing flow:
2 IAF layers under a full affine map) on the models with dim <= {IAF_MAX_DIM} (its log q at a given point
inverts d network passes per layer; forward KL at d = 103 ran past 15 minutes).
vitools default = `vt.fit(model)`: reverse KL, fullrank, Laplace-path init, Adam at vitools' default
peak rate (per objective and dimension) with warm-up and cosine decay.
NUTS: one chain, warm-up = draws, sized so that its wall time (compile included) matches the
default `vt.fit` call's (compile and Laplace init included).
Accuracy: `vitools.compare.compare` against the zoo reference, {NUM_DRAWS} draws of q; `w1` = mean
1-D W1 of reference-standardized marginals; k̂ threshold at {NUM_DRAWS} draws =
{khat_threshold(NUM_DRAWS):.2f}. At {DEFAULT_STEPS} steps every w1 is the mean over {NOISE_SEEDS} independent
sets of draws of q. The fits the targets compare (vitools' reverse KL fullrank and meanfield, and
every SVI configuration) are repeated with {FIT_SEEDS} fit seeds (init and optimisation noise): their w1 is
the mean over seeds (`fit_seeds`, `w1_seed0` in the full table) and `w1_se` its standard error over
seeds. "≥" and "beats" allow for that noise: twice the standard error of the difference (at least
0.005). A configuration that fails at any seed (non-finite loss) has no w1. The SVI side is the
better of its two learning rates (a choice vitools does not get).

## Summary per model

{summary}

## Silent failures (w1 > {FAILURE_W1} with k̂ below threshold)

{chr(10).join(silent) if silent else "None."}

## All fits at {DEFAULT_STEPS} steps

Times in seconds: `wall_s` = the whole call; `elapsed_s` = the compiled loop; `compile_s` = the loop's
compilation (first call of a configuration); `init_s` = tracing + Laplace-path init (its compilation on the
model's first fit). For NUTS, `steps` = warm-up + draws and `grad_evals` = leapfrog steps of the kept draws.
`w1_psis` = w1 after Pareto-smoothed importance reweighting of q's draws.

{full}

Plot: `accuracy_vs_evals.png` (w1 against gradient evaluations at each budget). Raw numbers: `accuracy.csv`.
"""
    (out / "accuracy.md").write_text(text)
    verdicts.to_csv(out / "accuracy_verdicts.csv", index=False)


if __name__ == "__main__":
    raise SystemExit(main())
