"""Where a fit starts: the initial Gaussian, the frame the fit runs in, and the start race.

:func:`starting_point` turns ``vt.fit``'s ``init`` into a Gaussian (:mod:`vitools.laplace`) and
the affine frame of its scales (:mod:`vitools.frame`); :func:`race` runs the default start
against NumPyro's simple one for a few pilot steps on the fit's own compiled loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vitools.compiling import setup_jit
from vitools.engine import MAX_CHUNKS_PER_CALL, PROGRAMS, Outcome, optimize, quick_compile
from vitools.families import Family, family_hooks
from vitools.frame import Frame
from vitools.laplace import initial_gaussian, is_mode, second_order, simple_gaussian
from vitools.objectives import Objective, objective_hooks
from vitools.stepping import init_state, objective_state
from vitools.targets import Target

__all__ = [
    "PILOT_STEPS",
    "RACE_MIN_STEPS",
    "FitKeys",
    "Pilot",
    "Start",
    "fit_keys",
    "pilot",
    "pilot_score",
    "prefetch_loop",
    "race",
    "simple_start",
    "starting_point",
]


class FitKeys(NamedTuple):
    """``vt.fit``'s keys, all derived from its ``key``."""

    init: jax.Array  # the start's: split(key)[0]
    run: jax.Array  # the loop's: split(key)[1]
    params: jax.Array  # whatever a family draws in init (IAF's weights): fold_in(run, 1)
    objective: jax.Array  # the objective's state: fold_in(run, 2)
    init_rows: jax.Array  # a subsampled init's rows, a searching start's draws: fold_in(init, 1)
    diagnostics: jax.Array  # the checks after the loop (warn_improper): fold_in(key, 1)


@setup_jit
def fit_keys(key: jax.Array) -> FitKeys:
    """:class:`FitKeys` as one program: derived op by op, the split and the fold-in compiled two
    Threefry programs at the default level, 0.28 s of CPU in a process's first fit (measured)."""
    init, run = jax.random.split(key)
    fold_in = jax.random.fold_in
    return FitKeys(init, run, fold_in(run, 1), fold_in(run, 2), fold_in(init, 1), fold_in(key, 1))


class Start(NamedTuple):
    target: Target  # the target in the frame the fit runs in
    loc: jax.Array  # the initial Gaussian in that frame
    scale_tril: jax.Array
    informed: bool  # its scales come from the target (False: NumPyro's simple start)
    grad_evals: int  # what finding it cost, in gradient evaluations (laplace.InitialGaussian)


# The default start races the simple one (NumPyro's init point, scale 0.1) for PILOT_STEPS steps
# each; the lower mean loss over the pilot's last fifth wins, and the fit starts again from it with
# its whole budget. The start's ELBO does not tell which fit ends better: on a centred local-level
# model (a scan over 40 states) the Laplace start scored the higher ELBO, then collapsed the level
# scale (s_lvl 0.017 against NUTS 0.32, loss 64.3 after 2000 steps) while the simple start reached
# 0.31 (loss 43.5); after 100 steps the two read 67.6 and 54.3 (measured). Mass-covering
# objectives are left out: their loss on a narrow q's own draws reads low when q is too narrow.
RACE_MIN_STEPS = 1000  # below this the pilots (2 x PILOT_STEPS) would be a large share of the run
PILOT_STEPS = 100


class Pilot(NamedTuple):
    score: float  # mean loss over the pilot's last fifth; +inf if it did not complete
    outcome: Outcome


def pilot(
    family,
    objective,
    optimizer,
    learning_rate,
    keys,
    chunk_size,
    quick,
    target,
    loc,
    scale_tril,
) -> Pilot:
    """A PILOT_STEPS-step run from N(loc, scale_tril scale_trilᵀ), on the fit's compiled loop
    (``keys``: the fit's :class:`FitKeys`; ``quick``: the fit's :func:`vitools.engine.quick_compile`)."""
    params = family.init(keys.params, target, loc, scale_tril)
    carried = objective_state(objective, keys.objective, params, family, target)
    state = init_state(keys.run, params, optimizer, learning_rate, target.model_params, carried)
    outcome = optimize(
        state,
        PILOT_STEPS,
        objective,
        family,
        target,
        optimizer,
        chunk_size=chunk_size,
        progress=False,
        quick=quick,
    )
    return Pilot(pilot_score(outcome.losses, outcome.status), outcome)


