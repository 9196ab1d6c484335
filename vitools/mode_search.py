r"""Gaussians on a target's modes: L-BFGS paths from dispersed starts, pooled into one mixture.

Each start is a point drawn uniformly in (-RADIUS, RADIUS) of the unconstrained space (Stan's and
NumPyro's ``init_to_uniform``); the Gaussians the paths end on are weighted by one
importance-weighted EM step over their pooled draws (:func:`_mixture_logits`), so Gaussians on the
same mode share its mass instead of each claiming all of it. :func:`search_modes` runs such paths
on the Laplace init's program to start a mixture family
(:meth:`vitools.families.mixture.GaussianMixture.searched_init`); :func:`vitools.pathfinder.pathfinder`
weighs its own paths' mixture with the same step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from vitools.frame import Frame
from vitools.laplace import initial_gaussian
from vitools.targets import Target

__all__ = ["RADIUS", "SEARCH_DRAWS", "Modes", "search_modes"]

# The paths after the first start uniformly in (-RADIUS, RADIUS) of the unconstrained space: Stan's
# default inits and NumPyro's init_to_uniform, which the paper's experiments use.
RADIUS = 2.0


@functools.partial(jax.jit, static_argnums=(5,))
def _mixture_logits(target, loc, scale_tril, usable, key, num_draws: int) -> jax.Array:
    r"""The mixture's log weights by one importance-weighted EM step from equal weights:
    :math:`\pi_k \propto \sum_i w_i\, r_{ik}`, over ``num_draws`` draws of each usable path's Gaussian
    (a stratified sample of the equal-weight mixture :math:`ar q`), :math:`w_i = \pi(z_i)/ar
    q(z_i)`, :math:`r_{ik} = q_k(z_i) / (K ar q(z_i))` the component's responsibility.

    Each path's own evidence :math:`\hat Z_k` would weight every path by the mass of the mode it
    found, so a mode that 3 of 4 paths found got 3/4 of q (bimodal, 4 paths: W1 0.42 to the
    reference, measured); here paths that share a mode share its mass, and with exact components
    :math:`\pi` is exact (3 paths on mode A of mass 1/2: 1/6 each; the fourth, on B: 1/2).
    Unusable paths get weight 0 (log weight -inf).
    """
    num, dim = loc.shape
    eps = jax.random.normal(key, (num, num_draws, dim), loc.dtype)
    draws = (loc[:, None, :] + jnp.einsum("kij,knj->kni", scale_tril, eps)).reshape(-1, dim)

    def component_log_q(m, s):
        return jax.vmap(dist.MultivariateNormal(m, scale_tril=s, validate_args=False).log_prob)(draws)

    log_components = jnp.where(usable[:, None], jax.vmap(component_log_q)(loc, scale_tril), -jnp.inf)
    log_count = jnp.log(jnp.sum(usable))
    log_q = jax.nn.logsumexp(log_components, axis=0) - log_count  # the equal-weight mixture
    log_p = jax.lax.map(target.log_density, draws, batch_size=1000)
    from_usable = jnp.repeat(usable, num_draws)
    log_w = jnp.where(from_usable & jnp.isfinite(log_p), log_p - log_q, -jnp.inf)
    log_resp = log_components - log_count - log_q[None, :]
    logits = jax.nn.logsumexp(log_w[None, :] + log_resp, axis=1)
    return logits - jax.nn.logsumexp(logits)


# search_modes: draws of each Gaussian behind the weights (one EM step, _mixture_logits). The
# weights only start the fit, which re-learns them; with 128 draws a Gaussian on a mode of mass
# 1/2 gets its weight to within ~0.05 (importance sampling sd ~ 0.5/sqrt(128)).
SEARCH_DRAWS = 128


class Modes(NamedTuple):
    """Gaussians found by :func:`search_modes`, on the host, in the target's frame."""

    loc: np.ndarray  # (M, dim)
    scale_tril: np.ndarray  # (M, dim, dim)
    weights: np.ndarray  # (M,): sum 1; 0 for a path without an informed Gaussian
    grad_evals: int  # the paths' and the weights' gradient evaluations


