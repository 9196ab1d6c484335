"""Test set-up: float64, strict rank promotion, a non-interactive matplotlib backend."""

import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# The command line keeps compiled programs on disk (vitools.cache): in a throw-away folder here.
os.environ["VITOOLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitools-test-cache-")

import jax  # noqa: E402
import pytest  # noqa: E402

# float64 so exact identities hold to ~1e-10; "raise" catches silent broadcasting bugs.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from vitools.engine import PROGRAMS  # noqa: E402  (after the config: vitools makes arrays on import)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs once it is done. XLA's CPU backend maps a few
    memory regions per executable (3.2 per small program, measured; jax.clear_caches() took 200
    programs' 1060 mappings back to 475), and the whole suite in one process ran past Linux's
    vm.max_map_count (65530 here): from test_recovery on, every new program failed with
    "Failed to materialize symbols"."""
    yield
    PROGRAMS.clear()
    jax.clear_caches()
    if os.environ.get("VITOOLS_TEST_MAPS"):  # how close the process came to the limit
        with open("/proc/self/maps") as maps:
            print(f" [memory mappings: {sum(1 for _ in maps)}]", end="")
