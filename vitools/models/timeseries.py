"""Latent-process models over time: ``stochastic_volatility`` and ``gp_poisson``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform

from vitools.models.base import NutsSettings, ZooModel

SV_NUM_STEPS = 100


def stochastic_volatility(returns: np.ndarray) -> None:
    """Stochastic volatility (Kim, Shephard and Chib, 1998), non-centred, 100 steps.

    ``h_t = mu + phi (h_{t-1} - mu) + sigma eta_t`` (stationary start), ``r_t ~ N(0, exp(h_t / 2))``,
    ``(phi + 1) / 2 ~ Beta(20, 1.5)``. Hard because it has 103 latent dimensions of which 100
    are the standardized innovations ``h_std``, coupled to ``phi`` and ``sigma``; ``sigma`` is
    weakly identified from 100 returns (skewed, mass near 0) and ``phi`` piles up near 1.
    """
    mu = numpyro.sample("mu", dist.Normal(-1.0, 1.0))
    unit = constraints.unit_interval
    phi = numpyro.sample(
        "phi", dist.TransformedDistribution(dist.Beta(20.0, 1.5), AffineTransform(-1.0, 2.0, domain=unit))
    )
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
    with numpyro.plate("time", returns.shape[0]):
        h_std = numpyro.sample("h_std", dist.Normal(0.0, 1.0))

    def step(previous: jax.Array, innovation: jax.Array) -> tuple[jax.Array, jax.Array]:
        current = phi * previous + sigma * innovation
        return current, current

    first = sigma / jnp.sqrt(1.0 - phi**2) * h_std[0]
    _, rest = jax.lax.scan(step, first, h_std[1:])
    h = numpyro.deterministic("h", mu + jnp.concatenate([first[None], rest]))
    with numpyro.plate("time", returns.shape[0]):
        numpyro.sample("returns", dist.Normal(0.0, jnp.exp(h / 2)), obs=returns)


def _sv_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1998)
    mu, phi, sigma = -1.0, 0.95, 0.3
    h = np.empty(SV_NUM_STEPS)
    h[0] = mu + sigma / np.sqrt(1 - phi**2) * rng.standard_normal()
    for t in range(1, SV_NUM_STEPS):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * rng.standard_normal()
    return {"returns": np.exp(h / 2) * rng.standard_normal(SV_NUM_STEPS)}


GP_NUM_POINTS = 25
GP_NUGGET = 1e-4  # relative jitter on the kernel diagonal; keeps float32 Cholesky stable


def gp_poisson(t: np.ndarray, counts: np.ndarray | None = None) -> None:
    """Poisson regression on a latent Gaussian process, non-centred, 25 points.

    ``f = intercept + chol(K) f_std`` with a squared-exponential kernel (amplitude, lengthscale),
    ``counts_i ~ Poisson(exp(f_i))``. Hard because the 25 whitened latents are coupled to the
    kernel hyperparameters (a funnel in ``amplitude``), the lengthscale is weakly identified,
    and the Poisson likelihood with small counts (many 0-2) is far from Gaussian.
    """
    amplitude = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    lengthscale = numpyro.sample("lengthscale", dist.InverseGamma(5.0, 5.0))
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.0))
    with numpyro.plate("time", t.shape[0]):
        f_std = numpyro.sample("f_std", dist.Normal(0.0, 1.0))
    sq_dist = (t[:, None] - t[None, :]) ** 2
    kernel = jnp.exp(-0.5 * sq_dist / lengthscale**2) + GP_NUGGET * jnp.eye(t.shape[0])
    f = numpyro.deterministic("f", intercept + amplitude * (jnp.linalg.cholesky(kernel) @ f_std))
    with numpyro.plate("time", t.shape[0]):
        numpyro.sample("counts", dist.Poisson(jnp.exp(f)), obs=counts)


def _gp_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(25)
    t = np.linspace(0.0, 10.0, GP_NUM_POINTS)
    counts = rng.poisson(np.exp(0.5 + np.sin(t)))
    return {"t": t, "counts": counts}


ZOO = (
    ZooModel(
        name="stochastic_volatility",
        description="Stochastic volatility, 100 simulated returns, non-centred log-volatility.",
        model=stochastic_volatility,
        kwargs=_sv_data(),
        tags=("timeseries", "high-dimensional"),
        # phi near 1 blows up the stationary scale sigma / sqrt(1 - phi^2): small steps needed.
        nuts=NutsSettings(target_accept_prob=0.995),
    ),
    ZooModel(
        name="gp_poisson",
        description="Gaussian-process Poisson regression, 25 points, non-centred latent f.",
        model=gp_poisson,
        kwargs=_gp_data(),
        tags=("gp", "timeseries"),
        nuts=NutsSettings(target_accept_prob=0.99),
    ),
)
