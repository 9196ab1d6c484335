"""The high layer: ``vt.fit(model, ...)``, which checks its options, picks the start and frame
(:mod:`vitools.start`), runs the compiled loop (:mod:`vitools.engine`) and returns a
:class:`~vitools.result.Fit`."""

from __future__ import annotations

import functools
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import optax

from vitools import alerts, control_variate, sharding, start, validate
from vitools.blas import one_blas_thread
from vitools.convergence import StoppingRule
from vitools.engine import optimize, quick_compile
from vitools.families import Family
from vitools.families.base import check_distribution, family_hooks
from vitools.objectives import Objective, objective_hooks
from vitools.objectives.base import check_subsampling
from vitools.options import checked_options, stopping_rule
from vitools.result import Fit, NonFiniteLossError
from vitools.stepping import default_optimizer, init_state, objective_state
from vitools.targets import INIT_ROWS, Target

__all__ = ["default_learning_rate", "default_rate", "fit", "races_starts", "target_of"]


@one_blas_thread
def fit(
    model: Callable | Target,
    *model_args: Any,
    objective: str | Objective = "reverse_kl",
    family: str | Family = "fullrank",
    num_steps: int = 2000,
    seed: int | None = None,
    key: jax.Array | None = None,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    init: str | tuple[jax.Array, jax.Array] = "laplace",
    tol: float | None = None,
    converge: bool | StoppingRule = True,
    on_nonfinite: str = "raise",
    progress: bool = True,
    chunk_size: int = 100,
    devices: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Fit:
    """Fit q to the posterior of a NumPyro model (or a :class:`Target`).

    A model with ``numpyro.plate(..., subsample_size=B)`` is fitted on a fresh minibatch of B rows
    a step (likelihood scaled by N / B, unbiased), so a step costs what B rows cost; the init runs
    on a fixed random :data:`~vitools.targets.INIT_ROWS` rows, the diagnostics, draws and
    predictions on all rows. Reverse KL and forward KL from draws take minibatches; objectives that
    need the full joint (``forward_kl``, ``iwae``, ``renyi``, ``chi2``, ``hybrid``, ``msc``,
    ``batch_and_match``) are refused. The gradient noise grows like sqrt(N / B), so a subsampled
    fit needs more steps or a larger B than a full-data one. Unless the model has ``numpyro.param``
    sites, the minibatch density carries the Taylor control variate of a snapshot of the full data
    (:mod:`vitools.control_variate`; its log density and gradient at the start moved by two
    quasi-Newton steps, three passes over all rows), which cancels most of that noise near the
    snapshot: at 10^6 rows q's mean ended 0.00-0.01 posterior sds off the mode against 1.01 (B =
    4096) and 3.78 (B = 256) without it (measured). q is the last iterate: a mean of the
    last half's iterates was no nearer the posterior at 2000 or 8000 steps and lagged at 500
    (10^6 rows, B = 4096; measured, ``benchmarks/results/subsample_average.md``).

    Args:
        model: a NumPyro model, or a Target (e.g. ``Target.from_log_density(fn, dim)``).
        *model_args: the model's positional arguments, as NumPyro's NUTS takes them: arrays,
            NumPy or pandas values, dicts of data, Python numbers (see :meth:`Target.from_model`).
        **kwargs: the model's keyword arguments, likewise.
        model_kwargs: the model's keyword arguments as a dict, for those whose names are also
            options of ``vt.fit`` (``init``, ``family``, ``seed``...); merged with ``**kwargs``.
        objective: ``"auto"`` (with ``family="auto"``: :func:`vitools.auto_fit` chooses both,
            escalating until the diagnostics say the fit can be trusted), a name of
            :data:`vitools.objectives.OBJECTIVES` (``"reverse_kl"``,
            ``"forward_kl"``, ``"renyi"``, ``"iwae"``, ``"chi2"``, ``"hybrid"``, ``"msc"``,
            ``"batch_and_match"``) or an Objective object. (Pathfinder is :func:`vitools.pathfinder`.)
        family: a name of :data:`vitools.families.FAMILIES` (``"meanfield"``, ``"fullrank"``,
            ``"lowrank"``, ``"iaf"`` and ``"coupling"`` (normalizing flows, for curved posteriors
            such as funnels), ``"mixture"`` (K Gaussians, for several modes, with forward KL)), a
            Family, or a NumPyro ``AutoContinuous`` guide.
        num_steps: the budget: at most this many optimisation steps (the learning-rate schedule
            spans it, so an early stop leaves part of the decay unused).
        seed: the one seed of the run (initialisation and every step): same seed, same result.
            None: 0, unless ``key`` is given.
        key: a JAX PRNG key to use instead of ``seed`` (for callers who manage their keys);
            ``vt.fit(..., seed=s)`` is ``vt.fit(..., key=jax.random.PRNGKey(s))``. Give one of
            the two.
        learning_rate: peak learning rate of the default Adam, with 5% linear warm-up and cosine
            decay; also scheduled into any ``optax.inject_hyperparams`` optimizer. None: the
            objective's rule times the family's scale (:func:`default_rate`; half the rate for
            the coupling flow).
        optimizer: an optax optimizer (default: Adam as above).
        init: ``"laplace"`` (path-selected Laplace approximation, see :mod:`vitools.laplace`;
            for mode-seeking objectives and ``num_steps >= 1000`` it races the simple start for
            100 pilot steps each, see ``vitools.start``), ``"median"`` (NumPyro's init point,
            scale 0.1) or ``(loc, scale_tril)`` in the model's flat unconstrained space. Except
            from the simple start, the fit runs in the frame of the initial scales
            (:mod:`vitools.frame`), so badly scaled models need no tuning.
        tol: the convergence rule's tolerance, in nats: the loss has converged when its fitted
            fall over the last 500 steps is below its standard error and below ``tol``
            (:class:`vitools.convergence.ConvergenceRule`; None: its default, 0.05).
        converge: True: stop once the rule holds (status ``"converged"``); False: run all
            ``num_steps`` (status ``"completed"``); either way ``fit.convergence`` says whether
            the loss had stopped falling. A :class:`vitools.convergence.StoppingRule` (e.g.
            ``convergence.RelativeChangeRule()``, Stan's) stops on that rule instead (``tol`` unused).
        on_nonfinite: ``"raise"`` (:class:`NonFiniteLossError`, carrying the fit) or ``"warn"``.
        progress: show progress (a bar on a terminal, periodic lines otherwise).
        chunk_size: steps per compiled chunk. Once a chunk is timed, a call runs as many chunks
            as fit in ``engine.CALL_SECONDS`` (progress and Ctrl-C between calls); early
            stopping checks after every chunk, one chunk per call.
        devices: where the loop runs. None: JAX's default device. ``"all"``: every visible
            device (every process's after ``jax.distributed.initialize``), with the data's rows
            split across them where they outnumber the draws and split evenly, else the draws
            (:func:`vitools.sharding.mesh_for`); a sequence of ``jax.Device`` likewise; a
            ``jax.sharding.Mesh`` with axes ``"draws"`` and/or ``"data"`` for any other split.
            One device changes nothing. The start (Laplace, pilots) runs on the default device.

    Returns:
        the fitted :class:`~vitools.result.Fit` (its ``params`` are in the frame's coordinates).

    Raises:
        vitools.validate.ArgumentError (a TypeError or ValueError): an option is invalid, or
            would be ignored (``learning_rate`` or ``optimizer`` with an objective that updates q
            in closed form: batch and match); the message names it.
        TypeError, ValueError: the model cannot be traced with its arguments (see
            :meth:`Target.from_model`), or the objective does not fit the target.
        NonFiniteLossError: the loss became NaN/inf and ``on_nonfinite="raise"``; it carries the
            fit with the last finite parameters.

    Examples:
        >>> fit = vt.fit(model, x, y=y, objective="forward_kl", family="fullrank", num_steps=2000)
        >>> draws = fit.sample(1000, seed=1)
    """
    if isinstance(objective, str) and objective == "auto" or isinstance(family, str) and family == "auto":
        return _auto(model, model_args, kwargs, model_kwargs, objective=objective, family=family,
                     num_steps=num_steps, seed=seed, key=key, progress=progress, learning_rate=learning_rate,
                     optimizer=optimizer, init=init, tol=tol, converge=converge, chunk_size=chunk_size,
                     devices=devices)  # fmt: skip
    options = checked_options(
        num_steps=num_steps, chunk_size=chunk_size, seed=seed, learning_rate=learning_rate,
        tol=tol, converge=converge, on_nonfinite=on_nonfinite, init=init, family=family,
        objective=objective, optimizer=optimizer, key=key,
    )  # fmt: skip
    num_steps, chunk_size, seed, learning_rate, tol, init, family, objective, key = (
        options[k]
        for k in (
            "num_steps",
            "chunk_size",
            "seed",
            "learning_rate",
            "tol",
            "init",
            "family",
            "objective",
            "key",
        )
    )
    seed = 0 if seed is None and key is None else seed  # recorded on the Fit (None: a key was given)
    key = validate.seed_or_key(seed, key)  # raises when both are given
    target = target_of(model, model_args, kwargs, model_kwargs)
    sharding.mesh_of(devices)  # a bad devices= fails before anything compiles

    hooks = objective_hooks(objective)
    rule = stopping_rule(options["converge"], tol, hooks.stopping_rule)
    check_subsampling(objective, target)  # before the start: a refusal compiles nothing
    if hooks.check_family is not None:  # before the start: a refusal compiles nothing
        hooks.check_family(family)
    if hooks.resolve is not None:  # what depends on the target, worked out once and checked early
        objective = hooks.resolve(target)
    num_density_evals = objective.num_density_evals(target.dim)
    if num_density_evals == 0:
        why = "it never evaluates the model's density"
        validate.no_param_sites(target.param_sites, objective.name, why, "objective")
    keys = start.fit_keys(key)  # one small program, not one per split and fold-in
    init_key, run_key, params_key = keys.init, keys.run, keys.params
    check_distribution(family, params_key, target)  # before the start, so a broken family fails fast
    laplace = isinstance(init, str) and init == "laplace"
    if laplace:
        alerts.warn_large_init(target.dim)
    optimizer = optimizer or default_optimizer()
    if devices is None and not target.subsamples:  # the loop compiles in a thread while the start runs
        start.prefetch_loop(key, target, family, objective, init, optimizer, chunk_size, num_steps)
    tic = time.perf_counter()
    announce = progress and laplace and target.dim >= alerts.LARGE_DIM
    if announce:  # the Laplace init is one compiled program: say what it does before it starts
        print(f"vitools: initialising (Laplace: L-BFGS path, up to 9 Hessians of {target.dim} x "
              f"{target.dim})...", file=sys.stderr, flush=True)  # fmt: skip
    model_target, subsampled = target, target.subsamples
    # A subsampling model's init runs on a fixed random INIT_ROWS rows a plate (Target.subset), its fit
    # on a fresh minibatch a step, everything else on all rows.
    start_target = target.subset(keys.init_rows, INIT_ROWS) if subsampled else target
    target, loc, scale_tril, informed, init_grad_evals = start.starting_point(
        init_key, start_target, family, objective, init
    )
    target = target.full_data()
    init_time = time.perf_counter() - tic  # compile included: the init is one program, compiled per model
    if announce:
        print(f"vitools: initialised in {init_time:.1f} s", file=sys.stderr, flush=True)
    tic = time.perf_counter()
    target, loc, snapshot_evals = control_variate.take_snapshot(target, loc, scale_tril, num_density_evals)
    if snapshot_evals:  # its passes over all rows; each step's minibatch at its point
        init_grad_evals, num_density_evals = init_grad_evals + snapshot_evals, num_density_evals + 1
        init_time += time.perf_counter() - tic  # part of the start
    params = family.init(params_key, target, loc, scale_tril)
    alerts.warn_large_family(family, params, target.dim)
    if learning_rate is None:
        learning_rate = default_rate(objective, family, target.dim)
    quick = quick_compile(num_steps, objective, target)  # the loop's optimisation level, pilots' too
    pilots = []
    if informed and races_starts(objective, model_target, init, num_steps):
        run = functools.partial(
            start.pilot,
            family,
            objective,
            optimizer,
            learning_rate,
            keys,
            chunk_size,
            quick,
        )
        simple = start.simple_start(model_target, like=target)
        (target, loc, scale_tril), pilots = start.race([(target, loc, scale_tril), simple], run)
    layout = None  # what the loop's mesh splits (Fit.layout); None: one device
    if pilots and pilots[-1].outcome.status == "interrupted":  # Ctrl-C in a pilot: that is the fit
        outcome, pilots = pilots[-1].outcome, pilots[:-1]
    else:
        if pilots:  # the race may have changed the start: q's parameters from the winner's
            params = family.init(params_key, target, loc, scale_tril)
        search = family_hooks(family).search_start
        if search is not None:  # a start that searches the target (a mixture: one component a mode)
            tic = time.perf_counter()
            params, search_evals = search(keys.init_rows, target, loc, scale_tril)
            init_grad_evals, init_time = init_grad_evals + search_evals, init_time + time.perf_counter() - tic
        carried = objective_state(objective, keys.objective, params, family, target)
        state = init_state(run_key, params, optimizer, learning_rate, target.model_params, carried)
        mesh = sharding.mesh_for(devices, target, num_density_evals)
        layout = sharding.layout(mesh, target, num_density_evals)
        if progress and devices is not None:  # what devices= did, one device included
            print(f"vitools: {layout or 'one device, nothing split'}", file=sys.stderr, flush=True)
        placed_state, placed_objective, placed_family = sharding.place((state, objective, family), mesh)
        with sharding.active(mesh):
            outcome = optimize(
                placed_state,
                num_steps,
                placed_objective,
                placed_family,
                sharding.place_target(target, mesh),
                optimizer,
                chunk_size=chunk_size,
                progress=progress,
                convergence=rule,
                stop=options["converge"] is not False,
                desc=f"{objective.name}/{family.name}",
                quick=quick,
            )
    pilot_evals = len(pilots) * start.PILOT_STEPS * num_density_evals
    pilot_seconds = sum(p.outcome.elapsed for p in pilots)
    pilot_compile = sum(p.outcome.compile_time for p in pilots)
    steps = int(outcome.state.step)
    # off the mesh: what uses the fit (its draws, the diagnostics, predictions) runs on one device
    params, model_params = sharding.gather((outcome.state.params, outcome.state.model_params))
    result = Fit(
        target=target.with_model_params(model_params).with_snapshot(None),
        family=family,
        objective=objective,
        params=params,
        losses=outcome.losses,
        trace=outcome.trace,
        num_steps=steps,
        num_grad_evals=steps * num_density_evals + pilot_evals + init_grad_evals,
        init_grad_evals=init_grad_evals,
        init_time=init_time,
        elapsed=outcome.elapsed + pilot_seconds,
        compile_time=outcome.compile_time + pilot_compile,
        status=outcome.status,
        seed=seed,
        convergence=outcome.convergence,
        layout=layout,
    )
    if outcome.status == "nonfinite":
        message = (
            f"the {objective.name} loss or its gradient became non-finite at step {steps + 1}; "
            f"the fit keeps the parameters of step {steps}. Try a smaller learning_rate, "
            "another init, or check the model for regions of NaN density"
        )
        if on_nonfinite == "raise":
            raise NonFiniteLossError(message, result)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    alerts.warn_low_ess(result)
    alerts.warn_improper(result, keys.diagnostics)
    return result


def _auto(
    model, model_args, kwargs, model_kwargs, *, objective, family, num_steps, seed, key, progress, **fixed
) -> Fit:
    """``objective="auto", family="auto"``: :func:`vitools.auto.auto_fit`, which chooses both (and the
    options in ``fixed``, which must be left at their defaults)."""
    from vitools.auto import auto_fit  # auto calls vt.fit: imported on use

    if (objective, family) != ("auto", "auto"):
        fixed_one = "family" if objective == "auto" else "objective"
        raise validate.ArgumentValueError(
            f"the automatic mode chooses the objective and the family together: give objective='auto' "
            f"and family='auto' (got {fixed_one}={(family if objective == 'auto' else objective)!r})",
            fixed_one,
        )
    defaults = dict(learning_rate=None, optimizer=None, init="laplace", tol=None, converge=True)
    defaults |= dict(chunk_size=100, devices=None)
    for name, value in fixed.items():
        if not (value is defaults[name] or (isinstance(value, str | bool | int) and value == defaults[name])):
            raise validate.ArgumentValueError(
                f"{name} cannot be set with objective='auto': the automatic mode runs each attempt at "
                "vt.fit's defaults (vt.auto_fit takes the budget: max_grad_evals, max_time)",
                name,
            )
    return auto_fit(model, *model_args, num_steps=num_steps, seed=seed, key=key, progress=progress,
                    model_kwargs=model_kwargs, **kwargs)  # fmt: skip


def target_of(
    model: Callable | Target, model_args: tuple, kwargs: dict[str, Any], model_kwargs: dict[str, Any] | None
) -> Target:
    """The Target of ``model(*model_args, **model_kwargs, **kwargs)`` (a Target is itself), as
    ``vt.fit`` and ``vt.pathfinder`` take a model's arguments.

    Raises:
        vitools.validate.ArgumentError: ``model_kwargs`` is not a dict, or names an argument also
            given by name.
        TypeError, ValueError: as :meth:`Target.from_model`.
    """
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise validate.ArgumentTypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    both = sorted(set(model_kwargs or {}) & set(kwargs))
    if both:
        raise validate.ArgumentValueError(f"model argument(s) {both} given in model_kwargs and by name")
    kwargs = {**(model_kwargs or {}), **kwargs}
    return model if isinstance(model, Target) else Target.from_model(model, *model_args, **kwargs)


def races_starts(objective: Objective, target: Target, init: Any, num_steps: int) -> bool:
    """Whether ``vt.fit`` races an informed Laplace start against NumPyro's simple start for
    ``2 x start.PILOT_STEPS`` pilot steps (:func:`vitools.start.race`): ``init="laplace"``,
    ``num_steps >= start.RACE_MIN_STEPS``, a mode-seeking objective that races
    (``ObjectiveHooks.races_start``; not batch-and-match) and a model that does not subsample data.
    :func:`vitools.fit_many` asks the same, so its fit ``i`` stays ``vt.fit(seed=seeds[i])``."""
    hooks = objective_hooks(objective)
    # No race under subsampling: the pilots' minibatch losses are too noisy to rank the starts. With it,
    # 10^6-row logistic regression, B = 4096, seed 0: the simple start won, and q's mean ended 3.0 sds
    # off with sds 1.9-2.4x the posterior's; without it, 0.2 sds and 0.95-1.19x (16 draws; measured).
    racing = hooks.races_start and not (hooks.mass_covering or target.subsamples)
    laplace = isinstance(init, str) and init == "laplace"
    return laplace and num_steps >= start.RACE_MIN_STEPS and racing


def default_learning_rate(dim: int) -> float:
    """``0.2 / sqrt(dim)`` clipped to [0.01, 0.1], for objectives without a rule of their own.

    Adam moves each coordinate by about the rate per step, gradient noise included, so the
    disturbance it adds to a fit grows like dim x rate²; this keeps it level across dimensions
    (at 0.1, a perfect initial fit of a 100-D Gaussian drifted far off; measured).
    """
    return min(0.1, max(0.01, 0.2 / dim**0.5))


def default_rate(objective: Objective, family: Family, dim: int) -> float:
    """The peak learning rate ``vt.fit`` uses when it is given none: the objective's rule for its
    gradient noise (``ObjectiveHooks.default_learning_rate``, else :func:`default_learning_rate`)
    times the family's ``FamilyHooks.learning_rate_scale`` for how far one step moves its q."""
    rule = objective_hooks(objective).default_learning_rate or default_learning_rate
    return family_hooks(family).learning_rate_scale * rule(dim)
