r"""Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022, JMLR, "Pathfinder: parallel quasi-Newton
variational inference") as a method: ``vt.pathfinder(model, ...)``.

One path is the Laplace init's (:func:`vitools.laplace.path_candidates`): L-BFGS on -log π from a
starting point (at most 100 iterations), damped Newton steps from its end, and at every L-BFGS
iterate and at the Newton end two Gaussians N(u, Σ) and N(u + Σ∇log π(u), Σ),
Σ = (-∇²log π(u))⁻¹ (|eigenvalues|, clipped); the one with the highest ELBO estimate (32 draws,
the same for every candidate) is the path's approximation. The paper's mean is the second,
u + Σ∇log π(u); its Σ is the L-BFGS inverse-Hessian estimate (a diagonal plus a rank-2J update
from the last J = 6 steps), which costs no extra gradient. We use the exact Hessian: **dim
gradient evaluations per iterate** (reverse over reverse), so a path of 100 iterations on the
100-parameter ``gaussian_100`` spends ~10,000 gradients on Hessians against ~300 for L-BFGS
itself (16,871 in all, measured); in return the covariance is exact on a Gaussian and right in
every direction, not only the ~12 the L-BFGS history spans. The Newton steps (also not in the
paper) take the path to the mode where L-BFGS stalls on an ill-conditioned target
(:func:`vitools.laplace._newton_path`). ``PATH_POINTS`` gives the measured cost of fewer
candidates.

Several paths (``num_paths > 1``) start from independent uniform(-2, 2) points in the
unconstrained space (Stan's and NumPyro's ``init_to_uniform``; the first path starts from
NumPyro's initial point, as the init does). q is then the mixture of the paths' Gaussians
(:class:`vitools.families.mixture.GaussianMixture`). Each path's evidence estimate
``log Ẑ_k = logmeanexp(log π(z) - log q_k(z))`` over ``num_draws`` draws of its Gaussian marks a
path whose draws all fall outside the support (weight 0); the weights themselves come from one
importance-weighted EM step over the pooled draws (:func:`_mixture_logits`), so that paths which
found the same mode share its mass instead of each claiming all of it (weighting by Ẑ_k gave a
mode 3 of 4 paths found 3/4 of q; measured on bimodal, W1 0.42). Beyond what q gets right,
``fit.sample(num_draws, resample="psis")`` corrects the rest: draws of the mixture resampled by their
PSIS-smoothed weights π(z) / q(z), the paper's importance resampling across paths (with the
mixture's density as the proposal, not each draw's own path's; Vehtari et al. 2024 for PSIS).
``fit.sample`` without ``resample`` returns q's own draws, because ``vt.diagnose`` needs q's
density at q's draws (k̂ is that of the resampling's weights).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vitools import alerts, validate
from vitools.blas import one_blas_thread
from vitools.families import FullRank
from vitools.families.mixture import GaussianMixture, MixtureParams
from vitools.fitting import target_of
from vitools.laplace import (
    _MAX_HALVINGS,
    _MAX_ITERS,
    _NEWTON_STEPS,
    _NUM_DRAWS,
    path_candidates,
    second_order,
)
from vitools.mode_search import RADIUS, _mixture_logits
from vitools.result import Fit
from vitools.targets import Target

__all__ = ["Pathfinder", "max_grad_evals", "pathfinder"]

# Draws per path for its importance weight (multi-path): PyMC's Pathfinder draws 1000 per path
# (num_draws_per_path), Stan 1000 in all.
NUM_DRAWS = 1000
# Every L-BFGS iteration is a candidate, as in the paper (repeats of a converged path cost nothing).
# The init's 9 points (laplace._PATH_POINTS) cost fewer Hessians but chose worse on hierarchical
# targets, default settings, seed 0 (measured, W1 to the reference / gradient evaluations):
# radon 0.82 / 1,180 with the 9 points, 0.37 / 8,278 with every iteration; eight schools
# (non-centred) 1.71 / 636 and 1.45 / 1,820; banana 0.39 / 407 and 0.36 / 539; funnel 0.40 and
# gaussian_100 0.029 either way, at 831 against 3,569 and 1,947 against 16,871 evaluations.
PATH_POINTS = tuple(range(_MAX_ITERS))
_MAX_PROGRAMS = 8  # compiled path programs kept (see _compiled); one per model and settings


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pathfinder:
    """How a Pathfinder fit was made (the ``objective`` of its :class:`~vitools.result.Fit`).

    Pathfinder takes no stochastic-optimisation steps, so it is not an objective ``vt.fit`` can
    optimise: :meth:`loss` raises, and :meth:`num_density_evals` is 0 (the Fit's
    ``num_grad_evals`` holds what the paths spent). Registered as a pytree with static fields,
    so ``vt.save``/``vt.load`` keep it.

    Attributes:
        num_paths: L-BFGS paths run, a positive integer.
        num_draws: draws of each path's Gaussian behind its mixture weight (``num_paths > 1``;
            a single path draws none).

    Raises:
        vitools.validate.ArgumentValueError: ``num_paths`` or ``num_draws`` is not a positive
            integer (a ``ValueError``).

    Examples:
        >>> fit = vt.pathfinder(model, x, y=y, num_paths=4, seed=0)
        >>> fit.objective
        Pathfinder(num_paths=4, num_draws=..., name='pathfinder')
    """

    num_paths: int = dataclasses.field(default=1, metadata=dict(static=True))
    num_draws: int = dataclasses.field(default=NUM_DRAWS, metadata=dict(static=True))
    name: str = dataclasses.field(default="pathfinder", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "num_paths", validate.count(self.num_paths, "num_paths"))
        object.__setattr__(self, "num_draws", validate.count(self.num_draws, "num_draws"))

    def num_density_evals(self, dim: int) -> int:
        """0: Pathfinder runs no optimisation steps of q (its cost is ``Fit.num_grad_evals``)."""
        return 0

    def loss(self, key: jax.Array, params: Any, family: Any, target: Target):
        """Not a loss: Pathfinder is run by :func:`pathfinder`, not by ``vt.fit``.

        Raises:
            TypeError: always.
        """
        raise TypeError("Pathfinder is not an objective for vt.fit: run vt.pathfinder(model, ...)")


class PathResult(NamedTuple):
    """Each path's approximation, leading axis ``num_paths`` (what :func:`run_paths` returns)."""

    loc: jax.Array  # (num_paths, dim)
    scale_tril: jax.Array  # (num_paths, dim, dim)
    elbo: jax.Array  # (num_paths,): the chosen candidate's ELBO estimate (-inf: none finite)
    log_evidence: jax.Array  # (num_paths,): log Ẑ_k from num_draws draws (0 when not weighed)
    num_iters: jax.Array  # (num_paths,): L-BFGS iterations plus Newton steps
    grad_evals: jax.Array  # (num_paths,): the path, its candidates and its weight's draws


