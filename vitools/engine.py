r"""The compiled optimisation loop.

Low layer, every input explicit (:mod:`vitools.stepping`, its names re-exported here):
:func:`make_step` builds one pure step, :func:`run_chunk` runs ``chunk_size`` of them in one
``lax.scan``. Both are pure functions of a :class:`FitState`, so many fits vmap into one program
(``jax.vmap(run_chunk, in_axes=(0, None, ...))`` over seeds or datasets) and the draws inside an
objective are a ``vmap`` axis that ``jax.sharding`` can split across devices. :func:`run_chunks`
runs a traced number of chunks in one call. :func:`optimize` is the host loop around it: progress
between calls, early stopping, Ctrl-C, and the non-finite guard's report; :func:`optimize_many` the
same loop around the vmapped program of many fits.

Chunks per call: a call costs ~0.3 ms on the host and in the runtime whatever it runs (measured
on a 2-core CPU), which on a 10-row model is 2-3 µs on each of a 100-step chunk's 10 µs steps.
So the host loop starts with one chunk per call and then runs as many as fit in
``CALL_SECONDS`` (at most ``MAX_CHUNKS_PER_CALL``), without a recompilation: the number of chunks
is traced. The steps and their results are the same whatever the grouping; a run that may stop
on convergence (:mod:`vitools.convergence`) runs one chunk per call, so where it stops does not
depend on timing.

Non-finite guard: a step whose loss or gradient is not finite is not applied; the state keeps the
last finite parameters and sets ``nonfinite``, after which every step is a no-op.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitools import sharding, validate
from vitools.compiling import QUICK
from vitools.convergence import Convergence, StoppingRule
from vitools.families.base import Family
from vitools.objectives.base import Objective
from vitools.progress import Progress
from vitools.stepping import (  # the low layer, re-exported: engine.make_step, engine.init_state, ...
    FitState,
    default_optimizer,
    init_state,  # noqa: F401  (re-exported: vitools.fitting, vitools.many and tests read engine's)
    learning_rate_factor,  # noqa: F401  (re-exported: tests read engine's)
    make_step,
    objective_state,
    run_chunk,
    run_chunks,
)
from vitools.targets import Target

__all__ = [
    "PROGRAMS",
    "FitState",
    "Outcome",
    "Outcomes",
    "ProgramCache",
    "default_optimizer",
    "make_step",
    "objective_state",
    "optimize",
    "optimize_many",
    "quick_compile",
    "run_chunk",
    "run_chunks",
]

CALL_SECONDS = 0.25  # target wall time of one call once steps are timed: progress, Ctrl-C
MAX_CHUNKS_PER_CALL = 20

# A short run's loop is compiled at LLVM's lowest optimisation level (XLA's graph passes, fusion
# included, run at either level; results agree to float rounding). On the engine benchmark's
# regressions (fullrank, reverse KL with 16 draws, float32, a loaded 2-core machine, CPU seconds) the
# loop compiled in 1.3-1.7 s instead of 2.2-2.9 s, and each step ran slower by 0.03 ms (10 rows x 5
# features), 0.11 (100 x 5), 0.34 (100 x 50), 0.54 (1000 x 5), 0.63 (1000 x 50), 4.0 ms (10^4 x 5)
# (measured): at most QUICK_STEP_SECONDS per density evaluation per number in the target's arrays,
# plus 1000 numbers for q and the optimizer. The quick program is chosen when that slowdown over the
# budget stays below QUICK_MAX_SLOWDOWN, a quarter of the ~1 s it saves: a first fit gains 0.75 s
# or more, a later fit of the same model and budget, which reuses the program, loses at most 0.25 s.
QUICK_STEP_SECONDS = 4.2e-9
QUICK_MAX_SLOWDOWN = 0.25
# Any other run's loop compiles at LLVM -O1, not XLA's default -O2: the steps run as fast and the
# compile is 0.4-0.75 s shorter. Fullrank reverse KL, 16 draws, float32, a loaded 2-core machine,
# compile CPU s -O1 vs -O2 / a second fit's CPU s: 100 rows x 5, 2000 steps 1.43 vs 2.16 / 0.09 vs
# 0.13; 10^4 x 50, 500 steps 1.86-2.18 vs 2.64-2.89 / wall 0.57-1.09 vs 1.60-2.65; 10^5 x 50, 200
# steps 1.48 vs 1.86 / 2.56 vs 2.55; 1000 x 500, 300 steps 1.21 vs 1.67 / 0.85 vs 0.93 (measured).
_LOOP_COMPILE = {"xla_backend_optimization_level": 1}


def quick_compile(num_steps: int, objective: Objective, target: Target) -> bool:
    """Whether the loop of a ``num_steps``-step run compiles at LLVM's lowest optimisation level
    (see ``QUICK_STEP_SECONDS``). ``target``'s arrays may be ``jax.ShapeDtypeStruct``."""
    size = sum(math.prod(getattr(leaf, "shape", np.shape(leaf))) for leaf in jax.tree.leaves(target))
    per_step = QUICK_STEP_SECONDS * objective.num_density_evals(target.dim) * (size + 1000)
    return num_steps * per_step < QUICK_MAX_SLOWDOWN


