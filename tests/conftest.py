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
    """Drop each test module's compiled programs once it is done. Without this, the whole suite in
    one process failed from test_recovery on: every new program raised "Failed to materialize
    symbols" (25 failures); with it, all passed. XLA's CPU backend maps a few memory regions per
    executable (3.2 per small program; jax.clear_caches() took 200 programs' 1060 mappings back to
    475, measured), so Linux's vm.max_map_count (65530 here) is the likely limit; the count at the
    failure was not measured."""
    yield
    PROGRAMS.clear()
    jax.clear_caches()
