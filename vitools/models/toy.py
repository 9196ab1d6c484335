"""Toy targets with exact posteriors: ``bimodal``, ``banana``, ``funnel``, ``gaussian_100``.

Each comes with an exact NumPy sampler and closed-form moments, so its reference needs no MCMC.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vitools.models.base import ClosedForm, Draws, ZooModel

# bimodal: two unit-covariance Gaussians 5 * sqrt(2) ~ 7.1 standard deviations apart.
BIMODAL_LOCS = np.array([[-2.5, -2.5], [2.5, 2.5]])
BIMODAL_WEIGHTS = np.array([0.5, 0.5])

# banana: x ~ N(0, BANANA_SCALE_X), y | x ~ N(BANANA_CURVATURE * x**2, BANANA_SCALE_Y).
BANANA_SCALE_X, BANANA_SCALE_Y, BANANA_CURVATURE = 2.0, 1.0, 0.5

FUNNEL_DIM, FUNNEL_SCALE_V = 10, 3.0

# gaussian_100: AR(1) correlation rho = 0.9 between neighbours, scales from 0.1 to 10.
GAUSSIAN_DIM, GAUSSIAN_RHO = 100, 0.9
GAUSSIAN_MEAN = np.linspace(-2.0, 2.0, GAUSSIAN_DIM)
GAUSSIAN_SCALES = np.logspace(-1.0, 1.0, GAUSSIAN_DIM)


def bimodal() -> None:
    """Equal mixture of N((-2.5, -2.5), I) and N((2.5, 2.5), I) on the 2-vector site ``z``.

    Hard because the modes are well separated (density in the valley ~0.2% of the peaks): the
    reverse-KL optimal Gaussian sits on one mode (KL(q || p) = 0.693 ~ log 2, against 1.338 for
    the best Gaussian centred between the modes, which is still a local optimum that a centred
    start can stall in); forward KL spreads over both modes and fills the empty valley; MCMC
    chains do not cross. Mixture mean 0, covariance ``I + 6.25 * ones((2, 2))``.
    """
    mixing = dist.Categorical(probs=jnp.asarray(BIMODAL_WEIGHTS))
    components = dist.MultivariateNormal(jnp.asarray(BIMODAL_LOCS), jnp.eye(2))
    numpyro.sample("z", dist.MixtureSameFamily(mixing, components))


def _bimodal_sample(rng: np.random.Generator, num_draws: int) -> Draws:
    labels = rng.choice(len(BIMODAL_WEIGHTS), size=num_draws, p=BIMODAL_WEIGHTS)
    return {"z": BIMODAL_LOCS[labels] + rng.standard_normal((num_draws, 2))}


def banana() -> None:
    """Rosenbrock-like banana: ``x ~ N(0, 2)``, ``y | x ~ N(0.5 x**2, 1)``.

    Hard because the posterior is curved: no linear map makes it Gaussian, the local scale of
    ``y`` changes along the ridge, and ``y`` is skewed (mean 2, sd 3, long right tail).
    """
    x = numpyro.sample("x", dist.Normal(0.0, BANANA_SCALE_X))
    numpyro.sample("y", dist.Normal(BANANA_CURVATURE * x**2, BANANA_SCALE_Y))


def _banana_sample(rng: np.random.Generator, num_draws: int) -> Draws:
    x = BANANA_SCALE_X * rng.standard_normal(num_draws)
    y = BANANA_CURVATURE * x**2 + BANANA_SCALE_Y * rng.standard_normal(num_draws)
    return {"x": x, "y": y}


def funnel() -> None:
    """Neal's funnel in 10 dimensions: ``v ~ N(0, 3)``, ``x_1..9 | v ~ N(0, exp(v / 2))``.

    Hard because the scale of ``x`` spans orders of magnitude with ``v``: the neck (v << 0) needs
    tiny steps, the mouth huge ones; Gaussian families and NUTS both under-explore the neck, and
    the marginals of ``x`` are heavy-tailed (sd exp(9/4) ~ 9.5, dominated by rare wide draws).
    Neal (2003), "Slice sampling".
    """
    v = numpyro.sample("v", dist.Normal(0.0, FUNNEL_SCALE_V))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([FUNNEL_DIM - 1]).to_event(1))


def _funnel_sample(rng: np.random.Generator, num_draws: int) -> Draws:
    v = FUNNEL_SCALE_V * rng.standard_normal(num_draws)
    x = np.exp(v / 2)[:, None] * rng.standard_normal((num_draws, FUNNEL_DIM - 1))
    return {"v": v, "x": x}


def gaussian_100() -> None:
    """A 100-dimensional correlated Gaussian given only up to its normalizing constant.

    ``x`` has a flat (improper) prior and the factor ``-0.5 (x - m)' S^-1 (x - m)`` with
    ``S = D R D``: ``R`` the AR(1) correlation (rho 0.9 between neighbours), ``D`` scales
    log-spaced from 0.1 to 10. Hard because it is ill-conditioned (scales differ 100-fold, and
    the correlation alone has condition number ~360) and strongly correlated: mean-field families
    underestimate the marginal variances by the factor 1 - rho**2 ~ 0.19. The log normalizer is
    ``d/2 log(2 pi) + sum(log D) + (d - 1)/2 log(1 - rho**2)``.
    """
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (GAUSSIAN_DIM,)))
    u = (x - jnp.asarray(GAUSSIAN_MEAN)) / jnp.asarray(GAUSSIAN_SCALES)
    innovations = (u[1:] - GAUSSIAN_RHO * u[:-1]) / np.sqrt(1.0 - GAUSSIAN_RHO**2)
    numpyro.factor("log_density", -0.5 * (u[0] ** 2 + jnp.sum(innovations**2)))


def gaussian_100_covariance() -> np.ndarray:
    """The exact covariance ``D R D`` of ``gaussian_100``, shape ``(100, 100)``."""
    lags = np.abs(np.subtract.outer(np.arange(GAUSSIAN_DIM), np.arange(GAUSSIAN_DIM)))
    return GAUSSIAN_RHO**lags * np.outer(GAUSSIAN_SCALES, GAUSSIAN_SCALES)


def _gaussian_100_log_normalizer() -> float:
    log_det = 2 * np.sum(np.log(GAUSSIAN_SCALES)) + (GAUSSIAN_DIM - 1) * np.log1p(-(GAUSSIAN_RHO**2))
    return float(0.5 * GAUSSIAN_DIM * np.log(2 * np.pi) + 0.5 * log_det)


def _gaussian_100_sample(rng: np.random.Generator, num_draws: int) -> Draws:
    eps = rng.standard_normal((num_draws, GAUSSIAN_DIM))
    u = np.empty_like(eps)
    u[:, 0] = eps[:, 0]
    for i in range(1, GAUSSIAN_DIM):
        u[:, i] = GAUSSIAN_RHO * u[:, i - 1] + np.sqrt(1 - GAUSSIAN_RHO**2) * eps[:, i]
    return {"x": GAUSSIAN_MEAN + GAUSSIAN_SCALES * u}


ZOO = (
    ZooModel(
        name="bimodal",
        description="2-D equal mixture of two unit Gaussians at (-2.5, -2.5) and (2.5, 2.5).",
        model=bimodal,
        log_normalizer=0.0,
        tags=("multimodal", "toy"),
        closed_form=ClosedForm(
            sample=_bimodal_sample,
            mean={"z": BIMODAL_WEIGHTS @ BIMODAL_LOCS},
            sd={
                "z": np.sqrt(1.0 + BIMODAL_WEIGHTS @ BIMODAL_LOCS**2 - (BIMODAL_WEIGHTS @ BIMODAL_LOCS) ** 2)
            },
        ),
    ),
    ZooModel(
        name="banana",
        description="Curved 2-D banana: x ~ N(0, 2), y | x ~ N(0.5 x^2, 1).",
        model=banana,
        log_normalizer=0.0,
        tags=("curved", "toy"),
        closed_form=ClosedForm(
            sample=_banana_sample,
            mean={"x": np.array(0.0), "y": np.array(BANANA_CURVATURE * BANANA_SCALE_X**2)},
            sd={
                "x": np.array(BANANA_SCALE_X),
                "y": np.sqrt(2 * BANANA_CURVATURE**2 * BANANA_SCALE_X**4 + BANANA_SCALE_Y**2),
            },
        ),
    ),
    ZooModel(
        name="funnel",
        description="Neal's funnel, d = 10: v ~ N(0, 3), x_1..9 ~ N(0, exp(v / 2)).",
        model=funnel,
        log_normalizer=0.0,
        tags=("funnel", "heavy-tailed", "toy"),
        closed_form=ClosedForm(
            sample=_funnel_sample,
            mean={"v": np.array(0.0), "x": np.zeros(FUNNEL_DIM - 1)},
            # Var(x_i) = E[exp(v)] = exp(FUNNEL_SCALE_V**2 / 2).
            sd={"v": np.array(FUNNEL_SCALE_V), "x": np.full(FUNNEL_DIM - 1, np.exp(FUNNEL_SCALE_V**2 / 4))},
        ),
    ),
    ZooModel(
        name="gaussian_100",
        description="100-D Gaussian, AR(1) correlation 0.9, scales 0.1-10, unnormalized density.",
        model=gaussian_100,
        log_normalizer=_gaussian_100_log_normalizer(),
        tags=("gaussian", "ill-conditioned", "improper-prior", "toy"),
        closed_form=ClosedForm(
            sample=_gaussian_100_sample,
            mean={"x": GAUSSIAN_MEAN.copy()},
            sd={"x": GAUSSIAN_SCALES.copy()},
        ),
    ),
)
