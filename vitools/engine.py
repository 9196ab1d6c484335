r"""The compiled optimisation loop.

Low layer, every input explicit: :func:`make_step` builds one pure step, :func:`run_chunk` runs
``chunk_size`` of them in one ``lax.scan``. Both are pure functions of a :class:`FitState`, so
many fits vmap into one program (``jax.vmap(run_chunk, in_axes=(0, None, ...))`` over seeds or
datasets) and the draws inside an objective are a ``vmap`` axis that ``jax.sharding`` can split
across devices. :func:`run_chunks` runs a traced number of chunks in one call. :func:`optimize` is
the host loop around it: progress between calls, early stopping, Ctrl-C, and the non-finite guard's
report.

Chunks per call: a call costs ~0.3 ms on the host and in the runtime whatever it runs (measured
on a 2-core CPU), which on a 10-row model is 2-3 µs on each of a 100-step chunk's 10 µs steps.
So the host loop starts with one chunk per call and then runs as many as fit in
``CALL_SECONDS`` (at most ``MAX_CHUNKS_PER_CALL``), without a recompilation: the number of chunks
is traced. The steps and their results are the same whatever the grouping; a run that may stop
on convergence (:class:`ConvergenceRule`) runs one chunk per call, so where it stops does not
depend on timing.

Non-finite guard: a step whose loss or gradient is not finite is not applied; the state keeps the
last finite parameters and sets ``nonfinite``, after which every step is a no-op.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitools import validate
from vitools.families.base import Family
from vitools.objectives.base import Objective
from vitools.progress import Progress
from vitools.targets import Target

__all__ = [
    "PROGRAMS",
    "Convergence",
    "ConvergenceRule",
    "RelativeChangeRule",
    "StoppingRule",
    "FitState",
    "Outcome",
    "ProgramCache",
    "default_optimizer",
    "make_step",
    "optimize",
    "run_chunk",
    "run_chunks",
]

CALL_SECONDS = 0.25  # target wall time of one call once steps are timed: progress, Ctrl-C
MAX_CHUNKS_PER_CALL = 20
# ConvergenceRule's defaults, measured on 13 zoo models + 9 corpus posteriors x both KL directions
# (benchmarks/results/convergence_candidates.md): a 300-step window stopped forward-KL fits at
# the 400-step minimum with W1 2-5x the fixed 2000-step fit's (eight schools centered, radon,
# earnings, kidiq); 500 steps: median 750 steps, W1/fixed median 1.006, within 2 draw-se in 76%.
# Without the cool-down W1/fixed had median 1.20 (the stop came at a high learning rate).
WINDOW = 500
TOL = 0.05
MIN_STEPS = 500
COOLDOWN = 0.25


class FitState(NamedTuple):
    params: Any  # the family's parameters
    opt_state: Any  # the optimizer's state of (params, model_params)
    key: jax.Array
    step: jax.Array  # steps applied so far
    nonfinite: jax.Array  # a non-finite loss or gradient was met; params are the last finite ones
    peak_learning_rate: jax.Array  # scheduled into the optimizer when it exposes a learning rate
    model_params: dict  # the target's numpyro.param sites (unconstrained), optimised with q


@functools.cache
def default_optimizer() -> optax.GradientTransformation:
    """Adam whose learning rate sits in its state, so the engine can schedule it without a
    recompilation for each learning rate or number of steps (one cached object per process)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


def learning_rate_factor(step: jax.Array, num_steps: jax.Array) -> jax.Array:
    """Linear warm-up over the first 5% of steps, then cosine decay to 2% of the peak."""
    progress = step / jnp.maximum(num_steps, 1)
    warmup = jnp.clip(progress / 0.05, 0.0, 1.0)
    decay = 0.02 + 0.98 * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip((progress - 0.05) / 0.95, 0.0, 1.0)))
    return jnp.where(progress < 0.05, jnp.maximum(warmup, 0.01), decay)


@functools.partial(jax.jit, static_argnums=(2,))  # one program, not a few op-by-op compilations
def init_state(key, params, optimizer, peak_learning_rate, model_params=None) -> FitState:
    """The state before the first step; ``model_params`` are the target's ``numpyro.param``
    values (unconstrained, ``Target.model_params``), optimised alongside ``params``."""
    model_params = {} if model_params is None else model_params
    opt_state = optimizer.init((params, model_params))
    return FitState(
        params,
        opt_state,
        key,
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
        jnp.asarray(peak_learning_rate, jnp.result_type(float)),
        model_params,
    )