def pilot_score(losses: np.ndarray, status: str) -> float:
    """A pilot's score: its mean loss over the last fifth of its steps; +inf when it did not
    complete, met a non-finite loss, or ran away."""
    head, tail = losses[: PILOT_STEPS // 5], losses[-PILOT_STEPS // 5 :]
    completed = status == "completed" and np.all(np.isfinite(losses))
    # A loss whose size grew a thousandfold in the pilot is running away, not converging: in
    # float64 the Laplace start of the local-level model went from 108 to -7e18 (q sliding into
    # the neck of the funnel, where the estimates break down) while the simple start reached 92.
    diverging = completed and abs(np.mean(tail)) > 1e3 * (1.0 + abs(np.mean(head)))
    return float(np.mean(tail)) if completed and not diverging else np.inf


def race(starts: list, run: Callable) -> tuple[tuple, list[Pilot]]:
    """``(the start whose pilot scored lowest, the pilots)``; stops at an interrupted pilot (Ctrl-C),
    whose start it returns."""
    pilots = []
    for start in starts:
        pilots.append(run(*start))
        if pilots[-1].outcome.status == "interrupted":
            return start, pilots
    return starts[int(np.argmin([p.score for p in pilots]))], pilots


def simple_start(target: Target, like: Target) -> tuple[Target, jax.Array, jax.Array]:
    """NumPyro's init point with scale 0.1, in the model's frame held with the same structure as
    ``like``'s (a vector or a matrix scale), so the pilot reuses the fit's compiled loop."""
    return _simple_start(target, matrix=like.frame.is_matrix)


@setup_jit(static_argnames=("matrix",))
def _simple_start(target: Target, matrix: bool) -> tuple[Target, jax.Array, jax.Array]:
    """:func:`simple_start` as one program: op by op it compiled 12 small XLA programs in a
    process's first fit (~0.35 s of CPU on a loaded 2-core machine, measured)."""
    loc, scale_tril = simple_gaussian(target)
    if matrix:
        target = target.in_frame(Frame.identity(target.dim, loc.dtype, matrix=True))
    return target, loc, scale_tril


def starting_point(key: jax.Array, target: Target, family: Family, objective: Objective, init: Any) -> Start:
    """The initial Gaussian and the frame to fit in (:class:`Start`).

    ``init`` is ``vt.fit``'s: ``"laplace"``, ``"median"`` or ``(loc, scale_tril)`` in the model's
    flat unconstrained space. The fit runs in the frame of the initial Gaussian, so Adam's steps
    are in units of posterior sds. ``whiten="full"`` (affine-invariant families) also undoes the
    correlations and q starts at N(0, I), but only when the initial Gaussian sits at a mode
    (:func:`vitools.laplace.is_mode`): a Laplace factor taken in a funnel's neck distorts the frame
    (radon, reverse KL: w1 0.27-0.71 in the full frame, 0.12 in the diagonal one), while at a
    true mode it is what forward KL needs on a ridge (bad_scaling, correlation -0.9997: w1 0.04
    against 0.04-1.1 over 5 seeds). Otherwise, and for ``"diagonal"``, the frame is the initial
    sds: a family keeps its structure (mean-field stays mean-field in the model's space) and q
    starts at N(0, a correlation-like factor). The "median" init's scale 0.1 says nothing of the
    posterior, so its frame stays the model's.
    """
    if isinstance(init, str):
        loc, scale_tril, at_mode, informed, grad_evals = initial_gaussian(
            target, key, init, _structure(family, objective), early=not objective_hooks(objective).races_start
        )
    else:
        loc, scale_tril = (jnp.asarray(a) for a in init)
        if loc.shape != (target.dim,) or scale_tril.shape != (target.dim, target.dim):
            raise ValueError(
                f"init=(loc, scale_tril) must have shapes ({target.dim},) and ({target.dim}, {target.dim}) "
                f"(the model's flat unconstrained dimension), got {loc.shape} and {scale_tril.shape}"
            )
        at_mode, informed, grad_evals = None, True, 0  # at_mode: checked below if the frame could use it
    whiten = family_hooks(family).whiten
    grad_evals = int(grad_evals)  # waits for the start's program: its time is the init's, not the loop's
    if not whiten or (isinstance(init, str) and init == "median"):  # the model's frame, whatever the seed
        return Start(target, loc, scale_tril, bool(informed), grad_evals)
    if whiten == "full" and at_mode is None:
        at_mode = second_order(is_mode, target, loc, scale_tril)
        grad_evals += target.dim  # its Hessian
    full = jnp.asarray(False if at_mode is None or whiten != "full" else at_mode)
    framed = _into_frame(target, loc, scale_tril, jnp.asarray(informed), full, matrix=whiten == "full")
    return Start(*framed, bool(informed), grad_evals)


@setup_jit(static_argnames=("matrix",))
def _into_frame(
    target: Target, loc: jax.Array, scale_tril: jax.Array, informed: jax.Array, full: jax.Array, matrix: bool
):
    """``(target, loc, scale_tril)`` in the frame of N(loc, scale_tril scale_trilᵀ): its full
    factor where ``full``, else its sds; an uninformed start (``informed`` False: NumPyro's simple
    one, whose scale says nothing of the posterior) keeps the target's frame.

    The frame's structure depends only on the static ``matrix`` (the family whitens ``"full"``),
    never on ``informed`` or ``full``, which may change with the seed: a matrix frame holds the
    factor, ``diag(sds)`` or the identity. With a vector frame for the sds and a matrix for the
    factor, the second seed of non-centred eight schools (fullrank, reverse KL, 2000 steps; seed 0
    at no mode, seeds 1-3 at one) compiled the loop, its pilots and the set-up again: 2.75 s
    against 0.05 s for seeds 2 and 3 (measured). A diagonal matrix maps draws as its vector does
    (the zero entries add exact zeros), at the cost of a matrix-vector product per draw.

    One program: run op by op, these few lines compiled 16 small XLA programs, ~0.25 s of a
    process's first fit (measured).
    """
    sds = jnp.sqrt(jnp.sum(scale_tril**2, axis=-1))
    correlation_factor = scale_tril / sds[:, None]
    if matrix:
        identity = jnp.eye(target.dim, dtype=scale_tril.dtype)
        scale = jnp.where(full, scale_tril, jnp.diag(sds))
        inner = jnp.where(full, identity, correlation_factor)
        scale = jnp.where(informed, scale, identity)
    else:
        scale, inner = jnp.where(informed, sds, jnp.ones_like(sds)), correlation_factor
    framed = target.in_frame(target.frame.compose(jnp.where(informed, loc, jnp.zeros_like(loc)), scale))
    # Uninformed: the same frame as target's, held as `scale` is; q starts where it was given.
    start = jnp.where(informed, jnp.zeros_like(loc), framed.frame.inverse(target.frame.forward(loc)))
    return framed, start, jnp.where(informed, inner, scale_tril)


def prefetch_loop(
    key: jax.Array,
    target: Target,
    family: Family,
    objective: Objective,
    init: Any,
    optimizer: Any,
    chunk_size: int,
    num_steps: int,
    programs: Any = None,
) -> bool:
    """Start compiling ``vt.fit``'s loop in a background thread (:meth:`ProgramCache.prefetch`)
    before :func:`starting_point` runs, so the two compile at once.

    The loop's shapes are known before its start: the frame's structure depends on the family
    and ``init`` alone (:func:`_into_frame`), never on the start's values. ``key`` is ``vt.fit``'s
    (its shape and dtype are used); ``objective`` the one the loop runs (after ``resolve``);
    ``num_steps`` the fit's budget, which picks the optimisation level
    (:func:`vitools.engine.quick_compile`). The pilots of the start race run the same program.
    Families whose ``init`` cannot be traced (NumPyro autoguides set themselves up on their first
    call) are skipped: returns False, as when the program is already kept.

    Measured, a fresh process's first default ``vt.fit`` (fullrank, Laplace init) of the engine
    benchmark's logistic regressions: see ``benchmarks/results/first_fit.md``.
    """
    whiten = family_hooks(family).whiten
    dtype = target.initial_point.dtype
    loc = jax.ShapeDtypeStruct((target.dim,), dtype)
    scale_tril = jax.ShapeDtypeStruct((target.dim, target.dim), dtype)
    framed = whiten and not (isinstance(init, str) and init == "median")

    def loop_args(key, target, loc, scale_tril):
        if framed:
            full = jnp.zeros((), bool)
            target, loc, scale_tril = _into_frame(
                target, loc, scale_tril, full, full, matrix=whiten == "full"
            )
        run_key = jax.random.split(key)[1]
        params = family.init(jax.random.fold_in(run_key, 1), target, loc, scale_tril)
        carried = objective_state(objective, jax.random.fold_in(run_key, 2), params, family, target)
        state = init_state(run_key, params, optimizer, 0.01, target.model_params, carried)
        return state, target

    try:
        state, framed_target = jax.eval_shape(
            loop_args, jax.ShapeDtypeStruct(key.shape, key.dtype), target, loc, scale_tril
        )
    except Exception:  # an init that needs concrete values: the loop compiles when it is first run
        return False
    steps = jax.ShapeDtypeStruct((), jnp.int32)
    args = (state, steps, steps, objective, family, framed_target)
    quick = quick_compile(num_steps, objective, framed_target)
    return (PROGRAMS if programs is None else programs).prefetch(
        args, optimizer, chunk_size, MAX_CHUNKS_PER_CALL, quick
    )


def _structure(family: Family, objective: Objective) -> str:
    """The covariance structure the Laplace start scores its candidates in (:mod:`vitools.laplace`).

    A diagonal family (hook ``structure == "diagonal"``) fitted by a mode-seeking objective
    starts from the conditional sds, the reverse-KL projection of a Gaussian onto diagonal ones;
    a mass-covering objective (``objective.mass_covering``) from the marginal sds, its own
    projection. Measured on the zoo, mean-field w1 at 2000 steps, conditional vs marginal start:
    reverse KL radon 0.19 vs 0.77, stochastic_volatility 0.07 vs 0.10, gp_poisson 0.31 vs 0.34;
    forward KL collinear 0.13 vs 0.06, bad_scaling 0.68 vs 0.54, gaussian_100 0.50 vs 0.45.
    """
    if family_hooks(family).structure == "diagonal" and not objective_hooks(objective).mass_covering:
        return "diagonal"
    return "full"
