r"""Pareto-smoothed importance sampling (PSIS) of log weights in JAX, for use inside the compiled step.

Why a second PSIS: :func:`vitools.importance.psis_khat` calls arviz-stats' ``psislw``, which runs on
host NumPy arrays (a Python sort, in-place assignment, a data-dependent early return), so it cannot
run under ``jit`` or inside the ``lax.scan`` of the fitting loop. An objective that smooths its weights
at every step (``ForwardKL(pareto_smooth=True)``) needs the smoothing traced into the step: a host
call-back per step would stall the compiled loop on a device-to-host round trip. This module follows
arviz-stats 1.3's ``_psislw`` / ``_gpdfit`` / ``_gpinv`` step by step with fixed shapes, and is tested
against it (``tests/test_psis.py``); host-side diagnostics keep using arviz-stats.

PSIS (Vehtari, Simpson, Gelman, Yao & Gabry, 2024, JMLR, "Pareto smoothed importance sampling"):

1. Shift the log weights by their maximum; sort them. The tail is the M largest,
   ``M = floor(3 sqrt(S))`` if ``S > 225`` else ``floor(S / 5)`` (arviz-stats' rule with
   ``r_eff = 1``, i.e. :math:`\lfloor\min(S/5, 3\sqrt S)\rfloor`); the cutoff u is the largest weight
   below the tail.
2. Fit a generalized Pareto distribution (GPD) to the tail weights minus u by the empirical-Bayes
   estimator of Zhang & Stephens (2009, Technometrics), with arviz-stats' weakly informative prior:
   the shape is pulled towards 0.5 with the weight of 10 observations,
   :math:`\hat k = (M k_{ZS} + 10 \cdot 0.5) / (M + 10)`.
3. Replace the tail weights, in their order, by the GPD quantiles
   :math:`u + F^{-1}((j - 1/2) / M)`, ``j = 1..M``, truncated at the largest raw weight.
4. Normalize: the smoothed log weights have logsumexp 0.

Fixed shapes, so it runs under ``jit`` and ``vmap``; the branches of arviz-stats become selects.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vitools.importance import FLAT_TAIL_TOL, MIN_PSIS_DRAWS

__all__ = ["psis_smooth", "psis_tail_length"]

# arviz-stats' _gpdfit constants: the Zhang-Stephens grid of 30 + floor(sqrt(M)) candidate values of
# b = -k / sigma, spread by a prior of scale 3 (times the tail's first quartile); the shape's prior
# is N(0.5, .) worth 10 observations (Vehtari et al. 2024, appendix C).
_PRIOR_BS = 3.0
_PRIOR_K = 10.0
_PRIOR_K_MEAN = 0.5


def psis_tail_length(num_draws: int) -> int:
    r"""Number of tail draws M PSIS fits among S draws: arviz-stats' rule for ``r_eff = 1``,
    ``floor(3 sqrt(S))`` if S > 225 else ``floor(S / 5)``, i.e. :math:`\lfloor\min(S/5, 3\sqrt S)\rfloor`.

    Raises:
        ValueError: ``num_draws`` < 25 (the tail would hold fewer than 5 draws, arviz-stats' minimum).
    """
    if num_draws < MIN_PSIS_DRAWS:
        raise ValueError(
            f"PSIS needs at least {MIN_PSIS_DRAWS} draws (a tail of 5 or more to fit), got {num_draws}"
        )
    return int(math.floor(3.0 * math.sqrt(num_draws))) if num_draws > 225 else num_draws // 5


def _gpd_fit(tail: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zhang & Stephens (2009) GPD fit with arviz-stats' prior, on ``tail`` sorted ascending, >= 0.

    Returns ``(k, sigma)``; ``(nan, nan)`` where the tail's first quartile does not exceed its minimum
    (arviz-stats: "far from a generalized Pareto distribution"), ``k = inf`` where the fit is NaN.
    """
    num_tail = tail.shape[0]
    num_grid = 30 + int(num_tail**0.5)
    eps = jnp.finfo(tail.dtype).eps
    x_star = tail[int(num_tail / 4 + 0.5) - 1]  # first quartile, arviz-stats' index
    grid = jnp.arange(1, num_grid + 1, dtype=tail.dtype)
    b = (1.0 - jnp.sqrt(num_grid / (grid - 0.5))) / (_PRIOR_BS * x_star) + 1.0 / tail[-1]
    k_grid = jnp.mean(jnp.log1p(-b[:, None] * tail[None, :]), axis=1)
    log_lik = num_tail * (jnp.log(-b / k_grid) - k_grid - 1.0)
    weights = jnp.exp(log_lik - jax.nn.logsumexp(log_lik))
    weights = jnp.where(weights >= 10 * eps, weights, 0.0)  # arviz-stats drops negligible weights
    b_post = jnp.sum(b * weights) / jnp.sum(weights)
    k = jnp.mean(jnp.log1p(-b_post * tail))
    sigma = -k / b_post
    k = (num_tail * k + _PRIOR_K * _PRIOR_K_MEAN) / (num_tail + _PRIOR_K)
    k = jnp.where(jnp.isnan(k), jnp.inf, k)
    not_pareto = x_star <= tail[0]
    return jnp.where(not_pareto, jnp.nan, k), jnp.where(not_pareto, jnp.nan, sigma)


def _gpd_quantile(probs: jax.Array, k: jax.Array, sigma: jax.Array) -> jax.Array:
    r"""GPD quantiles :math:`\sigma\,((1 - p)^{-k} - 1) / k` (:math:`-\sigma \log(1 - p)` at k = 0)."""
    log_survival = jnp.log1p(-probs)
    safe_k = jnp.where(k == 0, 1.0, k)
    return jnp.where(k == 0, -sigma * log_survival, sigma * jnp.expm1(-safe_k * log_survival) / safe_k)


def psis_smooth(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Pareto-smoothed log weights and the Pareto shape k̂ of the weights, traceable under jit/vmap.

    The weights :math:`w_s = \exp(\text{log\_weights}_s)` are importance ratios of independent draws
    (``r_eff = 1``). The M largest are replaced by quantiles of a generalized Pareto distribution
    fitted to them (see the module docstring; Vehtari et al. 2024, JMLR; Zhang & Stephens 2009). This
    trades the variance of self-normalized importance sampling for a small bias (the smoothed tail
    is the fitted GPD's expectation of the order statistics, truncated at the largest raw weight),
    and k̂ says how many moments w has: finite variance iff k < 1/2, PSIS estimates unreliable above
    :func:`vitools.importance.khat_threshold`.

    Matches arviz-stats' ``psislw(-log_weights, r_eff=1)`` (:func:`vitools.importance.psis_khat`'s
    call) to floating-point rounding, except where arviz-stats raises or returns NaN weights:

    - the tail weights are equal up to ``FLAT_TAIL_TOL`` (1% in weight) in log scale: nothing to fit,
      the weights are only normalized and k̂ is ``-inf``, as :func:`~vitools.importance.psis_khat`
      (arviz-stats raises on an exactly flat tail);
    - the fitted GPD scale is not positive: arviz-stats returns NaN weights, here the weights are
      only normalized (k̂ is still reported).

    Where arviz-stats does not smooth (a tail whose first quartile does not exceed its minimum, e.g.
    ties: k̂ NaN; a NaN fit: k̂ ``inf``) neither does this function, and k̂ is the same. Tied weights in
    the tail get their smoothed values in the order of a stable sort (arviz-stats' sort is not stable,
    so which of two tied draws gets which value may differ; the multiset of weights does not).

    No gradient flows through the result (sorting and a fitted tail: the weights are constants of
    the step, as in :func:`~vitools.objectives.base.weighted_cross_entropy`). NaN or ``+inf`` log
    weights give NaN results (under jit nothing can raise); ``-inf`` (zero weights) are allowed.

    Args:
        log_weights: ``(S,)`` unnormalized log importance weights, S >= 25; vmap for a batch.

    Returns:
        ``(smoothed_log_weights, khat)``: ``(S,)`` smoothed log
            weights normalized to logsumexp 0, in the input's order, and the scalar k̂ (NaN or
            ``±inf`` in the cases above).

    Raises:
        ValueError: ``log_weights`` is not one-dimensional, or has fewer than 25 entries (both at
            trace time: shapes are static).

    Examples:
        >>> draws, log_p, log_q = fit.sample_with_log_densities(1000, seed=1)
        >>> smoothed, khat = jax.jit(psis_smooth)(log_p - log_q)
        >>> smoothed.shape, khat.shape, round(float(jnp.exp(smoothed).sum()), 6)  # weights sum to 1
        ((1000,), (), 1.0)
    """
    log_weights = jax.lax.stop_gradient(jnp.asarray(log_weights))
    if log_weights.ndim != 1:
        raise ValueError(f"log_weights must be one-dimensional (S,), got shape {log_weights.shape}")
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    num_draws = log_weights.shape[0]
    num_tail = psis_tail_length(num_draws)
    start = num_draws - num_tail

    log_w = log_weights - jnp.max(log_weights)  # the largest weight is 1
    order = jnp.argsort(log_w)
    sorted_log_w = log_w[order]
    tail_log_w = sorted_log_w[start:]
    log_cutoff = sorted_log_w[start - 1]  # the largest weight below the tail
    cutoff = jnp.exp(log_cutoff)
    k, sigma = _gpd_fit(jnp.exp(tail_log_w) - cutoff)

    probs = (jnp.arange(num_tail, dtype=log_w.dtype) + 0.5) / num_tail
    smoothed_tail = jnp.log(cutoff + _gpd_quantile(probs, k, sigma))
    smoothed_tail = jnp.minimum(smoothed_tail, tail_log_w[-1])  # truncated at the largest raw weight
    flat = tail_log_w[-1] - tail_log_w[0] < FLAT_TAIL_TOL
    smooth = jnp.isfinite(k) & (sigma > 0) & ~flat
    new_sorted = sorted_log_w.at[start:].set(jnp.where(smooth, smoothed_tail, tail_log_w))
    smoothed = jnp.zeros_like(log_w).at[order].set(new_sorted)
    smoothed = smoothed - jax.nn.logsumexp(smoothed)
    return smoothed, jnp.where(flat, -jnp.inf, k)