def make_step(
    objective: Objective, family: Family, target: Target, optimizer: optax.GradientTransformation
) -> Callable[[FitState, jax.Array], tuple[FitState, tuple[jax.Array, dict]]]:
    """One optimisation step ``step(state, num_steps) -> (state, (loss, info))``.

    Steps at or beyond ``num_steps``, and all steps after a non-finite one, leave the state as
    it is and report NaN, so a fixed-size chunk can run past the end of the budget. Such steps
    still compute their gradient and select the old state (``jnp.where``) instead of branching
    with ``lax.cond``: on a 10-row model, one chunk per call, the loop took 1.9x the bare loop's
    time with the branch and 1.6x with the select (measured); the price is up to
    ``chunk_size - 1`` discarded steps in a last partial chunk.
    """

    def loss_fn(trainable, key):
        params, model_params = trainable
        return objective.loss(key, params, family, target.with_model_params(model_params))

    def step(state: FitState, num_steps: jax.Array):
        key, step_key = jax.random.split(state.key)
        trainable = (state.params, state.model_params)
        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, step_key)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        active = (state.step < num_steps) & ~state.nonfinite
        apply = active & finite
        opt_state = _schedule(state.opt_state, state.peak_learning_rate, state.step, num_steps)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        params, model_params = optax.apply_updates(trainable, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)

        new_state = FitState(
            keep(params, state.params),
            keep(opt_state, state.opt_state),
            key,
            state.step + apply.astype(jnp.int32),
            state.nonfinite | (active & ~finite),
            state.peak_learning_rate,
            keep(model_params, state.model_params),
        )
        report = jax.tree.map(lambda x: jnp.where(active, x, jnp.nan), (loss, info))
        return new_state, report

    return step


def _schedule(opt_state, peak, step, num_steps):
    """Set the learning rate of an ``optax.inject_hyperparams`` state to the schedule's value."""
    hyperparams = getattr(opt_state, "hyperparams", None)  # optax.inject_hyperparams states
    if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
        rate = peak * learning_rate_factor(step, num_steps)
        hyper = dict(
            opt_state.hyperparams, learning_rate=rate.astype(opt_state.hyperparams["learning_rate"].dtype)
        )
        return opt_state._replace(hyperparams=hyper)
    return opt_state


def run_chunk(state, num_steps, objective, family, target, optimizer, chunk_size: int):
    """``chunk_size`` steps in one ``lax.scan``: ``(state, (losses, infos))``, pure."""
    step = make_step(objective, family, target, optimizer)
    return jax.lax.scan(lambda s, _: step(s, num_steps), state, None, length=chunk_size)


_run_chunk_jit = jax.jit(run_chunk, static_argnums=(5, 6))


def run_chunks(state, num_steps, num_chunks, objective, family, target, optimizer, chunk_size, max_chunks):
    """``num_chunks`` (traced, at most ``max_chunks``) runs of :func:`run_chunk` in one program.

    Returns ``(state, (losses, infos))`` with reports of shape ``(max_chunks, chunk_size)``; the
    rows past ``num_chunks`` are NaN.
    """

    def chunk(state):  # jitted: the shapes below and the loop share one trace (0.4 s, measured)
        return _run_chunk_jit(state, num_steps, objective, family, target, optimizer, chunk_size)

    shapes = jax.eval_shape(chunk, state)[1]
    empty = jax.tree.map(lambda x: jnp.full((max_chunks, *x.shape), jnp.nan, x.dtype), shapes)

    def body(index, carry):
        state, reports = carry
        state, report = chunk(state)
        put = functools.partial(jax.lax.dynamic_update_index_in_dim, index=index, axis=0)
        return state, jax.tree.map(lambda buffer, new: put(buffer, new), reports, report)

    return jax.lax.fori_loop(0, num_chunks, body, (state, empty))


class ProgramCache:
    """The compiled chunk programs of this process, least recently used first out.

    One program per (pytree structure, shapes, dtypes, optimizer, chunk size). We keep the
    executables ourselves, rather than leaving them to ``jax.jit``'s cache, to time compilation
    apart from running (``Fit.compile_time``) and to count compilations (tests of compile-once).
    Bounded: a long session fitting many models would otherwise keep every program (each holds
    its compiled code and the constants closed over, e.g. a model's data). 64 programs cover
    the accuracy benchmark's 13 models x 9 configurations per model at one budget without an
    eviction within a model.

    Args:
        max_size: programs kept, a positive integer.
    """

    def __init__(self, max_size: int = 64):
        self.max_size = validate.count(max_size, "max_size")
        self._programs: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.num_compiled = 0  # programs compiled since the cache was made, evicted ones included

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, args: tuple, optimizer, chunk_size: int, max_chunks: int) -> tuple[Any, float]:
        """The compiled :func:`run_chunks` for these arguments ``(state, num_steps, num_chunks,
        objective, family, target)`` and the seconds spent compiling it (0 when kept)."""
        leaves, treedef = jax.tree.flatten(args)
        signature = (
            treedef,
            tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves),
            optimizer,
            chunk_size,
            max_chunks,
        )
        if signature in self._programs:
            self._programs.move_to_end(signature)
            return self._programs[signature], 0.0
        start = time.perf_counter()
        jitted = jax.jit(run_chunks, static_argnums=(6, 7, 8))
        executable = jitted.lower(*args, optimizer, chunk_size, max_chunks).compile()
        self._programs[signature] = executable
        self.num_compiled += 1
        while len(self._programs) > self.max_size:
            self._programs.popitem(last=False)
        return executable, time.perf_counter() - start


