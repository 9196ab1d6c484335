"""Test set-up: float64, strict rank promotion, a non-interactive matplotlib backend."""

import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# The command line keeps compiled programs on disk (vitools.cache): in a throw-away folder here.
os.environ["VITOOLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitools-test-cache-")

import jax  # noqa: E402

# float64 so exact identities hold to ~1e-10; "raise" catches silent broadcasting bugs.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