class ProgramCache:
    """The compiled chunk programs of this process, least recently used first out.

    One program per (pytree structure, shapes, dtypes, optimizer, chunk size, optimisation level:
    ``quick``, see :func:`quick_compile`). We keep the
    executables ourselves, rather than leaving them to ``jax.jit``'s cache, to time compilation
    apart from running (``Fit.compile_time``) and to count compilations (tests of compile-once).
    Bounded: a long session fitting many models would otherwise keep every program (each holds
    its compiled code and the constants closed over, e.g. a model's data). 64 programs cover
    the accuracy benchmark's 13 models x 9 configurations per model at one budget without an
    eviction within a model.

    :meth:`prefetch` lowers a program from the arguments' shapes alone and compiles it in a
    background thread, so ``vt.fit`` can compile its loop while its start (the Laplace init, one
    program of its own) compiles and runs; :meth:`get` then waits for it. XLA compiles with
    Python's lock released.

    Args:
        max_size: programs kept, a positive integer.
    """

    def __init__(self, max_size: int = 64):
        self.max_size = validate.count(max_size, "max_size")
        self._programs: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0  # programs compiled since the cache was made, evicted ones included

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        """Drop every kept program (``num_compiled`` keeps counting)."""
        self._programs.clear()

    @staticmethod
    def _signature(
        args: tuple, optimizer, chunk_size: int, max_chunks: int, quick: bool = False, axes: Any = None
    ) -> tuple:
        leaves, treedef = jax.tree.flatten(args)
        shapes = tuple((tuple(np.shape(x)), jnp.result_type(x), sharding.placement(x)) for x in leaves)
        # the mesh q's draws are split on (vitools.sharding.active) is part of the program too
        mesh = jax.sharding.get_abstract_mesh()
        return (treedef, shapes, optimizer, chunk_size, max_chunks, mesh, quick, _axes_key(axes))

    def _compile(self, lowered, quick: bool = False) -> tuple[Any, float]:
        start = time.perf_counter()
        executable = lowered.compile(QUICK if quick else _LOOP_COMPILE)
        with self._lock:
            self.num_compiled += 1
        return executable, time.perf_counter() - start

    def _keep(self, signature, program) -> None:
        self._programs[signature] = program
        while len(self._programs) > self.max_size:
            self._programs.popitem(last=False)

    def get(
        self, args: tuple, optimizer, chunk_size: int, max_chunks: int, quick: bool = False, axes: Any = None
    ) -> tuple[Any, float]:
        """The compiled :func:`run_chunks` for these arguments ``(state, num_steps, num_chunks,
        objective, family, target)`` and the seconds spent compiling it: 0 when kept, the wait
        when :meth:`prefetch` started it (its compilation overlapped other work). ``quick``:
        compiled at LLVM's lowest optimisation level (:func:`quick_compile`). ``axes``: None for
        one fit; for many fits stacked on a leading axis, ``jax.vmap``'s ``in_axes`` for the
        target (the state is stacked, the rest shared), and the program is the vmapped loop."""
        signature = self._signature(args, optimizer, chunk_size, max_chunks, quick, axes)
        program = self._programs.get(signature)
        if isinstance(program, concurrent.futures.Future):
            start = time.perf_counter()
            try:
                executable, _ = program.result()
            except Exception:  # the background compilation failed: compile here, where errors surface
                del self._programs[signature]
                return self.get(args, optimizer, chunk_size, max_chunks, quick, axes)
            self._programs[signature] = executable
            self._programs.move_to_end(signature)
            return executable, time.perf_counter() - start
        if program is not None:
            self._programs.move_to_end(signature)
            return program, 0.0
        start = time.perf_counter()
        executable, _ = self._compile(_lower(args, optimizer, chunk_size, max_chunks, axes), quick)
        self._keep(signature, executable)
        return executable, time.perf_counter() - start

    def prefetch(self, args: tuple, optimizer, chunk_size: int, max_chunks: int, quick: bool = False) -> bool:
        """Lower :func:`run_chunks` for these arguments here and compile it in a background thread,
        unless the program is kept or on its way; :meth:`get` with arguments of the same shapes
        waits for it. ``args`` as :meth:`get`'s; the arrays may be ``jax.ShapeDtypeStruct``
        (``jax.eval_shape``'s results). Returns whether a compilation started."""
        signature = self._signature(args, optimizer, chunk_size, max_chunks, quick)
        if signature in self._programs:
            return False
        # Traced and lowered in this thread, compiled in the other: tracing runs the model under
        # NumPyro's effect handlers, whose stack is one per process, so a model traced in two
        # threads at once mixes the two traces ("all sites must have unique names", measured).
        # Lowering here also keeps this thread's settings (``with jax.enable_x64(False)``).
        lowered = _lower(args, optimizer, chunk_size, max_chunks)
        self._keep(signature, _BACKGROUND.submit(self._compile, lowered, quick))
        return True