PROGRAMS = ProgramCache()  # the process's programs; `optimize` takes another with `programs=`


def compiled_chunks(
    state, num_steps, objective, family, target, optimizer, chunk_size, max_chunks, programs=None
):
    """The compiled :func:`run_chunks` for these arguments (called as ``executable(state,
    num_steps, num_chunks, objective, family, target)``) and the seconds spent compiling it."""
    args = (state, num_steps, jnp.ones((), jnp.int32), objective, family, target)
    return (PROGRAMS if programs is None else programs).get(args, optimizer, chunk_size, max_chunks)


def num_compilations() -> int:
    """How many chunk programs this process has compiled (for tests of compile-once)."""
    return PROGRAMS.num_compiled


class Convergence(NamedTuple):
    """Whether a fit's loss had stopped falling, and the evidence (host floats, nats).

    Attributes:
        converged: the rule held over the window (False when it could not be assessed).
        decrease: the fitted fall of the loss over the window, ``-slope x window`` in nats
            (negative: the loss rose); NaN when not assessed.
        decrease_se: its standard error in nats (NaN when not assessed).
        window: steps in the window (0: fewer steps than the rule's minimum, or non-finite
            losses in the window: not assessed).
        step: the number of steps done when it was assessed.
    """

    converged: bool
    decrease: float
    decrease_se: float
    window: int
    step: int

    def __str__(self) -> str:
        if self.window == 0:
            return f"not converged (too few finite steps to tell at step {self.step})"
        word = "converged" if self.converged else "not converged"
        return (
            f"{word} (loss fell {self.decrease:.3g} ± {self.decrease_se:.2g} nats over steps "
            f"{self.step - self.window}-{self.step})"
        )


