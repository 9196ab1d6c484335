"""Hierarchical models: eight schools (centred and non-centred) and a radon-style varying-intercept model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.reparam import LocScaleReparam

from vitools.models.base import Draws, NutsSettings, ZooModel

# Rubin (1981); Gelman et al., BDA3, section 5.5.
EIGHT_SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
EIGHT_SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_centered(sigma: np.ndarray, y: np.ndarray | None = None) -> None:
    """Eight schools, centred: ``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)``.

    Hard because of the funnel between ``tau`` and ``theta``: as ``tau -> 0`` the school effects
    are squeezed together, a region NUTS cannot enter without divergences and Gaussian families
    cannot represent; the data barely inform ``tau`` (half-Cauchy prior).
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma: np.ndarray, y: np.ndarray | None = None) -> None:
    """Eight schools, non-centred: ``theta = mu + tau * theta_t``, ``theta_t ~ N(0, 1)``.

    The same posterior as the centred model in better coordinates. Hard because, although the
    funnel is gone, ``tau`` stays heavy-tailed and skewed (half-Cauchy prior, little data), so
    Gaussian families still misjudge its spread and upper tail.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_t = numpyro.sample("theta_t", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_t)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def noncentered_to_centered(draws: Draws) -> Draws:
    """Map non-centred eight-schools draws (leading batch axis) to the centred model's sites."""
    mu, tau = np.asarray(draws["mu"]), np.asarray(draws["tau"])
    theta = mu[..., None] + tau[..., None] * np.asarray(draws["theta_t"])
    return {"mu": mu, "tau": tau, "theta": theta}


RADON_GROUP_SIZES = np.array([1, 2, 3, 4, 5, 8, 12, 15, 20, 30])


def radon(group: np.ndarray, floor: np.ndarray, y: np.ndarray | None = None) -> None:
    """Varying-intercept linear model in the style of the radon data (Gelman and Hill, 2007).

    ``a_j ~ N(mu_a, sigma_a)`` for 10 counties with 1 to 30 houses, ``y_i ~ N(a_j + b floor_i,
    sigma_y)``, centred parameterization. Hard because the counties are unbalanced: the small ones
    are informed mostly through ``mu_a`` and ``sigma_a``, which couples them in a funnel
    (``sigma_a`` is skewed with mass near zero; NUTS diverges here at target_accept 0.9).
    """
    num_groups = RADON_GROUP_SIZES.size
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 5.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    with numpyro.plate("county", num_groups):
        a = numpyro.sample("a", dist.Normal(mu_a, sigma_a))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("house", group.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.take(a, group) + b * floor, sigma_y), obs=y)


def _radon_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2007)
    group = np.repeat(np.arange(RADON_GROUP_SIZES.size), RADON_GROUP_SIZES)
    a = 1.5 + 0.4 * rng.standard_normal(RADON_GROUP_SIZES.size)
    floor = (rng.uniform(size=group.size) < 0.3).astype(np.float64)
    y = a[group] - 0.7 * floor + 0.7 * rng.standard_normal(group.size)
    return {"group": group, "floor": floor, "y": y}


_EIGHT_SCHOOLS_DATA = {"sigma": EIGHT_SCHOOLS_SIGMA, "y": EIGHT_SCHOOLS_Y}

ZOO = (
    ZooModel(
        name="eight_schools_centered",
        description="Eight schools, centred parameterization (funnel between tau and theta).",
        model=eight_schools_centered,
        kwargs=_EIGHT_SCHOOLS_DATA,
        tags=("hierarchical", "funnel"),
        # NUTS diverges on the centred funnel: reuse the non-centred run (same posterior).
        nuts=NutsSettings(
            target_accept_prob=0.95,
            source_model="eight_schools_noncentered",
            transform=noncentered_to_centered,
        ),
    ),
    ZooModel(
        name="eight_schools_noncentered",
        description="Eight schools, non-centred parameterization.",
        model=eight_schools_noncentered,
        kwargs=_EIGHT_SCHOOLS_DATA,
        tags=("hierarchical", "heavy-tailed"),
        nuts=NutsSettings(target_accept_prob=0.95),
    ),
    ZooModel(
        name="radon",
        description="Varying-intercept linear model, 10 unbalanced groups (1-30 rows), 100 rows.",
        model=radon,
        kwargs=_radon_data(),
        tags=("hierarchical",),
        # The centred funnel makes NUTS diverge; the reference run is non-centred in ``a``.
        nuts=NutsSettings(target_accept_prob=0.9, reparam={"a": LocScaleReparam(0)}),
    ),
)
