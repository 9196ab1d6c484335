"""Test set-up: float64, strict rank promotion, a non-interactive matplotlib backend."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

# float64 so exact identities hold to ~1e-10; "raise" catches silent broadcasting bugs.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