@dataclasses.dataclass(frozen=True)
class ConvergenceRule:
    r"""Stop when the loss is flat within its Monte Carlo noise: a trend test on per-step losses.

    After each chunk, once ``min_steps`` steps are done, the last ``window`` per-step losses
    :math:`\ell_t` are regressed on the step, :math:`\ell_t = a + b t + \epsilon_t` (ordinary least
    squares), giving the fall over the window :math:`D = -b W` and its standard error
    :math:`s_D = W \hat\sigma / \sqrt{\sum_t (t - \bar t)^2}`. The fit has converged when

    .. math:: D \le z\, s_D \quad\text{and}\quad D < \mathrm{tol},

    i.e. the loss no longer falls by more than its noise can hide, *and* by at most ``tol`` nats
    over the window. The first condition alone would stop a noisy forward-KL loss that still
    falls by nats per window; the second alone would stop on a loss whose noise is large compared
    with ``tol`` but whose trend we cannot see. Per-step losses are independent given the
    parameters, but the parameters drift, so residuals are positively autocorrelated and
    :math:`s_D` is too small: that makes the rule stop later, not earlier.

    Both losses are in nats up to a constant: the negative ELBO (reverse KL: its fall is the fall
    of KL(q‖p)) and the cross-entropy :math:`-E_p \log q` (forward KL: its fall is that of
    KL(p‖q)), so ``tol`` bounds the KL still gained per window whatever the model's scale. A
    relative rule is not: Stan ADVI's (Kucukelbir et al. 2017, JMLR 18(14): mean or median of
    the relative change of the ELBO over a circular buffer below 0.01) stops anywhere within 1%
    of a loss of thousands of nats, and its relative change of a loss near 0 is noise.

    Args:
        window: steps regressed, an integer >= 3.
        z: how many standard errors of a fall count as no fall, a positive number.
        tol: the largest fall over the window, nats, that counts as flat; a positive number.
        min_steps: no stop before this many steps (at least ``window`` are needed anyway).
        cooldown: after the rule holds at step k, run ``cooldown x k`` more steps (rounded up
            to chunks, within the budget) with the learning rate decayed to 2% of its peak, as
            the full budget would; 0: stop at once.

    Raises:
        ValueError, TypeError: an argument is out of range or not a number.
    """

    window: int = WINDOW
    z: float = 1.0
    tol: float = TOL
    min_steps: int = MIN_STEPS
    cooldown: float = COOLDOWN

    def __post_init__(self):
        validate.count(self.window, "window", minimum=3)  # a slope and a residual
        validate.positive(self.z, "z")
        validate.positive(self.tol, "tol")
        validate.count(self.min_steps, "min_steps")
        validate.at_least(self.cooldown, "cooldown", 0.0)

    def check(self, losses: np.ndarray) -> Convergence:
        """The rule on the per-step losses so far, ``(steps,)`` (nats): a :class:`Convergence`."""
        losses = np.asarray(losses, np.float64)
        steps = len(losses)
        tail = losses[-self.window :]
        if steps < max(self.min_steps, self.window) or not np.all(np.isfinite(tail)):
            return Convergence(False, math.nan, math.nan, 0, steps)
        x = np.arange(self.window) - (self.window - 1) / 2
        sxx = float(x @ x)
        slope = float(x @ (tail - tail.mean())) / sxx
        residuals = tail - tail.mean() - slope * x
        sigma = math.sqrt(float(residuals @ residuals) / (self.window - 2))
        decrease, se = -slope * self.window, self.window * sigma / math.sqrt(sxx)
        converged = decrease <= self.z * se and decrease < self.tol  # <=: a loss exactly flat
        return Convergence(bool(converged), decrease, se, self.window, steps)

    def final(self, losses: np.ndarray) -> Convergence:
        """The verdict on a run that used its whole budget: not converged only where the loss still
        falls by more than ``tol`` *and* by more than 2 z standard errors over the last window.

        :meth:`check` is strict so that a run does not stop early: on a flat loss the fall exceeds
        1 se one time in six, which as a verdict would call one converged fit in six unconverged
        (a Gaussian fitted exactly read "not converged": fell 3.5e-4 ± 2.6e-4 nats, measured).
        """
        verdict = self.check(losses)
        if verdict.window == 0 or verdict.converged:
            return verdict
        falling = verdict.decrease >= self.tol and verdict.decrease > 2 * self.z * verdict.decrease_se
        return verdict._replace(converged=not falling)


@dataclasses.dataclass(frozen=True)
class RelativeChangeRule:
    r"""Stan ADVI's rule (Kucukelbir et al. 2017, JMLR 18(14); Stan's ``tol_rel_obj``), on chunks.

    Every ``every`` steps the mean loss of those steps estimates the ELBO, :math:`L_k`; the
    relative change :math:`|L_k - L_{k-1}| / |L_k|` goes into a circular buffer of the last
    ``buffer`` changes; converged when their mean or their median is below ``tol``. Stan sizes the
    buffer ``max(0.1 x max_iter / eval_elbo, 2)``: 2 for 2000 steps at every 100, the default
    here. Kept for comparison with :class:`ConvergenceRule` (``bench_convergence.py``): it is
    scale-dependent (a loss near 0 never settles, one of thousands of nats settles at once).

    Args:
        tol: relative change, a positive number. every: steps per ELBO estimate. buffer: changes
            kept, a positive integer. min_steps: no stop before this many steps.

    Raises:
        ValueError, TypeError: an argument is out of range or not a number.
    """

    tol: float = 0.01
    every: int = 100
    buffer: int = 2
    min_steps: int = 300  # as measured in bench_convergence.py
    cooldown: float = 0.0

    def __post_init__(self):
        validate.positive(self.tol, "tol")
        validate.count(self.every, "every")
        validate.count(self.buffer, "buffer")
        validate.count(self.min_steps, "min_steps")

    def check(self, losses: np.ndarray) -> Convergence:
        """The rule on the per-step losses so far, ``(steps,)``: ``decrease`` and ``decrease_se``
        are the last ELBO estimate's fall and NaN (this rule has no standard error)."""
        losses = np.asarray(losses, np.float64)
        num = len(losses) // self.every
        means = losses[: num * self.every].reshape(num, self.every).mean(1)
        if len(losses) < self.min_steps or num < self.buffer + 1 or not np.all(np.isfinite(means)):
            return Convergence(False, math.nan, math.nan, 0, len(losses))
        changes = np.abs(np.diff(means)[-self.buffer :]) / np.abs(means[-self.buffer :])
        converged = np.mean(changes) < self.tol or np.median(changes) < self.tol
        window = self.every * (self.buffer + 1)
        return Convergence(bool(converged), float(means[-2] - means[-1]), math.nan, window, len(losses))

    def final(self, losses: np.ndarray) -> Convergence:
        """As :meth:`check` (Stan has no separate verdict after the budget)."""
        return self.check(losses)