def run_paths(
    target: Target,
    starts: jax.Array,
    key: jax.Array,
    num_draws: int,
    weigh: bool,
    exact: bool = True,
) -> PathResult:
    """Pathfinder's paths from ``starts`` ``(num_paths, dim)`` (in the target's frame), one after
    another (``lax.map``: a converged path's repeated points then cost nothing, which a vmap
    would compute). Traceable; ``num_draws``, ``weigh`` and ``exact`` static.

    ``weigh``: also estimate each path's log evidence from ``num_draws`` draws of its Gaussian.
    """
    path_keys = jax.random.split(key, starts.shape[0])

    def one(args):
        start, path_key = args
        candidate_key, draw_key = jax.random.split(path_key)
        candidates = path_candidates(
            dataclasses.replace(target, initial_point=start), candidate_key, False, exact, PATH_POINTS
        )
        best = jnp.argmax(candidates.elbos.ravel())
        loc = candidates.locs.reshape(-1, target.dim)[best]
        scale_tril = candidates.scale_trils[best // 2]
        if not weigh:
            log_evidence, evals = jnp.zeros((), loc.dtype), candidates.grad_evals
        else:
            log_evidence = _log_evidence(target, loc, scale_tril, draw_key, num_draws)
            evals = candidates.grad_evals + num_draws
        elbo = candidates.elbos.ravel()[best]
        return loc, scale_tril, elbo, log_evidence, candidates.num_iters, evals

    return PathResult(*jax.lax.map(one, (starts, path_keys)))


def _log_evidence(target: Target, loc: jax.Array, scale_tril: jax.Array, key: jax.Array, num_draws: int):
    r"""``log Ẑ = logmeanexp(log π(z_s) - log q(z_s))``, z_s ~ N(loc, scale_tril scale_trilᵀ);
    non-finite log weights (draws outside the support, NaN densities) count as weight 0."""
    eps = jax.random.normal(key, (num_draws, target.dim), loc.dtype)
    log_q = jnp.sum(jax.scipy.stats.norm.logpdf(eps), -1) - jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
    log_p = jax.lax.map(target.log_density, loc[None, :] + eps @ scale_tril.T, batch_size=1000)
    log_weights = log_p - log_q
    log_weights = jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf)
    return jax.nn.logsumexp(log_weights) - jnp.log(num_draws)


# The compiled path programs, kept here (as vitools.engine.PROGRAMS keeps the loop's) to time the
# compilation apart from the run (Fit.compile_time); least recently used first out.
_PROGRAMS: collections.OrderedDict[Any, Any] = collections.OrderedDict()


