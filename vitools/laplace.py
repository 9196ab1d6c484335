r"""The initial Gaussian every family starts from.

``"laplace"`` (the default) follows the L-BFGS path from NumPyro's initial point towards the mode,
goes on from its end with damped Newton steps (:func:`_newton_path`), and forms at several points
along the way a Gaussian N(u_k, (-∇²log π(u_k))⁻¹); it keeps the one with the highest ELBO
estimate. This is the selection rule of Pathfinder (Zhang et al. 2022) with
exact Hessians instead of L-BFGS's low-rank ones (our dimensions are small enough). Picking by
ELBO rather than taking the mode guards against targets whose mode is a poor centre (Neal's
funnel, hierarchical scales going to zero): the path's early points win there. Badly scaled and
strongly correlated targets start with the right scales and correlations, which plain
``N(init, 0.1² I)`` (NumPyro's autoguide default, ``"median"`` here) does not give.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitools.compiling import sized_jit
from vitools.targets import Target

__all__ = [
    "InitialGaussian",
    "PathCandidates",
    "initial_gaussian",
    "is_mode",
    "path_candidates",
    "second_order",
    "simple_gaussian",
]

_PATH_POINTS = (0, 1, 2, 4, 8, 16, 32, 64, 99)  # iterations along the path tried as centres
# initial_gaussian(early=True)'s last candidate iteration. Batch and match on radon (a centred
# funnel; B = 6, float32), from the pick at iteration 32 or 64 (log sigma_a ~ -4, the neck): 4.5x,
# 2.8x, 2.8x, 2.8x fewer evaluations than the default fit on seeds 0-3, w1 0.11-0.71; from the best
# of iterations 0-8 (log sigma_a -0.5 to -1.2): 9.7x, 10.0x, 8.7x, 12.3x, w1 0.114-0.117; on
# fresh seeds 8-11 the 5x bar was met on 2 against 1 (seed 11 had run off, w1 120). From 16
# on, seed 0 ran off; iteration 4 alone gave seed 5 a non-finite fit. Every other zoo model
# BaM was measured on (6 in benchmarks/results/score.md, plus centred eight schools, gp_poisson and
# the funnel, seeds 0-1) starts at a mode or from the simple start: unchanged to the digit.
EARLY_ITERATION = 8
_MAX_ITERS = 100
# The path stops where L-BFGS no longer makes progress: scipy's L-BFGS-B tests (relative decrease
# of -log π below ftol = 2.2e-9, largest gradient entry below gtol = 1e-5). On a 10^5-row
# regression the path converged in ~10 iterations and the other 90 cost 0.28 s of a 1.0 s init
# (measured). ftol is not raised to a few float32 ulps: on earnings in dollars on height
# (posteriordb earn_height, intercept -61,000 ± 9,600) L-BFGS crawls along the ridge a few
# ulps per iteration, and stopping there left the intercept at -1.5 (fit: 589 instead of -61,335).
_GTOL = 1e-5
_NUM_DRAWS = 32
_JITTER = 0.1
_SIMPLE_MARGIN = 20.0  # nats per dimension by which the simple start must lead (see _path_laplace)
# Damped Newton steps after the L-BFGS path (_newton_path). On collinear_large (posterior condition
# number ~6e8) L-BFGS stopped 21 posterior sds from the mode in float64 and 33 in float32; the
# Newton steps (4 in float64, 5 in float32) took it to within 0.017 NUTS sds of the NUTS mean of
# every coefficient, in both (measured). A step costs one Hessian, and a converged path stops early
# at no further cost: 2 steps on gaussian_100, 4-8 climbing into radon's funnel neck, a candidate
# the ELBO then refuses. Init time (second call, float32): collinear_large 0.08 -> 0.28 s,
# gaussian_100 0.47 -> 1.25 s, stochastic_volatility (103 latents) 0.03 -> 0.82 s.
_NEWTON_STEPS = 8
# Stop when the Newton decrement sqrt(gᵀ P⁻¹ g), the distance to the local quadratic's mode in its
# own sds, is below this: far below the 0.1 sd a start needs, and a smaller value gains nothing
# in float32, where the log density cannot resolve the gain (λ²/2 nats) of so short a step.
_NEWTON_TOL = 1e-2
_ARMIJO = 1e-4  # sufficient increase of log π per unit of predicted increase (Nocedal & Wright 2006, (3.4))
_MAX_HALVINGS = 30  # backtracking: the smallest step tried is 2^-30 of the Newton step
# Eigenvalue clip of -Hessian: sd in [1e-5, 1e6]. An upper sd of 100 (1e-4) cut earn_height's
# intercept sd of 9,600 to 100 and with it the Newton step to the mode (measured).
_MIN_PRECISION, _MAX_PRECISION = 1e-12, 1e10


def _hessian_and_grad(fn, exact: bool = True):
    """``(∇²fn, ∇fn)``, reverse over reverse; the gradient is the Hessian pass's own primal, not a
    second pass. ``jax.hessian`` (forward over reverse) took 34 ms against 17 ms on a 10^5-row,
    51-parameter regression, and the two are within 0.1 ms on the zoo models (measured); compile
    times are equal.

    ``exact=False``: central differences of the gradient (2 d gradients), for log densities JAX
    can differentiate only once, such as an ODE solved by diffrax inside the model (its adjoint
    supports one reverse pass; NUTS and SVI need no more). The step is eps^(1/3) relative, the
    optimum for central differences (Nocedal & Wright 2006, sec. 8.1).
    """
    if not exact:
        return functools.partial(_finite_difference_hessian, jax.grad(fn))

    def grad_twice(u):
        gradient = jax.grad(fn)(u)
        return gradient, gradient

    return jax.jacrev(grad_twice, has_aux=True)


def _finite_difference_hessian(grad, u):
    step = jnp.finfo(u.dtype).eps ** (1 / 3) * jnp.maximum(1.0, jnp.abs(u))
    steps = jnp.diag(step)  # row j: step_j e_j
    differences = jax.vmap(lambda e: grad(u + e))(steps) - jax.vmap(lambda e: grad(u - e))(steps)
    rows = differences / (2 * step[:, None])
    return rows.T, grad(u)  # rows[j] = ∂grad/∂u_j, i.e. column j of the Hessian


@jax.jit
def _call_log_density(target: Target, u: jax.Array) -> jax.Array:
    return target.log_density(u)


def _log_density(target: Target):
    """``target.log_density`` as a jitted call, which JAX traces once per target and shapes and then
    differentiates and vmaps as a jaxpr. The Laplace program evaluates it in 11 places (L-BFGS and
    its line search, the Newton steps and theirs, three Hessians, the ELBOs); called directly, each
    traced the model through NumPyro's handlers again (under cProfile 3.1 s of the trace's 5.6 s).
    Tracing the program took 0.34-0.75 s of CPU instead of 0.76-0.83 s (100-row regression, fresh
    processes, a loaded 2-core machine; measured); its result is the same to the bit."""
    return functools.partial(_call_log_density, target)


def second_order(function, *args):
    """``function(*args, exact=True)``, or with ``exact=False`` where JAX cannot differentiate
    the log density twice (the error names reverse-mode, jvp or vjp)."""
    try:
        return function(*args, exact=True)
    except (ValueError, TypeError, NotImplementedError) as err:
        if not any(word in str(err) for word in ("differentiation", "jvp", "vjp", "Reverse-mode")):
            raise
        return function(*args, exact=False)


class InitialGaussian(NamedTuple):
    loc: jax.Array
    scale_tril: jax.Array
    at_mode: jax.Array  # :func:`is_mode` of this Gaussian (False for "median" and "diagonal")
    informed: jax.Array  # the scales come from the target's curvature (False for the simple start)
    # The start's cost in gradient evaluations of log π, counted as it ran: one per gradient, one
    # per density-only evaluation (an upper bound on its cost), dim per Hessian (dim reverse passes).
    grad_evals: jax.Array


def initial_gaussian(
    target: Target, key: jax.Array, method: str = "laplace", structure: str = "full", early: bool = False
) -> InitialGaussian:
    """The initial Gaussian N(loc, scale_tril scale_trilᵀ) over the flat unconstrained space,
    and whether it sits at a mode (:func:`is_mode`, computed in the same compiled program: a
    program of its own compiled for 1.1 s on a 10,000-row regression, measured).

    Args:
        target: the target.
        key: PRNG key for the ELBO estimates.
        method: ``"laplace"`` (path-selected Laplace approximation) or ``"median"``
            (NumPyro's init point, scale 0.1).
        structure: the covariance the family can represent: ``"full"`` or ``"diagonal"``. With
            ``"diagonal"`` each candidate is the diagonal Gaussian with the conditional sds
            ``1 / sqrt(-∇²log π)_ii`` (the reverse-KL-optimal diagonal Gaussian of a Gaussian
            target), and the ELBO scores that, not the full Gaussian the family cannot reach.
        early: where the pick is not at a mode (:func:`is_mode`: a funnel's neck, where the ELBO
            of a few draws prefers the path's late, narrow Gaussians), take the best-ELBO
            candidate of the path's iterations up to :data:`EARLY_ITERATION` instead; for an
            objective that skips ``vt.fit``'s start race (batch and match), which would
            otherwise pick the simple start there.
    """
    if method == "median":
        # NumPyro's init point, scale 0.1 (simple_gaussian), made on the host: op by op, jnp.eye,
        # its scaling and jnp.int32(0) compiled four small programs, 0.7 s of a first fit's wall
        # time beside the loop's compilation (10^5-row regression, measured).
        loc = target.initial_point
        scale_tril = jnp.asarray(0.1 * np.eye(target.dim, dtype=loc.dtype))
        return InitialGaussian(loc, scale_tril, np.bool_(False), np.bool_(False), np.int32(0))
    if method != "laplace":
        raise ValueError(f"unknown init {method!r}; choose 'laplace' or 'median', or pass (loc, scale_tril)")
    if structure not in ("full", "diagonal"):
        raise ValueError(f"unknown structure {structure!r}; choose 'full' or 'diagonal'")
    program = functools.partial(_path_laplace_program(target), early=early)
    return second_order(program, target, key, structure == "diagonal")


class PathCandidates(NamedTuple):
    """The Gaussians along one optimisation path (:func:`path_candidates`).

    ``C = len(points) + 1`` centres: the L-BFGS path's iterations ``points`` and the end
    of the Newton path from its last point; each gives two candidates (the point, and the point
    after one Newton step with its covariance), which share one ``scale_tril``.
    """

    locs: jax.Array  # (C, 2, dim)
    scale_trils: jax.Array  # (C, dim, dim): inverse -Hessian at the centre (|eigenvalues|, clipped)
    elbos: jax.Array  # (C, 2): ELBO estimates from _NUM_DRAWS draws; -inf where skipped or not finite
    num_iters: jax.Array  # L-BFGS iterations plus Newton steps that moved the point
    grad_evals: jax.Array  # what the path and candidates cost, counted as InitialGaussian.grad_evals


def path_candidates(
    target: Target,
    key: jax.Array,
    diagonal: bool = False,
    exact: bool = True,
    points: tuple[int, ...] | None = None,
) -> PathCandidates:
    """The L-BFGS path from ``target.initial_point`` (plus ``_JITTER`` sds of noise), the damped
    Newton path from its end, and a Laplace Gaussian at each of the path's iterations ``points``
    (each in ``[0, _MAX_ITERS)``; None: ``_PATH_POINTS``, read when called) and at the Newton
    end, scored by its ELBO estimate (:func:`_gaussian_at`); :func:`initial_gaussian` keeps the
    best of these, Pathfinder (:mod:`vitools.pathfinder`) too. A point that repeats the one
    before (a stopped path) costs nothing.

    Traceable (call it under ``jax.jit``; ``diagonal``, ``exact`` and ``points`` static). ``key``
    seeds the path's jitter and the ELBO draws, which are the same for every centre (common
    random numbers).
    """
    return _candidates(target, *_noise(target, key), diagonal, exact, points)


def _noise(target: Target, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(jitter (dim,), eps (_NUM_DRAWS, dim))``: the path's start noise and the ELBO draws, both
    standard normal, drawn once for the whole program. Each ``jax.random`` call in a program is
    its own Threefry graph: the init had five (two splits, three normals: the ELBO draws again in
    every candidate and for the simple start), ~0.4 s of its ~2.4 s compile at LLVM -O0 (100-row
    regression, measured by replacing them with arithmetic). One draw for both would save two
    more, but its numbers differ, and with 32 draws the ELBO's choice among near-equal centres
    follows the numbers (a 3-D Gaussian's start moved 0.05 off the mode): these are the draws
    the init always made."""
    path_key, elbo_key = jax.random.split(key)
    dtype = target.initial_point.dtype
    return jax.random.normal(path_key, (target.dim,), dtype), jax.random.normal(
        elbo_key, (_NUM_DRAWS, target.dim), dtype
    )


def _candidates(
    target: Target,
    jitter: jax.Array,
    eps: jax.Array,
    diagonal: bool,
    exact: bool,
    points: tuple[int, ...] | None,
) -> PathCandidates:
    """:func:`path_candidates` from its noise (:func:`_noise`)."""
    path, lbfgs_evals = _lbfgs_path(target, target.initial_point + _JITTER * jitter)
    # The Newton path's end is one more centre; the earlier points stay candidates, so a funnel,
    # whose mode is a poor centre, can still pick an early one by its ELBO.
    newton, newton_evals = _newton_path(target, path[-1], exact)
    points = _PATH_POINTS if points is None else points
    centres = jnp.concatenate([path[jnp.array(points)], newton[-1:]])
    # A stopped path repeats its last point; a repeat's candidates equal the earlier ones, so they
    # are skipped (ELBO -inf). On a 10^5-row regression that saves 3 of 9 Hessians (measured).
    fresh = jnp.concatenate([jnp.array([True]), jnp.any(centres[1:] != centres[:-1], axis=-1)])

    def candidates(args):
        centre, is_fresh = args
        eye = jnp.eye(target.dim, dtype=centre.dtype)
        skipped = (jnp.stack([centre, centre]), eye, jnp.full(2, -jnp.inf, centre.dtype))
        gaussians = functools.partial(_gaussian_at, target, centre, eps, diagonal, exact)
        return jax.lax.cond(is_fresh, gaussians, lambda: skipped)

    # One path point at a time: the cond skips a repeat's work (a vmap would compute it), and
    # nine Hessians in sequence took 165 ms against 195 ms vmapped (10^5 rows, measured).
    locs, trils, elbos = jax.lax.map(candidates, (centres, fresh))
    # Each fresh centre: a Hessian and 2 x _NUM_DRAWS densities.
    candidate_evals = jnp.sum(fresh, dtype=jnp.int32) * (target.dim + 2 * _NUM_DRAWS)
    num_iters = _num_moves(path) + _num_moves(newton)
    return PathCandidates(locs, trils, elbos, num_iters, lbfgs_evals + newton_evals + candidate_evals)


def _num_moves(path: jax.Array) -> jax.Array:
    """How many of a path's iterations moved its point (a stopped path repeats its last one)."""
    return jnp.sum(jnp.any(path[1:] != path[:-1], axis=-1), dtype=jnp.int32)


def _path_laplace(
    target: Target, key: jax.Array, diagonal: bool, exact: bool = True, early: bool = False
) -> InitialGaussian:
    jitter, eps = _noise(target, key)
    locs, trils, elbos, _, path_evals = _candidates(target, jitter, eps, diagonal, exact, None)
    best = jnp.argmax(elbos.ravel())
    # The simple start ("median": NumPyro's init point, scale 0.1) replaces the best path Gaussian
    # when its ELBO estimate is higher by more than _SIMPLE_MARGIN nats per dimension, so the
    # default is never far worse than it. On a non-centred horseshoe regression (52 latents) the
    # best path Gaussian scored -6050 against the simple start's -259 (111 nats per dimension),
    # and the fit from it stayed off after 2000 steps (largest coefficient 2.09 ± 0.47 against
    # NUTS 2.27 ± 0.14; from the simple start 2.24 ± 0.15). A small lead means little: on the zoo
    # and the tests' 3-D funnel it led by at most 6.5 nats per dimension (that funnel, banana,
    # non-centred eight schools), and taking it there made the fits worse (IAF on the funnel: sd(v) 1.46
    # against 1.76-2.53; forward KL on eight schools: mu 0.6 sd off). All measured.
    simple_loc, simple_tril = simple_gaussian(target)
    lead = _elbo(target, simple_loc, simple_tril, eps) - elbos.ravel()[best]  # the same draws
    simple = ~(lead <= _SIMPLE_MARGIN * target.dim)  # also when every path Gaussian is non-finite
    loc = jnp.where(simple, simple_loc, locs.reshape(-1, target.dim)[best])
    scale_tril = jnp.where(simple, simple_tril, trils[best // 2])
    # Only full-structure families may whiten with the full factor; diagonal ones never ask.
    at_mode = jnp.array(False) if diagonal else is_mode(target, loc, scale_tril, exact=exact) & ~simple
    if early and not diagonal:
        # An objective that skips the start race (batch and match): when the pick is not at a
        # mode (a funnel's neck), the best-ELBO candidate of the path's iterations 0-8 instead.
        first = _PATH_POINTS.index(EARLY_ITERATION) + 1
        early_best = jnp.argmax(elbos[:first, 0])
        swap = ~at_mode & ~simple & jnp.isfinite(elbos[early_best, 0])
        loc = jnp.where(swap, locs[early_best, 0], loc)
        scale_tril = jnp.where(swap, trils[early_best], scale_tril)
    # The path and its candidates; the simple start's ELBO; is_mode's Hessian.
    evals = path_evals + _NUM_DRAWS + (0 if diagonal else target.dim)
    return InitialGaussian(loc, scale_tril, at_mode, ~simple, evals)


# One program per model and shapes, run once or a few times: compiled at -O0 on small data
# (vitools.compiling.QUICK_SIZE: 2.4-2.9 s instead of 4.3-4.8 s of CPU on the engine benchmark's regressions).
_path_laplace_program = sized_jit(_path_laplace, static_argnames=("diagonal", "exact", "early"))


def simple_gaussian(target: Target) -> tuple[jax.Array, jax.Array]:
    """NumPyro's init point with scale 0.1 (its autoguides' default start)."""
    return target.initial_point, 0.1 * jnp.eye(target.dim, dtype=target.initial_point.dtype)


def _elbo(target: Target, loc: jax.Array, scale_tril: jax.Array, eps: jax.Array) -> jax.Array:
    """ELBO estimate of N(loc, scale_tril scale_trilᵀ) from the standard normal draws ``eps``
    ``(_NUM_DRAWS, dim)`` (-inf if not finite)."""
    log_q = jnp.sum(jax.scipy.stats.norm.logpdf(eps), -1) - jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
    elbo = jnp.mean(jax.vmap(_log_density(target))(loc[None, :] + eps @ scale_tril.T) - log_q)
    return jnp.where(jnp.isfinite(elbo), elbo, -jnp.inf)


def _lbfgs_path(target: Target, start: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Iterates of L-BFGS on -log π, ``(_MAX_ITERS, dim)``, and the gradient evaluations they took
    (the first point's, then the line search's); once it has converged or met a non-finite value,
    the path repeats its last point, and those iterations cost nothing.

    The path starts at ``start``: :func:`path_candidates` puts it a little off NumPyro's init
    point (``_JITTER`` sds of noise in the unconstrained space), since a symmetric target's init
    point can be a stationary point (the saddle between two modes at 0), where L-BFGS would never
    move.
    """

    log_density = _log_density(target)

    def objective(u):
        return -log_density(u)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)
    ftol = 2.2e-9

    def advance(u, state):
        value, grad = value_and_grad(u, state=state)
        updates, new_state = optimizer.update(grad, state, u, value=value, grad=grad, value_fn=objective)
        new_u = optax.apply_updates(u, updates)
        # The line search leaves the value and gradient at new_u in its state.
        new_value = optax.tree_utils.tree_get(new_state, "value")
        new_grad = optax.tree_utils.tree_get(new_state, "grad")
        failed = ~jnp.all(jnp.isfinite(new_u)) | ~jnp.isfinite(new_value)
        scale = jnp.maximum(jnp.maximum(jnp.abs(value), jnp.abs(new_value)), 1.0)
        converged = (value - new_value <= ftol * scale) | (jnp.max(jnp.abs(new_grad)) <= _GTOL)
        spent = optax.tree_utils.tree_get(new_state, "num_linesearch_steps").astype(jnp.int32)
        # One branch, not a jnp.where per leaf of the L-BFGS state: XLA's CPU backend compiles
        # each select as a kernel of its own (~10 ms of CPU each at -O0), and the L-BFGS part
        # of the program fell from 102 to 97 kernels (same path to the bit; measured).
        new_u, new_state = jax.lax.cond(failed, lambda: (u, state), lambda: (new_u, new_state))
        return new_u, new_state, failed | converged, spent

    def body(carry, _):
        u, state, stopped, evals = carry
        u, state, stopped, spent = jax.lax.cond(
            stopped, lambda: (u, state, stopped, jnp.int32(0)), lambda: advance(u, state)
        )
        return (u, state, stopped, evals + spent), u

    carry = (start, optimizer.init(start), jnp.array(False), jnp.int32(1))
    (*_, evals), path = jax.lax.scan(body, carry, None, length=_MAX_ITERS - 1)
    return jnp.concatenate([start[None], path]), evals


def _newton_path(target: Target, point: jax.Array, exact: bool = True) -> tuple[jax.Array, jax.Array]:
    r"""Iterates of damped Newton ascent on log π from ``point``, ``(_NEWTON_STEPS + 1, dim)``,
    and the gradient evaluations they took (dim per Hessian, one per density); row 0 is ``point``.
    Once a step is refused or the Newton decrement is below ``_NEWTON_TOL``
    the path repeats its last point, and those iterations cost nothing.

    Each step is ``p = P⁻¹ ∇log π`` with ``P`` the exact -Hessian made positive definite by
    taking its eigenvalues' absolute values (saddle-free Newton, Dauphin et al. 2014), so ``p`` is
    an ascent direction even where log π is not concave. The eigendecomposition is of ``P`` scaled
    to unit diagonal (Jacobi), so units do not enter its conditioning: in float32 the unscaled
    ``P`` of ``collinear_large`` (condition number ~6e8) has eigenvalues below its rounding error.
    Scaled eigenvalues below ``dim · eps`` (rounding noise, or a flat direction) are raised to it.
    The step length is the first of 1, 1/2, 1/4, ... that satisfies the Armijo condition
    ``log π(u + t p) ≥ log π(u) + c t ∇log πᵀ p`` (backtracking line search; Nocedal & Wright 2006,
    Algorithm 3.1), so log π never decreases along the path; no step length satisfying it within
    ``_MAX_HALVINGS`` halvings (or a non-finite value) ends the path.

    L-BFGS alone stops short of the mode where the posterior is ill-conditioned (its stopping
    rules read a small gradient in the model's units as convergence); a Newton step measures
    distance in the posterior's own sds (the decrement ``sqrt(∇ᵀ P⁻¹ ∇)``), and on a near-Gaussian
    posterior lands on the mode in one or two steps.
    """
    log_density = _log_density(target)
    hessian_and_grad = _hessian_and_grad(log_density, exact)
    floor = target.dim * jnp.finfo(point.dtype).eps

    def direction(u):
        hessian, gradient = hessian_and_grad(u)
        precision = -0.5 * (hessian + hessian.T)
        inv_sqrt = 1.0 / jnp.sqrt(jnp.clip(jnp.abs(jnp.diagonal(precision)), _MIN_PRECISION, _MAX_PRECISION))
        eigvals, eigvecs = jnp.linalg.eigh(precision * inv_sqrt[:, None] * inv_sqrt[None, :])
        eigvals = jnp.maximum(jnp.abs(eigvals), floor)
        step = inv_sqrt * (eigvecs @ ((eigvecs.T @ (inv_sqrt * gradient)) / eigvals))
        return step, gradient @ step  # the step and the squared Newton decrement (> 0)

    def advance(u, value):
        step, decrement_sq = direction(u)

        def refused(args):
            length, new_value = args
            sufficient = new_value >= value + _ARMIJO * length * decrement_sq
            return ~(jnp.isfinite(new_value) & sufficient) & (length > 2.0**-_MAX_HALVINGS)

        def halve(args):
            length = 0.5 * args[0]
            return length, log_density(u + length * step)

        length, new_value = jax.lax.while_loop(refused, halve, (jnp.ones((), u.dtype), log_density(u + step)))
        densities = 1 - jnp.round(jnp.log2(length)).astype(jnp.int32)  # 1 + the number of halvings
        new_u = u + length * step
        accepted = jnp.isfinite(new_value) & (new_value >= value + _ARMIJO * length * decrement_sq)
        accepted &= jnp.all(jnp.isfinite(new_u)) & jnp.isfinite(decrement_sq)
        converged = jnp.sqrt(jnp.abs(decrement_sq)) <= _NEWTON_TOL
        new_u, new_value = jnp.where(accepted, new_u, u), jnp.where(accepted, new_value, value)
        return new_u, new_value, ~accepted | converged, jnp.int32(target.dim) + densities

    def body(carry, _):
        u, value, stopped, evals = carry
        u, value, stopped, spent = jax.lax.cond(
            stopped, lambda: (u, value, stopped, jnp.int32(0)), lambda: advance(u, value)
        )
        return (u, value, stopped, evals + spent), u

    value = log_density(point)
    carry = (point, value, ~jnp.isfinite(value), jnp.int32(1))
    (*_, evals), path = jax.lax.scan(body, carry, None, length=_NEWTON_STEPS)
    return jnp.concatenate([point[None], path]), evals


def _gaussian_at(
    target: Target, point: jax.Array, eps: jax.Array, diagonal: bool = False, exact: bool = True
):
    """Laplace Gaussians at a path point: ``(centres, scale_tril, elbos)`` for two centres.

    The covariance is the inverse of -Hessian at ``point`` (|eigenvalues|, clipped). The centres
    are the point itself and the point after one Newton step with that covariance, which lands on
    the mode of a Gaussian target whatever the conditioning: in float32, L-BFGS on a posterior with
    correlation -0.9999 stopped 27 sds from the mode along the ridge (measured on ``bad_scaling``).
    The ELBO picks between them, so a Newton step that overshoots on a non-Gaussian target loses.
    ``eps``: the ELBO's standard normal draws, ``(_NUM_DRAWS, dim)``.
    """
    log_density = _log_density(target)
    hessian, gradient = _hessian_and_grad(log_density, exact)(point)
    precision = -0.5 * (hessian + hessian.T)
    eigvals, eigvecs = jnp.linalg.eigh(precision)
    eigvals = jnp.clip(jnp.abs(eigvals), _MIN_PRECISION, _MAX_PRECISION)
    # Square root of the covariance, then a Cholesky factor via QR (stable for any conditioning).
    root = eigvecs * (1.0 / jnp.sqrt(eigvals))[None, :]  # cov = root @ root.T
    _, r = jnp.linalg.qr(root.T)
    scale_tril = r.T * jnp.sign(jnp.diagonal(r))[None, :]
    if diagonal:
        # Conditional sds from the clipped precision. The marginal sds (row norms of the factor)
        # are the forward-KL projection: in radon's funnel neck they put the mean-field start
        # at ELBO -1035 against -136 (measured), and the fit stayed in the neck (w1 0.77).
        clipped_diag = jnp.sum(eigvecs**2 * eigvals[None, :], axis=-1)
        scale_tril = jnp.diag(1.0 / jnp.sqrt(clipped_diag))
    newton = point + root @ (root.T @ gradient)
    centres = jnp.stack([point, newton])
    log_q = jnp.sum(jax.scipy.stats.norm.logpdf(eps), -1) - jnp.sum(
        jnp.log(jnp.abs(jnp.diagonal(scale_tril)))
    )
    # Both centres' draws in one batch: a vmap of the ELBO over the centres let XLA recompute the
    # draws inside the pass over the data (104 ms against 55 ms per point at 10^5 rows, measured).
    draws = (centres[:, None, :] + (eps @ scale_tril.T)[None]).reshape(2 * _NUM_DRAWS, target.dim)
    log_p = jax.vmap(log_density)(draws).reshape(2, _NUM_DRAWS)
    elbos = jnp.mean(log_p, axis=-1) - jnp.mean(log_q)
    finite = jnp.all(jnp.isfinite(centres), axis=-1) & jnp.isfinite(elbos)
    return centres, scale_tril, jnp.where(finite, elbos, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("exact",))
def is_mode(target: Target, loc: jax.Array, scale_tril: jax.Array, exact: bool = True) -> jax.Array:
    """Whether N(loc, L Lᵀ) sits at a mode: -Hessian positive definite at ``loc`` and the
    gradient, in units of the Gaussian's sds (|Lᵀ ∇log π|), below 1.

    On the zoo this separates cleanly: at the modes of ``bad_scaling`` and ``logistic_regression``
    the whitened gradient is 0.07-0.13 with a positive definite Hessian; at the best path points of
    funnels and hierarchical models (``radon``, centred eight schools, ``gp_poisson``) it is 3.6-7.4
    with negative curvature (measured).
    """
    hessian, gradient = _hessian_and_grad(_log_density(target), exact)(loc)
    smallest = jnp.linalg.eigvalsh(-0.5 * (hessian + hessian.T))[0]
    return (smallest > 0) & (jnp.linalg.norm(scale_tril.T @ gradient) < 1.0)
