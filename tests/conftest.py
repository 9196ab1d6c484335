"""Test set-up: float64, strict rank promotion, a non-interactive matplotlib backend."""

import os
import subprocess
import tempfile
import threading

os.environ.setdefault("MPLBACKEND", "Agg")
# The command line keeps compiled programs on disk (vitools.cache): in a throw-away folder here.
os.environ["VITOOLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitools-test-cache-")

# The suite's time goes mostly to compiling small programs, not running them: LLVM's lowest
# optimisation level compiles them faster. Five of the largest files took 231 s of CPU instead of
# 332 s, all passing (measured); results differ from the default level in the last digit or so
# (a zoo fit's final loss 0.5960463436308506 against ...505), well inside every tolerance here.
# XLA's graph-level passes (fusion, simplification) still run: only the machine code is less tuned.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# float64 so exact identities hold to ~1e-10; "raise" catches silent broadcasting bugs.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from vitools.cache import enable_compilation_cache  # noqa: E402  (after the config: vitools makes arrays on import)
from vitools.engine import PROGRAMS  # noqa: E402

# JAX's persistent compilation cache, in the throw-away folder above, from the first test on. The
# suite had it from test_cli on anyway (the command line turns it on for the whole process), so
# modules ran with it or without it by their place in the alphabet, and a module run on its own
# ran without it; now every module runs as in the suite. Programs a module compiles again after
# another module's clear_caches, or for a new closure of the same maths (a fresh lambda target),
# are read back instead of compiled: a new-lambda refit of a 2-D Gaussian took 0.95 s of CPU with
# it and 5.9 s without (measured).
enable_compilation_cache(os.environ["VITOOLS_CACHE_DIR"])


def _num_mappings() -> tuple[int, int] | None:
    """``(this process's memory mappings, the kernel's limit on them)``; None off Linux."""
    try:
        with open("/proc/self/maps", "rb") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs once it is done. Without this, the whole suite in
    one process failed from test_recovery on: every new program raised "Failed to materialize
    symbols" (25 failures); with it, all passed. XLA's CPU backend maps a few memory regions per
    executable (3.2 per small program; jax.clear_caches() took 200 programs' 1060 mappings back to
    475, measured), so Linux's vm.max_map_count (65530 here) is the likely limit; the count at the
    failure was not measured.

    vitools' program cache is cleared after every module (so each module's compile counts start
    from an empty cache, as they did); JAX's own caches only once the process holds over half the
    mappings the kernel allows. Cleared after every module, they cost each module its first
    compilations again of what every module runs (op-by-op programs, NumPyro's and vitools'
    jitted helpers) and the clear itself: 11 modules took 172.4 CPU s with both caches cleared
    after each and 167.2 s with neither (run side by side, load 10-14; 2.6 s of it in the clears),
    the process growing from 2,700 to 19,400 mappings (about 1,500 a module; measured), so JAX's
    caches are now cleared about twice a suite instead of after each of its 43 modules."""
    yield
    PROGRAMS.clear()
    mappings = _num_mappings()
    if mappings is None or mappings[0] > mappings[1] // 2:
        jax.clear_caches()


# ------------------------------------------------------------------------------------------------
# Subprocesses started with the session. A test module that runs fresh Python processes (each
# importing JAX and compiling its programs) can declare them as ``BACKGROUND(folder)``, a list of
# ``(argv, subprocess.run keyword arguments)`` run in turn; the processes of every collected module
# then run, one at a time, in a thread from the session's start, on the core this process leaves
# idle (the suite used 17.9 min of CPU in 13.9 min on 2 cores, measured: 1.3 cores on average),
# and the module's tests read their results through the ``background`` fixture.


class _BackgroundRun:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.results: list[subprocess.CompletedProcess] = []
        self.error: BaseException | None = None


_BACKGROUND_RUNS: dict[str, _BackgroundRun] = {}

# Under pytest-xdist (``make test`` runs two workers, ``-n 2 --dist loadfile``: a module's tests all
# on one worker) a worker does not know at its start which modules it will be sent, so a module's
# processes start with the module (``_module_background``) instead, on the core the worker leaves
# while it waits for them; in one process, all of them from the session's start as above.
_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ


def pytest_collection_modifyitems(session, config, items):
    """Modules with a ``BACKGROUND`` run last (in their order, and so in the queue's): their tests
    wait for their processes, which by then have long finished on the other core. In their
    alphabetical places the suite waited on them (under load, test_examples' first test waited 95 s
    for the examples and test_cache's 59 s for its two processes, measured); no test's outcome
    depends on its module's place, as each module's compiled programs are released after it.
    Under pytest-xdist they run first instead: their processes start with them (below), and the
    other worker's modules fill the time a worker waits for them."""
    items[:] = sorted(
        items, key=lambda item: hasattr(getattr(item, "module", None), "BACKGROUND") != _XDIST_WORKER
    )


def _start(modules, tmp_path_factory) -> None:
    """Run the ``BACKGROUND`` processes of ``modules`` (not yet started) in turn, in one thread."""
    jobs = []
    for module in modules:
        if module.__name__ in _BACKGROUND_RUNS:
            continue
        run = _BACKGROUND_RUNS[module.__name__] = _BackgroundRun()
        jobs.append((module.BACKGROUND(tmp_path_factory.mktemp("background")), run))
    if not jobs:
        return

    def work() -> None:
        for steps, run in jobs:
            try:
                for argv, options in steps:
                    done = subprocess.run(argv, capture_output=True, text=True, **options)
                    run.results.append(done)
            except BaseException as err:  # reported by the module's test, not lost in the thread
                run.error = err
            finally:
                run.done.set()

    threading.Thread(target=work, daemon=True).start()


@pytest.fixture(scope="session", autouse=True)
def _background_processes(request, tmp_path_factory):
    if not _XDIST_WORKER:
        modules = dict.fromkeys(getattr(item, "module", None) for item in request.session.items)
        _start([m for m in modules if hasattr(m, "BACKGROUND")], tmp_path_factory)
    yield


@pytest.fixture(scope="module", autouse=True)
def _module_background(request, tmp_path_factory):
    if _XDIST_WORKER and hasattr(request.module, "BACKGROUND"):
        _start([request.module], tmp_path_factory)
    yield


@pytest.fixture(scope="session")
def background():
    """``background(__name__)``: the finished processes of the module's ``BACKGROUND``, in turn
    (each runs, whether those before it failed or not), once all have run; raises what running
    them raised (e.g. a timeout)."""

    def results(module_name: str, timeout: float = 900.0) -> list[subprocess.CompletedProcess]:
        run = _BACKGROUND_RUNS[module_name]
        assert run.done.wait(timeout), f"the background processes of {module_name} did not finish"
        if run.error is not None:
            raise run.error
        return run.results

    return results