def _compiled(args: tuple, num_draws: int, weigh: bool, exact: bool) -> tuple[Callable, float]:
    """The compiled :func:`run_paths` for ``args = (target, starts, key)`` and its compile seconds
    (0 when kept)."""
    leaves, treedef = jax.tree.flatten(args)
    signature = (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves), num_draws, weigh, exact)
    if signature in _PROGRAMS:
        _PROGRAMS.move_to_end(signature)
        return _PROGRAMS[signature], 0.0
    tic = time.perf_counter()
    jitted = jax.jit(run_paths, static_argnames=("num_draws", "weigh", "exact"))
    executable = jitted.lower(*args, num_draws=num_draws, weigh=weigh, exact=exact).compile()
    _PROGRAMS[signature] = executable
    while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return executable, time.perf_counter() - tic


def _run(target: Target, starts: jax.Array, key: jax.Array, num_draws: int, weigh: bool, exact: bool = True):
    """``(PathResult on the host, compile seconds, run seconds)``."""
    executable, compile_time = _compiled((target, starts, key), num_draws, weigh, exact)
    tic = time.perf_counter()
    result = jax.device_get(executable(target, starts, key))
    return result, compile_time, time.perf_counter() - tic


# The most density evaluations one L-BFGS iteration's zoom line search may spend (optax.lbfgs's
# default search stops at 15; 25 leaves room).
LINE_SEARCH_MAX_EVALS = 25


def max_grad_evals(dim: int, num_paths: int = 1, num_draws: int = NUM_DRAWS) -> int:
    """An upper bound on :func:`pathfinder`'s gradient evaluations for a ``dim``-parameter target,
    counted as its ``Fit.num_grad_evals`` counts them, so a caller with a budget can tell before
    running it whether it fits (``vt.auto_fit``'s probe). Per path: every L-BFGS iteration with a
    full line search, the Newton steps with every halving, a Hessian (``dim`` gradients) and
    ``2 x 32`` ELBO draws at each iterate, and with several paths ``num_draws`` draws for its
    weight and as many for the mixture's. On a 3-parameter regression 8 paths spent 61,678 where
    this gives 92,120 (measured).

    Raises:
        vitools.validate.ArgumentValueError: ``dim``, ``num_paths`` or ``num_draws`` is not a
            positive integer.
    """
    dim, num_paths = validate.count(dim, "dim"), validate.count(num_paths, "num_paths")
    num_draws = validate.count(num_draws, "num_draws")
    lbfgs = (_MAX_ITERS - 1) * LINE_SEARCH_MAX_EVALS + 1
    newton = _NEWTON_STEPS * (dim + 1 + _MAX_HALVINGS)
    candidates = (len(PATH_POINTS) + 1) * (dim + 2 * _NUM_DRAWS)
    weights = 2 * num_draws if num_paths > 1 else 0
    return num_paths * (lbfgs + newton + candidates + weights)


