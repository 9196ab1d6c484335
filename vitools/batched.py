"""Programs over many draws of q, a batch of draws at a time: draws in the fit's frame, their
constrained values, log q, and log p in float64. ``Fit`` (:mod:`vitools.result`) calls them; their
memory is one batch of draws (:func:`draw_batch`), whatever the number of draws, and over large data
they report progress (:func:`densities_in_pieces`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vitools.families.base import draw_many, family_hooks
from vitools.progress import Progress
from vitools.targets import Target

__all__ = [
    "DRAW_BATCH",
    "DRAW_NUMBERS",
    "PIECES",
    "PROGRESS_NUMBERS",
    "constrain_all",
    "densities",
    "densities_in_pieces",
    "draw_batch",
    "log_prob_constrained",
    "sample_flat",
    "sample_flat_with_log_q",
]


@functools.partial(jax.jit, static_argnums=(3,))
def sample_flat(family, params, key, num_draws):
    return draw_many(family.distribution(params), key, num_draws)


# Per-draw programs run a batch of draws at a time (lax.map over vmapped batches), so memory stays
# that of one batch, e.g. (batch, N) intermediates for an N-row likelihood, whatever S is: at most
# DRAW_BATCH draws, and over large data no more than DRAW_NUMBERS data numbers a batch. With 1000
# draws a batch, vt.diagnose of a 10^6-row, 5-feature logistic regression peaked at 12.5 GB of
# memory (a user's trial, measured); at 11 draws a batch its (batch, N) float64 intermediates
# take ~100 MB each.
DRAW_BATCH = 1000
DRAW_NUMBERS = 2**26


# The densities at q's draws are evaluated in PIECES calls with a progress line where the draws
# times the target's numbers exceed PROGRESS_NUMBERS: 10^4 draws of a 10^5-row, 5-column logistic
# regression (5 * 10^9) took ~23 CPU s without a word (a user's trial); under 2^30, a few seconds.
PROGRESS_NUMBERS = 2**30
PIECES = 20


def _size(target: Target) -> int:
    """Numbers held by the target's arrays (its data, mostly)."""
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(target))


def draw_batch(target: Target) -> int:
    """Draws per batch of the per-draw programs for this target: :data:`DRAW_BATCH`, fewer where
    the target's arrays (its data) hold more than :data:`DRAW_NUMBERS` / DRAW_BATCH numbers; at
    least 1."""
    return int(np.clip(DRAW_NUMBERS // max(_size(target), 1), 1, DRAW_BATCH))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def constrain_all(target, flat, batch_size):
    return jax.lax.map(lambda u: target.constrain(u, deterministic=True), flat, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def log_prob_constrained(family, params, target, values, batch_size):
    def one(value):
        flat = target.unconstrain(value)
        log_q = family.distribution(params).log_prob(flat) - target.log_abs_det_jacobian(flat)
        return jnp.where(target.in_support(value), log_q, -jnp.inf)

    return jax.lax.map(one, values, batch_size=batch_size)


@functools.partial(jax.jit, static_argnums=(3,))
def sample_flat_with_log_q(family, params, key, num_draws):
    """``(draws, log q)`` in the fit's frame: log q from the draws' noise where the family can
    (``FamilyHooks.rsample_with_log_prob``: exact where ``log_prob`` at the draw loses the noise
    to rounding), else None (``_densities`` evaluates ``log_prob`` at each draw)."""
    rsample_with_log_prob = family_hooks(family).rsample_with_log_prob
    if rsample_with_log_prob is None:
        return draw_many(family.distribution(params), key, num_draws), None
    return rsample_with_log_prob(params, key, num_draws, False)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def densities(family, params, target, flat, log_q, batch_size):
    """``(constrained draws, log p, log q)`` at the draws ``flat`` of the fit's frame, log q given
    (``sample_flat_with_log_q``) or None. Run under ``jax.enable_x64(True)``: log p, the
    Jacobians and log q (where not given) are evaluated in float64 at the draws (the draws
    themselves keep their dtype), as float32 loses the log weights to rounding over large data.
    (Given a float32 fit's draws there, the coupling flow's scanned inverse met float64 constants
    and raised; a user's trial.) A 200,000-row logistic regression
    has log p ≈ -85,574, where float32's spacing is 0.0078 nats: its 10,000 draws took 1,061
    distinct values, the tail of the weights was tied, and a near-exact fit (KL ≈ 0.000) read
    "bad, k̂ undefined"; in float64 it read good (a user's trial, measured)."""
    q = family.distribution(params)

    def one(args):
        u, log_q_u = args
        wide = u.astype(jnp.float64)
        log_jac = target.log_abs_det_jacobian(wide)
        log_q_u = q.log_prob(wide) if log_q_u is None else log_q_u
        return target.constrain(u, deterministic=True), target.log_density(wide) - log_jac, log_q_u - log_jac

    return jax.lax.map(one, (flat, log_q), batch_size=batch_size)


def densities_in_pieces(family, params, target, flat, log_q):
    """:func:`densities` on the host: ``(draws, log p, log q)`` as NumPy arrays. Where the work is
    large (:data:`PROGRESS_NUMBERS`), in :data:`PIECES` calls of one compiled program (the last
    piece padded with the first draws, cut off after) with a progress line between them."""
    num_draws, batch_size = flat.shape[0], draw_batch(target)
    if num_draws * _size(target) <= PROGRESS_NUMBERS:
        return jax.device_get(densities(family, params, target, flat, log_q, batch_size))
    piece = batch_size * -(-num_draws // (PIECES * batch_size))  # whole batches
    count = -(-num_draws // piece)
    pad = count * piece - num_draws
    padded = jax.tree.map(lambda x: jnp.concatenate([x, x[:pad]]), (flat, log_q))  # None stays None
    bar = Progress(num_draws, f"vitools: log p at {num_draws} draws of q ({_size(target):,} data numbers)")
    found = []
    for i in range(count):
        part = jax.tree.map(lambda x, i=i: x[i * piece : (i + 1) * piece], padded)
        found.append(jax.device_get(densities(family, params, target, *part, batch_size)))
        bar.update(min((i + 1) * piece, num_draws))
    bar.close()
    return jax.tree.map(lambda *pieces: np.concatenate(pieces)[:num_draws], *found)
