"""Statistical recovery on targets with known answers (fixed seeds; tolerances from MC error)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

import vitools as vt

MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[2.0, 0.9, 0.0], [0.9, 1.0, -0.3], [0.0, -0.3, 0.5]])


def gaussian_target():
    return vt.Target.from_log_density(lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, MEAN, COV), 3)


def fitted_moments(fit):
    return fit.mean_and_covariance()


@pytest.mark.parametrize("objective", ["reverse_kl", "forward_kl"])
def test_gaussian_target_recovered_in_both_directions(objective):
    """Both KLs are exact at q = p. Reverse KL with sticking-the-landing has a zero-variance
    gradient there, so it lands to ~1e-10 (seeds 0-4: max error 4e-10). Forward KL by SNIS keeps
    the noise of 64 weighted draws per step, damped by the decayed rate: seeds 0-4 gave max
    errors 0.013 (mean) and 0.017 (covariance); the tolerances are about 5x those."""
    fit = vt.fit(gaussian_target(), objective=objective, num_steps=2000, init="median", progress=False)
    mean, cov = fitted_moments(fit)
    tol_mean, tol_cov = (1e-6, 1e-6) if objective == "reverse_kl" else (0.07, 0.09)
    np.testing.assert_allclose(mean, MEAN, atol=tol_mean)
    np.testing.assert_allclose(cov, COV, atol=tol_cov)


WEIGHTS, LOCS, SCALE = jnp.array([0.5, 0.5]), jnp.array([[-3.0, -3.0], [3.0, 3.0]]), 0.7


def mixture_log_density(x):
    component = jax.scipy.stats.norm.logpdf(x[None, :], LOCS, SCALE).sum(-1)
    return jax.nn.logsumexp(component + jnp.log(WEIGHTS))


def mixture_moments():
    mean = WEIGHTS @ LOCS
    centred = LOCS - mean[None, :]
    cov = SCALE**2 * jnp.eye(2) + (WEIGHTS[:, None] * centred).T @ centred
    return mean, cov


@pytest.mark.slow
def test_forward_kl_covers_a_mixture_and_reverse_kl_picks_a_mode():
    """Forward KL with a Gaussian family is moment matching: the mixture's overall mean (0, 0)
    and covariance [[9.49, 9], [9, 9.49]]. Reverse KL locks onto one component (mean ±3, sd 0.7)."""
    target = vt.Target.from_log_density(mixture_log_density, 2)
    mean, cov = mixture_moments()
    # converge=False: q sits on one mode for ~600 steps with a flat loss (its draws never reach
    # the other mode), which any rule on the loss reads as converged (measured, seed 0).
    forward = vt.fit(
        target, objective=vt.ForwardKL(num_draws=256), num_steps=4000, seed=0, progress=False, converge=False
    )
    fwd_mean, fwd_cov = fitted_moments(forward)
    # q starts on one mode (Laplace) and must grow ~4x. Seeds 0-3 at 4000 steps: means within
    # 0.021 of 0 (sd 3.1), covariance entries within 0.6% of 9.49 / 9.0. Tolerances: 0.1 on the
    # mean, 3% on the covariance (5x those); a reverse-KL-like fit (cov 0.49 I) fails them by far.
    np.testing.assert_allclose(fwd_mean, mean, atol=0.1)
    np.testing.assert_allclose(fwd_cov, cov, rtol=0.03)

    reverse = vt.fit(target, objective="reverse_kl", num_steps=2000, seed=0, progress=False, converge=False)
    rev_mean, rev_cov = fitted_moments(reverse)
    nearest = LOCS[jnp.argmin(jnp.sum((LOCS - rev_mean[None, :]) ** 2, -1))]
    np.testing.assert_allclose(rev_mean, nearest, atol=0.1)
    np.testing.assert_allclose(np.sqrt(np.diag(rev_cov)), SCALE, rtol=0.1)


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", 8):
        theta_t = numpyro.sample("theta_t", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_t, sigma), obs=y)


SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


@pytest.fixture(scope="module")
def nuts_eight_schools():
    mcmc = MCMC(
        NUTS(eight_schools),
        num_warmup=1000,
        num_samples=2000,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), SIGMA, y=Y)
    return mcmc.get_samples()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["reverse_kl", "forward_kl"])
def test_eight_schools_within_tolerance_of_nuts(objective, nuts_eight_schools):
    """Posterior mean of mu and of log tau within 0.25 posterior sd of NUTS (4000 draws: MC
    error ~0.03 sd); the sd of mu within 25%. log tau's sd: forward KL covers it (within 25%),
    reverse KL underestimates it (a known property: below NUTS's)."""
    fit = vt.fit(eight_schools, SIGMA, y=Y, objective=objective, num_steps=2000, progress=False)
    draws = fit.sample(8000, seed=1)
    ref_mu, ref_log_tau = np.asarray(nuts_eight_schools["mu"]), np.log(np.asarray(nuts_eight_schools["tau"]))
    mu, log_tau = draws["mu"], np.log(draws["tau"])
    assert abs(mu.mean() - ref_mu.mean()) < 0.25 * ref_mu.std()
    assert abs(log_tau.mean() - ref_log_tau.mean()) < 0.25 * ref_log_tau.std()
    assert mu.std() == pytest.approx(ref_mu.std(), rel=0.25)
    if objective == "forward_kl":
        assert log_tau.std() == pytest.approx(ref_log_tau.std(), rel=0.25)
    else:
        assert log_tau.std() < ref_log_tau.std()