@runtime_checkable
class StoppingRule(Protocol):
    """What :func:`optimize` needs of a convergence rule: ``check(losses) -> Convergence`` on the
    host's per-step losses ``(steps,)``, and ``cooldown``, the steps run after it holds as a
    fraction of those done (0: stop at once)."""

    cooldown: float

    def check(self, losses: np.ndarray) -> Convergence: ...

    def final(self, losses: np.ndarray) -> Convergence:
        """The verdict after the whole budget (may be more lenient than ``check``)."""
        ...


class Outcome(NamedTuple):
    state: FitState
    losses: np.ndarray
    trace: dict[str, np.ndarray]
    status: str
    elapsed: float
    compile_time: float
    convergence: Convergence | None  # None: no rule given


def optimize(
    state: FitState,
    num_steps: int,
    objective: Objective,
    family: Family,
    target: Target,
    optimizer: optax.GradientTransformation,
    *,
    chunk_size: int = 100,
    progress: bool = True,
    convergence: StoppingRule | None = None,
    stop: bool = True,
    desc: str = "fit",
    programs: ProgramCache | None = None,
) -> Outcome:
    """Run compiled chunks until ``num_steps`` steps, convergence, a non-finite step or Ctrl-C.

    Args:
        convergence: the rule that says whether the loss has converged (None: no rule, no stop,
            ``Outcome.convergence`` is None). It is checked on the host after every chunk.
        stop: with a rule, stop once it holds (after its cool-down, status ``"converged"``);
            False: run the whole budget and only report (status ``"completed"``).
        programs: where compiled programs are kept (None: the process's :data:`PROGRAMS`).

    ``Outcome.convergence`` is the rule's verdict when it stopped the run, else its verdict on
    the last window.
    """
    total = jnp.asarray(num_steps, jnp.int32)
    executable, compile_time = compiled_chunks(
        state, total, objective, family, target, optimizer, chunk_size, MAX_CHUNKS_PER_CALL, programs
    )
    bar = Progress(num_steps, desc, enabled=progress)
    losses, infos, status = [], [], "completed"
    watching = convergence is not None and stop
    verdict = None
    start = time.perf_counter()
    done = int(state.step)  # the host keeps the count: one device sync per call, not two
    chunks_left, per_call = math.ceil(num_steps / chunk_size), 1
    try:
        while chunks_left > 0:
            count = min(per_call, chunks_left)
            tic = time.perf_counter()
            new_state, (loss, info) = executable(state, total, np.int32(count), objective, family, target)
            loss, info, now, nonfinite = jax.device_get((loss, info, new_state.step, new_state.nonfinite))
            seconds = time.perf_counter() - tic
            state, chunks_left = new_state, chunks_left - count
            keep = int(now) - done + int(nonfinite)  # applied steps, then the failing one
            done = int(now)
            losses.append(loss[:count].reshape(-1)[:keep])
            infos.append({k: v[:count].reshape(-1)[:keep] for k, v in info.items()})
            shown = {"loss": float(np.mean(losses[-1]))}
            shown.update({k: float(np.mean(v)) for k, v in infos[-1].items()})
            bar.update(done, **shown)
            if nonfinite:
                status = "nonfinite"
                break
            if watching:  # one chunk per call: the stopping point does not depend on timing
                verdict = convergence.check(np.concatenate(losses))
                if verdict.converged:
                    watching, status = False, "converged"
                    tail = math.ceil(convergence.cooldown * done / chunk_size) * chunk_size
                    end = min(num_steps, done + tail)
                    total, chunks_left = jnp.asarray(end, jnp.int32), math.ceil((end - done) / chunk_size)
                    if chunks_left == 0:
                        break
                    continue
            if not watching:
                per_call = int(np.clip(CALL_SECONDS * count / max(seconds, 1e-9), 1, MAX_CHUNKS_PER_CALL))
    except KeyboardInterrupt:
        status = "interrupted"
    elapsed = time.perf_counter() - start
    losses_all = np.concatenate(losses) if losses else np.zeros(0)
    trace = {"loss": losses_all}
    for key in infos[0] if infos else ():
        trace[key] = np.concatenate([i[key] for i in infos])
    if convergence is not None and status != "converged":
        verdict = convergence.final(losses_all)
    bar.close(status, loss=float(losses_all[-1]) if len(losses_all) else float("nan"))
    return Outcome(state, losses_all, trace, status, elapsed, compile_time, verdict)
