r"""The optimisation step, pure and compiled: the low layer under :mod:`vitools.engine`.

:func:`make_step` builds one step of an objective on a family for a target (``state ->
(state, (loss, info))``, with the learning-rate schedule and the non-finite guard), :func:`run_chunk`
runs ``chunk_size`` of them in one ``lax.scan`` and :func:`run_chunks` a traced number of chunks in
one program; :class:`FitState` is what they carry and :func:`init_state` the state before the first
step. Every input is explicit and nothing here touches the host, so many fits vmap into one program;
the host loop that compiles and calls them (progress, early stopping, Ctrl-C) is :mod:`vitools.engine`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vitools.compiling import setup_jit
from vitools.families.base import Family
from vitools.objectives.base import Objective, check_subsampling, objective_hooks
from vitools.targets import Target

__all__ = [
    "FitState",
    "default_optimizer",
    "init_state",
    "learning_rate_factor",
    "make_step",
    "objective_state",
    "run_chunk",
    "run_chunks",
]


class FitState(NamedTuple):
    params: Any  # the family's parameters
    opt_state: Any  # the optimizer's state of (params, model_params)
    key: jax.Array
    step: jax.Array  # steps applied so far
    nonfinite: jax.Array  # a non-finite loss or gradient was met; params are the last finite ones
    peak_learning_rate: jax.Array  # scheduled into the optimizer when it exposes a learning rate
    model_params: dict  # the target's numpyro.param sites (unconstrained), optimised with q
    objective_state: Any = ()  # the objective's own (ObjectiveHooks.init_state); () for most


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


@setup_jit(static_argnums=(2,))  # one program, not a few op-by-op compilations
def init_state(key, params, optimizer, peak_learning_rate, model_params=None, objective_state=()) -> FitState:
    """The state before the first step; ``model_params`` are the target's ``numpyro.param``
    values (unconstrained, ``Target.model_params``), optimised alongside ``params``;
    ``objective_state`` is the objective's own (:func:`objective_state`)."""
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
        objective_state,
    )


def objective_state(objective: Objective, key: jax.Array, params: Any, family: Family, target: Target) -> Any:
    """The objective's state before the first step (``ObjectiveHooks.init_state``), or ``()``."""
    init = objective_hooks(objective).init_state
    return () if init is None else init(key, params, family, target)


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

    The objective's optional hooks (:class:`~vitools.objectives.ObjectiveHooks`) shape the step:
    ``stateful_loss`` replaces ``loss`` and threads the objective's state and the budget's
    progress; ``update`` replaces the gradient and the optimizer by the objective's own move.

    Data subsampling: when the target's model subsamples (``target.subsamples``), each step
    draws one fresh minibatch (:meth:`Target.minibatch`) from its key, shared by all the
    objective's draws of q in the step, so a step costs what the minibatch costs whatever N.
    A target with a :attr:`~vitools.targets.Target.snapshot` gives the minibatch with the Taylor
    control variate (:mod:`vitools.control_variate`).
    Targets that do not subsample get the step's key as before (same draws, same results).

    Raises:
        ValueError: the target subsamples and the objective needs the full joint
            (:func:`~vitools.objectives.base.check_subsampling`), before anything is traced.
    """

    hooks = objective_hooks(objective)
    check_subsampling(objective, target)

    def on_batch(target, key):
        """The step's target (a fresh minibatch when the model subsamples) and its own key."""
        if not target.subsamples:
            return target, key
        batch_key, key = jax.random.split(key)
        return target.minibatch(batch_key), key

    def loss_fn(trainable, key, objective_state, progress):
        params, model_params = trainable
        framed, key = on_batch(target.with_model_params(model_params), key)
        if hooks.stateful_loss is None:
            loss, info = objective.loss(key, params, family, framed)
            return loss, (info, objective_state)
        loss, info, objective_state = hooks.stateful_loss(
            key, params, family, framed, objective_state, progress
        )
        return loss, (info, objective_state)

    def gradient_step(state, key, num_steps, progress):
        """The objective's gradient handed to the optimizer: new (params, model_params, opt_state)."""
        trainable = (state.params, state.model_params)
        (loss, (info, objective_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, key, state.objective_state, progress
        )
        opt_state = _schedule(state.opt_state, state.peak_learning_rate, state.step, num_steps)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        params, model_params = optax.apply_updates(trainable, updates)
        return loss, info, objective_state, (params, model_params, opt_state), grads

    def closed_form_step(state, key, num_steps, progress):
        """The objective's own update of q; no gradient, the optimizer's state is left as it is."""
        framed, key = on_batch(target.with_model_params(state.model_params), key)
        params, loss, info, objective_state = hooks.update(
            key, state.params, family, framed, state.objective_state, progress
        )
        return loss, info, objective_state, (params, state.model_params, state.opt_state), params

    def step(state: FitState, num_steps: jax.Array):
        key, step_key = jax.random.split(state.key)
        progress = state.step / jnp.maximum(num_steps, 1)
        run = gradient_step if hooks.update is None else closed_form_step
        loss, info, objective_state, (params, model_params, opt_state), checked = run(
            state, step_key, num_steps, progress
        )
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(checked)])
        )
        active = (state.step < num_steps) & ~state.nonfinite
        apply = active & finite

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
            keep(objective_state, state.objective_state),
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