@one_blas_thread
def pathfinder(
    model: Callable | Target,
    *model_args: Any,
    num_paths: int = 1,
    num_draws: int = NUM_DRAWS,
    seed: int | None = None,
    key: jax.Array | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Fit:
    r"""Pathfinder: q from L-BFGS path(s) on -log π, each path's Laplace Gaussian with the best
    ELBO estimate (Zhang, Carpenter, Gelman & Vehtari 2022; this module's docstring gives the
    algorithm and where it departs from the paper: exact Hessians, Newton steps).

    Args:
        model: a NumPyro model, or a Target (as ``vt.fit``).
        *model_args: the model's positional arguments (as ``vt.fit``).
        **kwargs: the model's keyword arguments (as ``vt.fit``).
        model_kwargs: the model's keyword arguments whose names are also options here, as a
            dict.
        num_paths: independent paths. 1: q is the path's Gaussian (family ``FullRank``). More:
            q is the mixture of the paths' Gaussians weighted by their importance weights
            (``GaussianMixture(num_paths)``); draw with ``fit.sample(n, resample="psis")`` for
            the paper's PSIS resampling across paths.
        num_draws: draws per path behind its weight (``num_paths > 1`` only).
        seed: the run's seed (the paths' jitter and starts, the ELBO and weight draws), as
            ``vt.fit``; None with no ``key``: seed 0.
        key: a JAX PRNG key instead of ``seed``; give one of the two at most.
        progress: say on stderr when a large model's paths start and end (one compiled program,
            so there is nothing to report between).

    Returns:
        A fit (:class:`~vitools.result.Fit`) with objective :class:`Pathfinder`, ``num_steps`` the
            L-BFGS iterations plus Newton steps of all paths, ``num_grad_evals`` every gradient
            evaluation of the paths (one per gradient or density, dim per Hessian) and of the
            ELBO and weight draws, ``compile_time`` and ``elapsed`` (the run, seconds), status
            ``"completed"``. ``vt.diagnose``, ``vt.compare``, ``fit.sample`` and ``vt.save``
            take it as any fit.

    Raises:
        vitools.validate.ArgumentError: a bad option, named in the message (a ``TypeError`` or
            ``ValueError``).
        TypeError: the model cannot be traced with its arguments.
        ValueError: the model cannot be traced with its arguments, or it has ``numpyro.param``
            sites (Pathfinder fits latent sites only).
        FloatingPointError: no path found a Gaussian with a finite ELBO estimate.

    Examples:
        >>> fit = vt.pathfinder(model, x, y=y, num_paths=4, seed=0)
        >>> fit.family.name, fit.params.loc.shape  # a mixture of the 4 paths' Gaussians
        ('mixture', (4, 3))
        >>> draws = fit.sample(1000, resample="psis")  # the paper's importance resampling
    """
    objective = Pathfinder(num_paths, num_draws)
    if not isinstance(progress, bool | np.bool_):
        raise validate.ArgumentTypeError(f"progress must be True or False, got {type(progress).__name__}")
    recorded_seed = 0 if seed is None and key is None else seed
    key = validate.seed_or_key(recorded_seed, key)
    target = target_of(model, model_args, kwargs, model_kwargs)
    validate.no_param_sites(target.param_sites, "pathfinder", "it fits latent sites only", "model")
    alerts.warn_large_init(target.dim)
    start_key, run_key = jax.random.split(key)
    point = target.initial_point
    others = jax.random.uniform(start_key, (num_paths - 1, target.dim), point.dtype, -RADIUS, RADIUS)
    starts = jnp.concatenate([point[None, :], others])
    announce = progress and target.dim >= alerts.LARGE_DIM
    if announce:
        hessians = len(PATH_POINTS) + 1  # every L-BFGS iterate, and the Newton end
        print(f"vitools: pathfinder: {num_paths} path(s), up to {hessians} Hessians of {target.dim} x "
              f"{target.dim} each...", file=sys.stderr, flush=True)  # fmt: skip
    weigh = num_paths > 1
    paths, compile_time, elapsed = second_order(_run, target, starts, run_key, num_draws, weigh)
    if announce:
        print(f"vitools: pathfinder done in {compile_time + elapsed:.1f} s", file=sys.stderr, flush=True)
    found = np.isfinite(paths.elbo)
    if not found.any():
        raise FloatingPointError(
            f"pathfinder: no path ({num_paths}) found a Gaussian with a finite ELBO estimate: the log "
            "density is NaN or -inf along the paths; check the model, or try more paths or another seed"
        )
    record = dict(
        num_steps=int(np.sum(paths.num_iters)),
        num_grad_evals=int(np.sum(paths.grad_evals)),
        elapsed=elapsed,
        compile_time=compile_time,
        status="completed",
        seed=recorded_seed,
    )
    if not weigh:
        return _fit(
            target,
            FullRank(),
            objective,
            FullRank().init(None, target, paths.loc[0], paths.scale_tril[0]),
            record,
        )
    return _mixture_fit(target, objective, paths, record, jax.random.fold_in(run_key, 1))


def _fit(target: Target, family: Any, objective: Pathfinder, params: Any, record: dict[str, Any]) -> Fit:
    empty = np.zeros(0)
    return Fit(target, family, objective, params, empty, {"loss": empty}, **record)


def _mixture_fit(
    target: Target, objective: Pathfinder, paths: PathResult, record: dict[str, Any], key: jax.Array
) -> Fit:
    """q = Σ_k π_k N(loc_k, scale_tril_k scale_tril_kᵀ) (:class:`GaussianMixture`), π from
    :func:`_mixture_logits`. A path without a finite Gaussian keeps the first good path's in its
    slot, at weight 0."""
    found = np.isfinite(paths.elbo)
    first = int(np.argmax(found))
    loc = np.where(found[:, None], paths.loc, paths.loc[first])
    scale_tril = np.where(found[:, None, None], paths.scale_tril, paths.scale_tril[first])
    usable = found & np.isfinite(paths.log_evidence)
    if not usable.any():
        raise FloatingPointError(
            "pathfinder: every path's Gaussian put all its draws where the log density is -inf or "
            "NaN (no importance weight); check the model's support, or try more paths"
        )
    logits = _mixture_logits(target, jnp.asarray(loc), jnp.asarray(scale_tril), jnp.asarray(usable), key,
                             objective.num_draws)  # fmt: skip
    record = {**record, "num_grad_evals": record["num_grad_evals"] + int(usable.sum()) * objective.num_draws}
    family = GaussianMixture(objective.num_paths)
    raw_tril = jax.vmap(lambda m, s: FullRank().init(None, target, m, s).raw_tril)(loc, scale_tril)
    params = MixtureParams(jnp.asarray(logits), jnp.asarray(loc), raw_tril)
    return _fit(target, family, objective, params, record)