def search_modes(
    target: Target,
    key: jax.Array,
    num_paths: int,
    loc: jax.Array,
    scale_tril: jax.Array,
    num_draws: int = SEARCH_DRAWS,
) -> Modes:
    r"""Gaussians on the target's modes: ``num_paths`` paths from dispersed points, pooled with
    the given Gaussian N(loc, scale_tril scale_trilᵀ) (vt.fit's initial one), weighted by one
    importance-weighted EM step over the pooled draws (:func:`_mixture_logits`: Gaussians on the
    same mode share its mass). The start of a mixture family
    (:meth:`vitools.families.mixture.GaussianMixture.searched_init`): forward KL with q as its
    proposal never draws a mode q does not cover, and reverse KL seeks the modes it starts on.

    Each path is vt.fit's Laplace init (:func:`vitools.laplace.initial_gaussian`: the L-BFGS
    path, its Newton end, and the best by ELBO of the Laplace Gaussians at 9 of its points, the
    selection rule of Pathfinder, Zhang et al. 2022) from a point drawn uniformly in
    (-RADIUS, RADIUS) of the model's flat unconstrained space (Stan's and NumPyro's
    ``init_to_uniform``, as :func:`pathfinder`'s extra paths). The paths run in the model's own
    frame, on the compiled program of vt.fit's init: the search compiles only its weights' small
    program (run as :func:`pathfinder`'s paths, a program of their own, it compiled for 24 s on
    ``bimodal``, on a loaded 2-core machine; measured).

    Args:
        target: the target, in the frame the fit runs in (the result is in that frame too).
        key: PRNG key (the starts, the paths' jitter and ELBO draws, the weights' draws).
        num_paths: paths to run, a positive integer.
        loc, scale_tril: a Gaussian to pool with the paths', ``(dim,)``, ``(dim, dim)``, in the
            target's frame.
        num_draws: draws of each Gaussian behind the weights.

    Returns:
        :class:`Modes` with ``M = num_paths + 1`` Gaussians (the given one last). A path whose
            Laplace init fell back on the simple start (no informed Gaussian) keeps the given Gaussian
            in its slot at weight 0. ``grad_evals`` counts each path as
            :attr:`vitools.laplace.InitialGaussian.grad_evals` does, and ``num_draws`` per usable
            Gaussian.

    Raises:
        FloatingPointError: no Gaussian has a finite importance weight (the log density is -inf
            or NaN wherever their draws fell).
    """
    start_key, path_key, weight_key = jax.random.split(key, 3)
    loc, scale_tril = np.asarray(loc), np.asarray(scale_tril)
    dtype = target.initial_point.dtype
    model_target = target.in_frame(Frame.identity(target.dim, dtype))  # as vt.fit's init sees it
    starts = jax.random.uniform(start_key, (num_paths, target.dim), dtype, -RADIUS, RADIUS)
    locs, trils, usable, evals = [], [], [], 0
    for start, path_key_i in zip(starts, jax.random.split(path_key, num_paths), strict=True):
        found = initial_gaussian(dataclasses.replace(model_target, initial_point=start), path_key_i)
        found_loc, found_tril, informed = (
            np.asarray(x) for x in (found.loc, found.scale_tril, found.informed)
        )
        in_frame = _gaussian_in_frame(target.frame, found_loc, found_tril)
        good = bool(informed) and all(np.all(np.isfinite(x)) for x in in_frame)
        locs.append(in_frame[0] if good else loc)
        trils.append(in_frame[1] if good else scale_tril)
        usable.append(good)
        evals += int(found.grad_evals)
    locs, trils, usable = np.stack([*locs, loc]), np.stack([*trils, scale_tril]), np.array([*usable, True])
    logits = _mixture_logits(
        target, jnp.asarray(locs), jnp.asarray(trils), jnp.asarray(usable), weight_key, num_draws
    )
    logits = np.asarray(logits)
    if not np.any(np.isfinite(logits)):
        raise FloatingPointError(
            "the mixture's mode search found no Gaussian with a finite importance weight: the log "
            "density is -inf or NaN wherever their draws fell; check the model's support"
        )
    weights = np.exp(logits - np.max(logits))
    return Modes(locs, trils, weights / weights.sum(), evals + int(usable.sum()) * num_draws)


def _gaussian_in_frame(
    frame: Frame, loc: np.ndarray, scale_tril: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """N(loc, scale_tril scale_trilᵀ) of the model's space as ``(loc, lower-triangular factor)`` in
    ``frame`` (v = frame.inverse(u)), on the host: the factor's columns mapped by the frame's linear
    part, then made lower-triangular again by a QR decomposition (any factor of the covariance)."""
    frame = jax.device_get(frame)
    scale = np.asarray(frame.scale)
    if scale.ndim == 2:
        columns = np.linalg.solve(scale, scale_tril)
    else:
        columns = scale_tril / scale[:, None]
    _, r = np.linalg.qr(columns.T)
    tril = r.T * np.sign(np.diagonal(r))[None, :]
    return np.asarray(frame.inverse(jnp.asarray(loc))), tril
