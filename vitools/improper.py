r"""Is the fitted posterior improper? Sites along which the log density is flat.

An improper posterior (a flat ``ImproperUniform`` prior on a site the data do not inform) has
infinite mass, so no q fits it: reverse KL keeps widening q (its entropy term gains, its
:math:`E_q \log p` term loses nothing) and the fit ends wherever the step budget does, with
nothing in the loss or in k̂ to say so (a flat prior with no data: q's sd ~3300 and growing, k̂
"ok").

The check, per latent site: widen q's draws along that site's coordinates 100-fold about their
mean and compare the unnormalized log density. On a proper posterior that costs about
:math:`(100^2 - 1)/2` nats per coordinate for a Gaussian-like site and still ~9 nats per
coordinate for a Cauchy-tailed one (:math:`2 \log 100`); along a flat direction it costs nothing.
A site is flagged when the median cost is under 1 nat. Only sites whose spread in the
unconstrained space already exceeds :data:`SUSPICIOUS_SD` are checked, so an ordinary fit pays
nothing (for a Gaussian q or a mixture, its sds are read from its parameters without drawing).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitools.compiling import setup_jit
from vitools.families.base import Family, draw_many
from vitools.targets import Target

__all__ = ["SUSPICIOUS_SD", "WIDEN", "flat_sites"]

SUSPICIOUS_SD = 10.0  # unconstrained units: a log-scale sd of 10 is e^10-fold; a real one is checked
WIDEN = 100.0
_MAX_COST = 1.0  # nats
_NUM_DRAWS = 64
_RESOLUTION = 1e-8  # float64: a spread below this fraction of the location is rounding, not q's width


def flat_sites(target: Target, family: Family, params: Any, key: jax.Array) -> dict[str, float]:
    """Latent sites along which the log density is flat around q's draws.

    Args:
        target: the target, in the frame q was fitted in.
        family, params: q.
        key: PRNG key for q's draws.

    Returns:
        site name → q's largest unconstrained sd on it, for each flat site (empty if none); inf
        where q's draws are no longer finite.
    """
    exact = _closed_form_sds(target, family, params)
    if exact is not None and np.all(np.isfinite(exact)) and exact.max() <= SUSPICIOUS_SD:
        return {}  # nothing to check, and no draws' program to compile (~1 CPU s of a first fit)
    draws, sds = _unconstrained_draws(target, family, params, key)
    sds, centres = np.asarray(sds), np.abs(np.asarray(jnp.mean(draws, axis=0)))
    # float32's rounding step (1.2e-7) is above float64's threshold: scale it, 100 ulps at least
    resolution = max(_RESOLUTION, 100 * float(jnp.finfo(draws.dtype).eps))
    flagged, start = {}, 0
    for site in target.sites:
        block = slice(start, start + site.size)
        if not np.all(np.isfinite(sds[block])):  # q ran away past floating point
            flagged[site.name] = float("inf")
        elif sds[block].max() > SUSPICIOUS_SD and np.any(sds[block] < resolution * centres[block]):
            # q so far out that its spread is rounding error of its location (u ~ 1e70, sd ~ 1e55):
            # ran away too, and the widening test would only measure the rounding (at LLVM's -O0
            # an improper posterior's fit came out so and went unflagged; measured)
            flagged[site.name] = float(sds[block].max())
        elif sds[block].max() > SUSPICIOUS_SD:
            if float(_median_cost(target, draws, start, site.size)) < _MAX_COST:
                flagged[site.name] = float(sds[block].max())
        start += site.size
    return flagged


def _closed_form_sds(target: Target, family: Family, params: Any) -> np.ndarray | None:
    """q's sds in the model's flat unconstrained space ``(dim,)`` where q has closed-form moments
    (Gaussian families and their mixtures), else None. The frame is affine, so they are exact."""
    try:
        return np.asarray(_gaussian_sds(target, family, params))
    except (NotImplementedError, AttributeError):  # a flow: no closed form (raised while tracing)
        return None


@setup_jit  # one program: run op by op, each new shape compiled its own (8 more; test_engine)
def _gaussian_sds(target: Target, family: Family, params: Any) -> jax.Array:
    from vitools.result import gaussian_moments  # result imports the families this module's callers fit

    _, covariance = gaussian_moments(family.distribution(params))
    return jnp.sqrt(jnp.diag(target.frame.covariance_to_model(covariance)))


@jax.jit
def _unconstrained_draws(target: Target, family: Family, params: Any, key: jax.Array):
    """``(_NUM_DRAWS, dim)`` draws of q in the model's flat unconstrained space and their sds."""
    draws = jax.vmap(target.to_unconstrained)(draw_many(family.distribution(params), key, _NUM_DRAWS))
    return draws, jnp.std(draws, axis=0)


@jax.jit
def _median_cost(target: Target, draws: jax.Array, start: int, size: int) -> jax.Array:
    """Median over draws of log π(u) - log π(u widened along coordinates [start, start + size));
    +inf where not finite. ``start`` and ``size`` are traced: one program for every site."""
    index = jnp.arange(target.dim)
    mask = (index >= start) & (index < start + size)
    centre = jnp.mean(draws, axis=0)
    widened = jnp.where(mask[None, :], centre[None, :] + WIDEN * (draws - centre[None, :]), draws)
    log_density = jax.vmap(functools.partial(_log_density_unconstrained, target))
    cost = log_density(draws) - log_density(widened)
    return jnp.median(jnp.where(jnp.isnan(cost), jnp.inf, cost))


def _log_density_unconstrained(target: Target, u: jax.Array) -> jax.Array:
    return target.log_density(target.from_unconstrained(u))