def _lower(args: tuple, optimizer, chunk_size: int, max_chunks: int, axes: Any = None):
    """:func:`run_chunks` traced and lowered for these arguments (concrete or abstract); with
    ``axes`` (the target's ``in_axes``), vmapped over the stacked states."""
    if axes is None:
        return jax.jit(run_chunks, static_argnums=(6, 7, 8)).lower(*args, optimizer, chunk_size, max_chunks)

    def chunks(state, num_steps, num_chunks, objective, family, target):
        return run_chunks(
            state, num_steps, num_chunks, objective, family, target, optimizer, chunk_size, max_chunks
        )

    return jax.jit(jax.vmap(chunks, in_axes=(0, None, None, None, None, axes))).lower(*args)


def _axes_key(axes: Any) -> Any:
    """``axes`` (a pytree with None leaves) as a hashable key."""
    if axes is None:
        return None
    leaves, treedef = jax.tree.flatten(axes, is_leaf=lambda x: x is None)
    return treedef, tuple(leaves)


# One thread: a second compilation at once would compete for the cores with the init's.
_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitools-compile")


PROGRAMS = ProgramCache()  # the process's programs; `optimize` takes another with `programs=`


def compiled_chunks(
    state, num_steps, objective, family, target, optimizer, chunk_size, max_chunks, programs=None, quick=False
):
    """The compiled :func:`run_chunks` for these arguments (called as ``executable(state,
    num_steps, num_chunks, objective, family, target)``) and the seconds spent compiling it."""
    args = (state, num_steps, jnp.ones((), jnp.int32), objective, family, target)
    programs = PROGRAMS if programs is None else programs
    return programs.get(args, optimizer, chunk_size, max_chunks, quick)


