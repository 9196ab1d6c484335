r"""Many fits of one model in one compiled program: :func:`fit_many` over seeds or datasets.

Multi-start (one model, many seeds) and simulation-based calibration (one model, many datasets of
the same shapes, :mod:`vitools.vsbc`) fit the same model again and again. ``vt.fit`` in a Python
loop pays the host loop's calls per fit; :func:`fit_many` stacks the fits along a leading axis
and runs them as one ``jax.vmap`` of the engine's own chunk program
(:func:`vitools.engine.run_chunks`), compiled once for a batch size. Each fit starts from
``vt.fit``'s own start (:func:`vitools.start.starting_point`, whose program ``vt.fit`` shares).
Fit ``i`` is ``vt.fit(model, ..., seed=seeds[i])`` (with ``datasets`` given:
``vt.fit(model, ..., **{name: datasets[name][i]})``) up to float rounding: the same keys, start,
frame, race of starts and steps (see :func:`fit_many` for the differences that remain).

One structure for all fits: ``vitools.start`` holds every fit's frame the same way for a family
(a family that whitens ``"full"`` holds the Laplace factor, ``diag(sds)`` or the identity as a
matrix), never by seed, so the fits stack.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitools import engine, start, validate
from vitools.blas import one_blas_thread
from vitools.control_variate import take_snapshot
from vitools.families import Family
from vitools.families.base import check_distribution
from vitools.fitting import (
    default_rate,
    races_starts,
    target_of,
)
from vitools.frame import Frame
from vitools.laplace import simple_gaussian
from vitools.objectives import Objective, objective_hooks
from vitools.objectives.base import check_subsampling
from vitools.options import checked_options, stopping_rule
from vitools.result import Fit
from vitools.targets import INIT_ROWS, Target

__all__ = ["FitMany", "fit_many", "num_compilations"]


@dataclasses.dataclass(frozen=True)
class FitMany:
    """The fits of :func:`fit_many`, one :class:`~vitools.result.Fit` per seed or dataset, each
    usable as ``vt.fit``'s (``vt.diagnose(fits[i])``, ``fits[i].sample(...)``); a sequence of them.

    Attributes:
        fits: the fits, in the order of ``seeds`` / the datasets' leading axis.
        params: every fit's family parameters stacked on a leading axis ``(num_fits, ...)``, in
            each fit's own frame (``targets``).
        targets: the fitted targets stacked the same way (frames, initial points, and with
            ``datasets`` the data; a model's data shared by every fit is held once).
        target_axes: ``jax.vmap``'s ``in_axes`` for ``targets`` (0 where stacked, None where shared).
        num_grad_evals: log-density evaluations of all fits together, the starts' included.
        init_time: seconds for every start (the vmapped Laplace program, its compilation included).
        compile_time: seconds compiling the vmapped loop (0 when this process had it).
        elapsed: seconds running the loop (and the start race's pilots) for all fits.
        num_compiled: loop programs compiled by this call (0 or 1).

    Examples:
        >>> fits = vt.fit_many(model, x, y=y, seeds=4, num_steps=500)
        >>> len(fits), fits[0].params.loc.shape, fits.params.loc.shape
        (4, (3,), (4, 3))
    """

    fits: tuple[Fit, ...]
    params: Any
    targets: Target
    target_axes: Any
    num_grad_evals: int
    init_time: float
    compile_time: float
    elapsed: float
    num_compiled: int

    def __len__(self) -> int:
        return len(self.fits)

    def __getitem__(self, index: int) -> Fit:
        return self.fits[index]

    def __iter__(self) -> Iterator[Fit]:
        return iter(self.fits)

    def __repr__(self) -> str:
        statuses = sorted({f.status for f in self.fits})
        return (
            f"FitMany({len(self)} x {self.fits[0].name}, dim={self.fits[0].target.dim}, "
            f"grad_evals={self.num_grad_evals}, status={statuses}, init {self.init_time:.2f}s, "
            f"{self.elapsed:.2f}s + {self.compile_time:.2f}s compile)"
        )


# The vmapped loops, kept apart from vt.fit's (batched programs are large: a copy of the data per fit)
PROGRAMS = engine.ProgramCache(max_size=16)


def num_compilations() -> int:
    """How many vmapped loop programs this process has compiled (for tests of compile-once);
    :func:`vitools.engine.num_compilations` counts the single-fit ones."""
    return PROGRAMS.num_compiled


@one_blas_thread
def fit_many(
    model: Callable | Target,
    *model_args: Any,
    seeds: int | Sequence[int] | None = None,
    datasets: dict[str, Any] | None = None,
    objective: str | Objective = "reverse_kl",
    family: str | Family = "fullrank",
    num_steps: int = 2000,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    init: str | tuple[jax.Array, jax.Array] = "laplace",
    tol: float | None = None,
    progress: bool = True,
    chunk_size: int = 100,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FitMany:
    """Fit q to one model many times, as one compiled, vmapped program: a multi-start over
    ``seeds``, or one fit per dataset of ``datasets`` (simulation-based calibration).

    Fit ``i`` is ``vt.fit(model, *model_args, seed=seeds[i], converge=False, **kwargs)``, with
    ``datasets`` given also ``**{name: values[i] for name, values in datasets.items()}``: the same
    keys, Laplace start (on ``vt.fit``'s subset of rows for a model that subsamples data), frame,
    race of starts where ``vt.fit`` races (:func:`vitools.fitting.races_starts`: ``num_steps >=
    1000``, mode-seeking objectives, no data subsampling) and steps, up to float rounding (a vmapped
    program may order its sums differently). What differs from ``vt.fit``:

    - no early stop: every fit runs ``num_steps`` (one program steps all fits: ``vt.fit``'s
      ``converge=False``); each fit's ``convergence`` is still assessed on its losses;
    - each fit's ``init_time``, ``elapsed`` and ``compile_time`` are its share of the batch's
      (the totals are on :class:`FitMany`); no per-fit warnings (low ESS, improper posterior):
      run ``vt.diagnose`` on the fits that matter;
    - a fit whose loss turns non-finite keeps its last finite parameters with status
      ``"nonfinite"``; nothing is raised and the other fits go on.

    Memory: the loop holds every fit's state and, with ``datasets``, every dataset at once
    (``num_fits`` times one fit's working set); split a very large batch into several calls
    of the same size, which reuse the program.

    Args:
        model: a NumPyro model or a Target, as ``vt.fit``.
        *model_args: the model's positional arguments, as ``vt.fit``.
        **kwargs: the model's keyword arguments, as ``vt.fit``.
        model_kwargs: the model's keyword arguments as a dict, as ``vt.fit``.
        seeds: the fits' seeds, or a count ``n`` for seeds ``0..n-1``. None: seed 0 for every
            dataset (needs ``datasets``).
        datasets: model keyword arguments, each an array whose leading axis runs over the
            datasets (``{"y": ys}`` with ``ys`` of shape ``(num_datasets, N)``); they replace
            arguments of the same name. Every dataset must trace to the same structure (the
            model reads its data as traced arrays). With ``seeds`` too, fit ``i`` takes dataset
            ``i`` and ``seeds[i]``.
        objective: as ``vt.fit`` (one for every fit).
        family: as ``vt.fit``.
        num_steps: as ``vt.fit``: every fit runs all of them.
        learning_rate: as ``vt.fit``.
        optimizer: as ``vt.fit``.
        init: as ``vt.fit``.
        tol: as ``vt.fit`` (it only sets each fit's ``convergence``: nothing stops early).
        chunk_size: as ``vt.fit``.
        progress: one bar for all fits (their mean loss).

    Returns:
        A sequence of :class:`~vitools.result.Fit`, with the batch's counts and the
            parameters stacked ``(num_fits, ...)``.

    Raises:
        vitools.validate.ArgumentError: an option is invalid (as ``vt.fit``); neither ``seeds``
            nor ``datasets`` is given; ``datasets`` is not a non-empty dict of arrays with one
            leading size; ``seeds`` and the datasets differ in number; ``datasets`` with a Target.
        ValueError: the datasets trace to different structures or shapes (a model that computes
            on its data with NumPy or Python needs a program per dataset: use ``vt.fit`` in a
            loop), or as ``vt.fit``.

    Examples:
        >>> fits = vt.fit_many(model, x, y=y, seeds=16, num_steps=1000)
        >>> best = min(fits, key=lambda f: f.losses[-100:].mean())
        >>> ys = np.stack([y, y + 1.0])  # (2, 50): two datasets of y
        >>> per_dataset = vt.fit_many(model, x, datasets={"y": ys}, num_steps=500)
        >>> [f.status for f in per_dataset]
        ['completed', 'completed']
    """
    options = checked_options(
        num_steps=num_steps, chunk_size=chunk_size, seed=None, learning_rate=learning_rate, tol=tol,
        converge=False, on_nonfinite="warn", init=init, family=family, objective=objective,
        optimizer=optimizer, key=None,
    )  # fmt: skip
    num_steps, chunk_size, learning_rate = (
        options["num_steps"],
        options["chunk_size"],
        options["learning_rate"],
    )
    init, family, objective = options["init"], options["family"], options["objective"]
    seeds, datasets, num_fits = _checked_batch(seeds, datasets, model)

    if datasets is None:
        shared = target_of(model, model_args, kwargs, model_kwargs)
        targets, fit_targets = (
            _broadcast_target(shared, num_fits, density=bool(shared.param_sites)),
            [shared] * num_fits,
        )
    else:
        fit_targets = _dataset_targets(model, model_args, kwargs, model_kwargs, datasets)
        shared, targets = fit_targets[0], jax.tree.map(lambda *leaves: jnp.stack(leaves), *fit_targets)
    # Data shared by every fit is held once (axis None); per-fit numpy.param values need their own.
    density_axis = 0 if datasets is not None or shared.param_sites else None
    axes = Target(density_axis, 0, 0)

    hooks = objective_hooks(objective)
    rule = stopping_rule(False, options["tol"], hooks.stopping_rule)  # as vt.fit's, to assess each fit
    check_subsampling(objective, shared)  # as vt.fit: before the starts, a refusal compiles nothing
    if hooks.check_family is not None:
        hooks.check_family(family)
    if hooks.resolve is not None:  # what depends on the target: its shapes, the same for every fit
        objective = hooks.resolve(shared)
    num_density_evals = objective.num_density_evals(shared.dim)
    if num_density_evals == 0:
        why = "it never evaluates the model's density"
        validate.no_param_sites(shared.param_sites, objective.name, why, "objective")
    # vt.fit's keys, fit by fit (vitools.start.fit_keys), stacked along the fits' axis
    keys = jax.vmap(start.fit_keys)(jnp.stack([validate.seed_or_key(s, None) for s in seeds]))
    init_keys, run_keys, params_keys, state_keys = keys.init, keys.run, keys.params, keys.objective
    check_distribution(family, params_keys[0], shared)

    # Each fit's start is vt.fit's own (vitools.start.starting_point), one after another: the
    # Laplace program is compiled once per model and shapes, and shared with vt.fit. A lax.map of
    # it in one program of our own compiled in another 5 s of CPU (LLVM -O0, 3-D regression) and
    # ran 64 starts in 0.14 s; vmapped, 15.4 s of compile (its loops made selects), 0.11 s run
    # (measured on a loaded 2-core CPU). A subsampling model's start runs on vt.fit's subset of
    # INIT_ROWS rows (its FitKeys.init_rows); the fit on all rows.
    tic = time.perf_counter()
    starts = [
        start.starting_point(k, _start_target(rows, t), family, objective, init)
        for k, rows, t in zip(init_keys, keys.init_rows, fit_targets, strict=True)
    ]
    structures = {jax.tree.structure(s.target.frame) for s in starts} | {
        s.target.frame.scale.shape for s in starts
    }
    if len(structures) != 2:  # one treedef and one scale shape: vitools.start holds frames one way per family
        raise RuntimeError(f"the fits' frames differ in structure ({structures}); fit_many needs one")
    stacked = jax.tree.map(
        lambda *xs: jnp.stack(xs),
        *[(s.target.frame, s.target.initial_point, s.loc, s.scale_tril) for s in starts],
    )
    loc, scale_tril = stacked[2], stacked[3]
    informed = np.array([s.informed for s in starts])
    init_evals = np.array([s.grad_evals for s in starts], np.int64)
    # vt.fit's snapshot for a subsampling model's control variate (vitools.control_variate.take_snapshot),
    # fit by fit on its own full data; the fits' snapshots are mapped along their axis like the frames
    snapshots = [take_snapshot(s.target.full_data(), s.loc, s.scale_tril, num_density_evals) for s in starts]
    if snapshots[0][2]:  # counted as vt.fit counts it (every fit takes one, or none does)
        init_evals = init_evals + snapshots[0][2]
        num_density_evals += 1
        stacked_snapshots = jax.tree.map(lambda *xs: jnp.stack(xs), *[t.snapshot for t, _, _ in snapshots])
        loc = jnp.stack([moved for _, moved, _ in snapshots])
        framed = Target(targets.density, stacked[0], stacked[1], stacked_snapshots)
        axes = Target(density_axis, 0, 0, 0)
    else:
        framed = Target(targets.density, stacked[0], stacked[1])
    init_time = time.perf_counter() - tic

    if learning_rate is None:
        learning_rate = default_rate(objective, family, shared.dim)
    optimizer = optimizer or engine.default_optimizer()
    before = PROGRAMS.num_compiled

    def states(targets, loc, scale_tril):
        def one(target, loc, scale_tril, params_key, state_key, run_key):
            params = family.init(params_key, target, loc, scale_tril)
            carried = engine.objective_state(objective, state_key, params, family, target)
            model_params = target.model_params
            return engine.init_state(run_key, params, optimizer, learning_rate, model_params, carried)

        return jax.vmap(one, in_axes=(axes, 0, 0, 0, 0, 0))(
            targets, loc, scale_tril, params_keys, state_keys, run_keys
        )

    def run(targets, loc, scale_tril, steps, show):
        state = states(targets, loc, scale_tril)
        desc = f"{num_fits} x {objective.name}/{family.name}"
        return engine.optimize_many(
            state, steps, objective, family, targets, axes, optimizer,
            chunk_size=chunk_size, progress=show, desc=desc, programs=PROGRAMS,
        )  # fmt: skip

    race_evals, race_seconds, race_compile = np.zeros(num_fits, np.int64), 0.0, 0.0
    if races_starts(objective, shared, init, num_steps):
        # vt.fit's race of starts (vitools.start.race), fit by fit, where vt.fit runs it (none under
        # data subsampling, none for batch-and-match): the Laplace start's pilot against the simple
        # start's, on the same program; the lower score wins, Laplace on a tie. A fit whose start
        # is already the simple one (uninformed) runs no race.
        simple = _simple_targets(targets, framed)
        simple_loc, simple_tril = jax.vmap(simple_gaussian, in_axes=(axes,))(targets)
        scores = []
        for race_targets, race_loc, race_tril in (
            (framed, loc, scale_tril),
            (simple, simple_loc, simple_tril),
        ):
            pilot = run(race_targets, race_loc, race_tril, start.PILOT_STEPS, False)
            scores.append([start.pilot_score(*fit) for fit in zip(pilot.losses, pilot.statuses, strict=True)])
            race_seconds += pilot.elapsed
            race_compile += pilot.compile_time
        race_evals = np.where(informed, 2 * start.PILOT_STEPS * num_density_evals, 0)
        pick = _where_per_fit(jnp.asarray(informed & (np.asarray(scores[1]) < np.asarray(scores[0]))))
        framed = Target(
            framed.density, pick(simple.frame, framed.frame), pick(simple.initial_point, framed.initial_point)
        )
        loc, scale_tril = pick(simple_loc, loc), pick(simple_tril, scale_tril)
    outcome = run(framed, loc, scale_tril, num_steps, progress)
    num_compiled = PROGRAMS.num_compiled - before

    fitted = framed.with_model_params(outcome.state.model_params).with_snapshot(None)  # as vt.fit's
    axes = Target(density_axis, 0, 0)
    totals = (init_time, outcome.elapsed + race_seconds, outcome.compile_time + race_compile)
    fits = _fits(
        outcome, fitted, density_axis, family, objective, rule, seeds, num_density_evals,
        init_evals, race_evals, totals,
    )  # fmt: skip
    return FitMany(
        fits=fits,
        params=outcome.state.params,
        targets=fitted,
        target_axes=axes,
        num_grad_evals=int(sum(f.num_grad_evals for f in fits)),
        init_time=totals[0],
        compile_time=totals[2],
        elapsed=totals[1],
        num_compiled=num_compiled,
    )


# ------------------------------------------------------------------------------------------------
# arguments


def _checked_batch(seeds: Any, datasets: Any, model: Any) -> tuple[tuple[int, ...], dict | None, int]:
    """``(seeds, datasets as arrays, number of fits)``, checked."""
    if seeds is None and datasets is None:
        raise validate.ArgumentValueError("give seeds (a count or a list of seeds) or datasets", "seeds")
    sizes = set()
    if datasets is not None:
        if isinstance(model, Target):
            raise validate.ArgumentTypeError("datasets need a NumPyro model, not a Target", "datasets")
        if not isinstance(datasets, dict) or not datasets:
            raise validate.ArgumentTypeError(
                f"datasets must be a non-empty dict of model arguments, got {type(datasets).__name__}",
                "datasets",
            )
        datasets = {name: np.asarray(values) for name, values in datasets.items()}
        sizes = {values.shape[0] if values.ndim else None for values in datasets.values()}
        if len(sizes) != 1 or None in sizes:
            shapes = {name: values.shape for name, values in datasets.items()}
            raise validate.ArgumentValueError(
                f"datasets' arrays need one leading size (the number of datasets), got shapes {shapes}",
                "datasets",
            )
    if seeds is None:
        seeds = (0,) * sizes.pop()
    elif isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        seeds = tuple(range(validate.count(seeds, "seeds")))
    else:
        try:
            seeds = tuple(validate.seed(s, "seeds") for s in seeds)
        except TypeError:
            raise validate.ArgumentTypeError(
                f"seeds must be a count or a sequence of seeds, got {type(seeds).__name__}", "seeds"
            ) from None
        if not seeds:
            raise validate.ArgumentValueError("seeds is empty", "seeds")
    if sizes and sizes != {len(seeds)}:
        raise validate.ArgumentValueError(
            f"{len(seeds)} seeds for {sizes.pop()} datasets: give one seed per dataset", "seeds"
        )
    return seeds, datasets, len(seeds)


def _broadcast_target(target: Target, num_fits: int, density: bool) -> Target:
    """``target`` with its frame and initial point (and with ``density`` its density) stacked."""

    def stack(tree):
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_fits, *jnp.shape(x))), tree)

    return Target(
        stack(target.density) if density else target.density, stack(target.frame), stack(target.initial_point)
    )


def _dataset_targets(model, model_args, kwargs, model_kwargs, datasets) -> list[Target]:
    """Each dataset's target, all of one structure and shapes.

    Raises:
        ValueError: two datasets trace to different structures or shapes.
    """
    model_kwargs = {k: v for k, v in (model_kwargs or {}).items() if k not in datasets}
    num_datasets = len(next(iter(datasets.values())))
    targets = []
    for i in range(num_datasets):
        dataset = {name: values[i] for name, values in datasets.items()}
        targets.append(target_of(model, model_args, {**kwargs, **dataset}, model_kwargs))
        first, this = jax.tree.structure(targets[0]), jax.tree.structure(targets[-1])
        shapes = [jax.tree.map(jnp.shape, t) for t in (targets[0], targets[-1])]
        if first != this or shapes[0] != shapes[1]:
            raise ValueError(
                f"dataset {i} traces to another structure than dataset 0 (different shapes, or the model "
                "computes on the data with NumPy or Python, e.g. np.asarray(y) or int(...), so each dataset "
                "needs its own program); fit_many needs datasets that share one program: compute on them "
                "with jax.numpy, or fit each with vt.fit"
            )
    return targets


# ------------------------------------------------------------------------------------------------
# the start


def _start_target(rows_key: jax.Array, target: Target) -> Target:
    """The target ``vt.fit`` starts from: a subsampling model's on the fixed random
    :data:`~vitools.targets.INIT_ROWS` rows of its ``FitKeys.init_rows`` (``rows_key``)."""
    return target.subset(rows_key, INIT_ROWS) if target.subsamples else target


def _simple_targets(targets: Target, like: Target) -> Target:
    """The model's frame held with the structure of ``like``'s frames (:func:`vitools.start.simple_start`)."""
    if like.frame.scale.ndim == 3:  # stacked matrices
        num_fits, dim = like.frame.shift.shape
        identity = Frame(
            jnp.zeros((num_fits, dim), like.frame.shift.dtype),
            jnp.broadcast_to(jnp.eye(dim), (num_fits, dim, dim)),
        )
        return Target(targets.density, identity, targets.initial_point)  # the identity keeps the point
    return targets


def _where_per_fit(condition: jax.Array) -> Callable:
    """``pick(a, b)``: leaf by leaf, fit ``i``'s ``a`` where ``condition[i]`` else its ``b``."""

    def pick(a, b):
        def leaf(x, y):
            return jnp.where(jnp.reshape(condition, (-1,) + (1,) * (jnp.ndim(x) - 1)), x, y)

        return jax.tree.map(leaf, a, b)

    return pick


# ------------------------------------------------------------------------------------------------
# the loop


def _fits(
    outcome,
    targets,
    density_axis,
    family,
    objective,
    rule,
    seeds,
    evals_per_step,
    start_evals,
    race_evals,
    totals,
):
    """One :class:`Fit` per fit, from the stacked outcome (host arrays sliced, then put back)."""
    init_time, elapsed, compile_time = (t / len(seeds) for t in totals)
    params, frames, points = jax.device_get((outcome.state.params, targets.frame, targets.initial_point))
    densities = jax.device_get(targets.density) if density_axis == 0 else None
    steps = np.asarray(jax.device_get(outcome.state.step))
    fits = []
    for i, seed in enumerate(seeds):
        take = functools.partial(jax.tree.map, lambda x, i=i: x[i])
        density = targets.density if densities is None else jax.device_put(take(densities))
        target = Target(density, *jax.device_put((take(frames), take(points))))
        fits.append(
            Fit(
                target=target,
                family=family,
                objective=objective,
                params=jax.device_put(take(params)),
                losses=outcome.losses[i],
                trace=outcome.traces[i],
                num_steps=int(steps[i]),
                num_grad_evals=int(steps[i]) * evals_per_step + int(start_evals[i] + race_evals[i]),
                init_grad_evals=int(start_evals[i]),
                init_time=init_time,
                elapsed=elapsed,
                compile_time=compile_time,
                status=outcome.statuses[i],
                seed=seed,
                convergence=rule.final(outcome.losses[i]),
            )
        )
    return tuple(fits)