def num_compilations() -> int:
    """How many chunk programs this process has compiled (for tests of compile-once)."""
    return PROGRAMS.num_compiled


class Outcome(NamedTuple):
    state: FitState
    losses: np.ndarray
    trace: dict[str, np.ndarray]
    status: str
    elapsed: float
    compile_time: float
    convergence: Convergence | None  # None: no rule given


class Outcomes(NamedTuple):
    """:func:`optimize_many`'s result: the stacked state, then per fit as :class:`Outcome`'s."""

    state: FitState  # stacked on a leading axis
    losses: list[np.ndarray]
    traces: list[dict[str, np.ndarray]]
    statuses: list[str]
    elapsed: float
    compile_time: float


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
    quick: bool | None = None,
) -> Outcome:
    """Run compiled chunks until ``num_steps`` steps, convergence, a non-finite step or Ctrl-C.

    Args:
        convergence: the rule that says whether the loss has converged (None: no rule, no stop,
            ``Outcome.convergence`` is None). It is checked on the host after every chunk.
        stop: with a rule, stop once it holds (after its cool-down, status ``"converged"``);
            False: run the whole budget and only report (status ``"completed"``).
        programs: where compiled programs are kept (None: the process's :data:`PROGRAMS`).
        quick: compile the loop at LLVM's lowest optimisation level (None: when
            :func:`quick_compile` says so for ``num_steps``; a caller running short pilots before
            the fit passes the fit's choice, so both run one program).

    ``Outcome.convergence`` is the rule's verdict when it stopped the run, else its verdict on
    the last window.
    """
    quick = quick_compile(num_steps, objective, target) if quick is None else quick
    run = _host_loop(
        state, num_steps, objective, family, target, optimizer, chunk_size, progress, desc, programs, quick,
        axes=None, watch=convergence if stop else None,
    )  # fmt: skip
    verdict = run.verdict
    if convergence is not None and run.statuses[0] != "converged":
        verdict = convergence.final(run.losses[0])
    return Outcome(
        run.state, run.losses[0], run.traces[0], run.statuses[0], run.elapsed, run.compile_time, verdict
    )


def optimize_many(
    state: FitState,
    num_steps: int,
    objective: Objective,
    family: Family,
    targets: Target,
    axes: Target,
    optimizer: optax.GradientTransformation,
    *,
    chunk_size: int = 100,
    progress: bool = True,
    desc: str = "fits",
    programs: ProgramCache | None = None,
) -> Outcomes:
    """:func:`optimize` for many fits stacked on a leading axis (``state`` and the leaves of
    ``targets`` where ``axes`` says 0; ``axes`` as ``jax.vmap``'s ``in_axes``), as one vmapped
    program, without early stopping: until ``num_steps`` steps, every fit non-finite, or Ctrl-C.
    A fit whose step turns non-finite keeps its last finite state (status ``"nonfinite"``) while
    the others go on."""
    return _host_loop(
        state, num_steps, objective, family, targets, optimizer, chunk_size, progress, desc, programs, False,
        axes=axes, watch=None,
    )  # fmt: skip


class _Run(NamedTuple):
    state: FitState
    losses: list[np.ndarray]  # per fit
    traces: list[dict[str, np.ndarray]]
    statuses: list[str]
    elapsed: float
    compile_time: float
    verdict: Convergence | None = None  # the watched rule's, when it stopped the run


def _host_loop(
    state,
    num_steps,
    objective,
    family,
    target,
    optimizer,
    chunk_size,
    progress,
    desc,
    programs,
    quick,
    *,
    axes,
    watch,
) -> _Run:
    """The host loop of :func:`optimize` (one fit, ``axes=None``) and :func:`optimize_many` (a
    vmapped batch): calls of the compiled chunks, each fit's applied losses kept, progress shown;
    ``watch``: a rule that stops the (single) fit once it holds, after its cool-down."""
    total = jnp.asarray(num_steps, jnp.int32)
    args = (state, total, jnp.ones((), jnp.int32), objective, family, target)
    programs = PROGRAMS if programs is None else programs
    executable, compile_time = programs.get(args, optimizer, chunk_size, MAX_CHUNKS_PER_CALL, quick, axes)
    batched = axes is not None
    num_fits = state.step.shape[0] if batched else 1
    losses, infos = [[] for _ in range(num_fits)], [[] for _ in range(num_fits)]
    # the host keeps the counts: one device sync per call, not two
    done, failed = np.broadcast_to(np.asarray(state.step), (num_fits,)), np.zeros(num_fits, bool)
    bar = Progress(num_steps, desc, enabled=progress)
    status, verdict = "completed", None
    start = time.perf_counter()
    chunks_left, per_call = math.ceil(num_steps / chunk_size), 1
    try:
        while chunks_left > 0:
            count = min(per_call, chunks_left)
            tic = time.perf_counter()
            new_state, report = executable(state, total, np.int32(count), objective, family, target)
            report, now, nonfinite = jax.device_get((report, new_state.step, new_state.nonfinite))
            if not batched:  # one fit: a batch of one
                report, now, nonfinite = jax.tree.map(lambda x: np.asarray(x)[None], (report, now, nonfinite))
            seconds = time.perf_counter() - tic
            state, chunks_left = new_state, chunks_left - count
            keep = now - done + (nonfinite & ~failed)  # applied steps, then a newly failing one
            loss, info = report
            for i in range(num_fits):
                losses[i].append(loss[i, :count].reshape(-1)[: keep[i]])
                infos[i].append({k: v[i, :count].reshape(-1)[: keep[i]] for k, v in info.items()})
            done, failed = now, nonfinite
            shown = {"loss": _finite_mean([part[-1] for part in losses])}
            shown.update({k: _finite_mean([part[-1][k] for part in infos]) for k in info})
            bar.update(int(done.max()), **shown)
            if failed.all():
                break
            if watch is not None:  # one chunk per call: the stopping point does not depend on timing
                verdict = watch.check(np.concatenate(losses[0]))
                if verdict.converged:  # run the rule's cool-down, then stop
                    cooldown, watch, status = watch.cooldown, None, "converged"
                    tail = math.ceil(cooldown * done[0] / chunk_size) * chunk_size
                    end = min(num_steps, int(done[0]) + tail)
                    total, chunks_left = jnp.asarray(end, jnp.int32), math.ceil((end - done[0]) / chunk_size)
                    continue
            if watch is None:
                per_call = int(np.clip(CALL_SECONDS * count / max(seconds, 1e-9), 1, MAX_CHUNKS_PER_CALL))
    except KeyboardInterrupt:
        status = "interrupted"
    elapsed = time.perf_counter() - start
    losses = [np.concatenate(parts) if parts else np.zeros(0) for parts in losses]
    traces = []
    for fit_losses, fit_infos in zip(losses, infos, strict=True):
        trace = {"loss": fit_losses}
        for key in fit_infos[0] if fit_infos else ():
            trace[key] = np.concatenate([part[key] for part in fit_infos])
        traces.append(trace)
    statuses = ["nonfinite" if f else status for f in failed]
    bar.close(statuses[0] if not batched else status, loss=_finite_mean([x[-1:] for x in losses]))
    return _Run(state, losses, traces, statuses, elapsed, compile_time, verdict)


def _finite_mean(parts: list[np.ndarray]) -> float:
    """The mean of the finite values in ``parts`` (NaN when none)."""
    values = np.concatenate([np.ravel(p) for p in parts]) if parts else np.zeros(0)
    values = values[np.isfinite(values)]
    return float(np.mean(values)) if values.size else float("nan")
