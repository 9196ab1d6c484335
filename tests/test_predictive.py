"""Predictions from a fit: the NumPyro guide, predictive draws, the tree's groups, and LOO."""

from __future__ import annotations

import warnings

import arviz_base as azb
import arviz_stats as azs
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro.distributions import constraints
from numpyro.handlers import seed
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import log_density

import vitools as vt
from vitools.convert import fit_to_datatree
from vitools.predictive import LATENT_SITE
from vitools.result import Fit
from vitools.targets import Target

NUM_OBS = 60


def regression(x, y=None):
    """Linear regression written the way users write it: ``y=None`` to predict."""
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    mean = numpyro.deterministic("mean", a + b * x)
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Normal(mean, sigma), obs=y)


def log_prior(a, b, sigma):
    return (
        scipy.stats.norm(0.0, 5.0).logpdf(a)
        + scipy.stats.norm(0.0, 5.0).logpdf(b)
        + scipy.stats.halfnorm(scale=2.0).logpdf(sigma)
    )


def quiet_loo(obj, **kwargs):
    """``vt.loo`` with arviz-stats' Pareto-k warning silenced: at S = 10,000 a Gaussian q's k̂ of
    a few terms reads 0.7-0.96 over draw seeds while elpd moves by 0.01 (measured), so the warning
    is expected here; the assertions read the numbers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        return vt.loo(obj, **kwargs)


def guide_draw(guide, *model_args):
    """The log density and latent values of one seeded run of ``guide``, and whether its flat draw
    is marked auxiliary. Compiled as one program: run eagerly, every NumPyro op compiles on its own
    (3.3 s against 1.1 s, measured)."""
    auxiliary = []

    @jax.jit
    def run(key):
        log_q, trace = log_density(seed(guide, key), model_args, {}, {})
        auxiliary.append(trace[LATENT_SITE]["infer"].get("is_auxiliary", False))
        return log_q, {name: trace[name]["value"] for name in guide.fit.target.site_names}

    log_q, values = run(jax.random.PRNGKey(3))
    return float(log_q), {name: np.asarray(value)[None] for name, value in values.items()}, auxiliary[0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=NUM_OBS)
    return x, 1.0 + 2.0 * x + rng.normal(size=NUM_OBS)


@pytest.fixture(scope="module")
def fit(data):
    x, y = data
    return vt.fit(regression, x, y=y, family="fullrank", init="median", seed=0, progress=False)


@pytest.fixture(scope="module")
def mcmc(data):
    x, y = data
    run = MCMC(NUTS(regression), num_warmup=500, num_samples=1000, num_chains=1, progress_bar=False)
    run.run(jax.random.PRNGKey(0), x, y=y)
    return run


# ------------------------------------------------------------------------------------------------
# the guide
def test_guide_log_density_is_fit_log_prob_at_its_draw(fit, data):
    # exact identity: the guide's Delta sites carry -log|det J|, so its log density is q's in the
    # constrained space (sigma > 0: the Jacobian is not zero)
    log_q, draw, auxiliary = guide_draw(fit.guide, data[0])
    assert auxiliary  # q's flat draw is no model site
    np.testing.assert_allclose(log_q, fit.log_prob(draw)[0], rtol=1e-10)


def test_guide_log_density_follows_a_support_that_depends_on_another_site():
    def bounded(y=None):
        a = numpyro.sample("a", dist.HalfNormal(1.0))
        b = numpyro.sample("b", dist.Uniform(0.0, a))  # support (0, a): its transform depends on a
        numpyro.sample("y", dist.Normal(b, 1.0), obs=y)

    q = Fit.from_gaussian(Target.from_model(bounded, y=0.3), jnp.array([0.1, -0.2]), 0.5 * jnp.eye(2))
    log_q, draw, _ = guide_draw(q.guide)
    assert 0.0 < draw["b"][0] < draw["a"][0]
    np.testing.assert_allclose(log_q, q.log_prob(draw)[0], rtol=1e-10)


def test_predictive_with_the_guide_matches_predictive_from_fit_sample(fit, data):
    x, _ = data
    num_draws = 4000
    by_guide = Predictive(regression, guide=fit.guide, num_samples=num_draws, parallel=True)
    by_guide = by_guide(jax.random.PRNGKey(1), x)["y"]
    # the same distribution from other draws of q and other predictive noise
    by_draws = Predictive(regression, posterior_samples=fit.sample(num_draws, seed=2), parallel=True)
    by_draws = by_draws(jax.random.PRNGKey(3), x)
    assert by_guide.shape == by_draws["y"].shape == (num_draws, NUM_OBS)
    # Both are means of S independent predictive draws of the same distribution, so their
    # difference at obs i has sd sqrt(2) sd_i / sqrt(S); over 60 observations, |z| < 4.5 fails
    # with probability ~ 60 * 7e-6 if the two agree.
    sd = np.asarray(by_draws["y"]).std(0)
    z = (np.asarray(by_guide).mean(0) - np.asarray(by_draws["y"]).mean(0)) / (np.sqrt(2.0 / num_draws) * sd)
    assert np.max(np.abs(z)) < 4.5
    # the predictive sd: relative MC error ~ 1/sqrt(2S) = 1.1% for each, so 6% is > 3.5 sd of the difference
    np.testing.assert_allclose(np.asarray(by_guide).std(0), sd, rtol=0.06)


def test_guide_emits_the_fitted_point_estimates(data):
    def with_param(x, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        sigma = numpyro.param("sigma", 1.0, constraint=constraints.positive)
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("y", dist.Normal(a + x, sigma), obs=y)

    x, y = data
    target = Target.from_model(with_param, x, y=y).with_model_params({"sigma": jnp.log(jnp.array(0.25))})
    q = Fit.from_gaussian(target, jnp.zeros(1), jnp.eye(1))
    by_guide = Predictive(with_param, guide=q.guide, num_samples=5, return_sites=["sigma", "y"])
    assert np.allclose(by_guide(jax.random.PRNGKey(0), x)["sigma"], 0.25)
    assert np.allclose(q.predictive(5, x, return_sites=["sigma"])["sigma"], 0.25)


# ------------------------------------------------------------------------------------------------
# fit.predictive
def test_fit_predictive_on_new_data_has_shapes_and_reuses_fit_sample(fit):
    x_new = np.linspace(-2.0, 2.0, 7)
    draws = fit.predictive(500, x_new, seed=4)
    assert draws["y"].shape == draws["mean"].shape == (500, 7)
    # the same draws of q as fit.sample(500, seed=4): the deterministic mean is a + b x_new
    sample = fit.sample(500, seed=4)
    np.testing.assert_allclose(draws["mean"], sample["a"][:, None] + sample["b"][:, None] * x_new)
    kept = fit.predictive(500, x_new, seed=4, return_sites=["b"])
    np.testing.assert_array_equal(kept["b"], sample["b"])


def test_fit_predictive_without_arguments_replicates_the_fitted_data(fit, data):
    replicated = fit.predictive(300)["y"]
    assert replicated.shape == (300, NUM_OBS)
    assert not np.any(replicated == data[1])  # drawn afresh, not the observations


def subsampled_regression(x, y=None):
    """``regression`` on minibatches of 20 rows, indexing the data with the plate's indices."""
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("obs", x.shape[0], subsample_size=20) as index:
        mean = numpyro.deterministic("mean", a + b * x[index])
        numpyro.sample("y", dist.Normal(mean, sigma), obs=None if y is None else y[index])


@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_fit_predictive_of_a_subsampled_model_predicts_every_row_of_new_data(data, as_array):
    x, y = data
    fit = vt.fit(subsampled_regression, x, y=y, num_steps=300, init="median", seed=0, progress=False)
    # 7 rows (fewer than the batch of 20): NumPy data raised TracerArrayConversionError, JAX data
    # gave 60 rows (the plate kept the fitted N; JAX clamped x_new[index])
    x_new = np.linspace(-2.0, 2.0, 7)
    draws = fit.predictive(50, as_array(x_new), seed=4)
    assert draws["y"].shape == draws["mean"].shape == (50, 7)
    sample = fit.sample(50, seed=4)  # the rows in order, each its own x
    np.testing.assert_allclose(draws["mean"], sample["a"][:, None] + sample["b"][:, None] * x_new, rtol=1e-5)
    x_many = np.linspace(-2.0, 2.0, 90)  # more rows than fitted: every one, not 20 nor 60
    assert fit.predictive(5, as_array(x_many), seed=4)["y"].shape == (5, 90)
    assert fit.predictive(5, seed=4)["y"].shape == (5, NUM_OBS)  # replicates of all fitted rows


# ------------------------------------------------------------------------------------------------
# the tree's groups
@pytest.fixture(scope="module")
def tree(fit):
    return vt.add_predictive(fit_to_datatree(fit, num_draws=400, seed=5), fit, seed=6)


def test_tree_gets_the_three_groups_with_the_models_dims(tree, data):
    assert {"posterior_predictive", "observed_data", "log_likelihood"} <= set(tree.children)
    assert tree["posterior_predictive"]["y"].dims == ("chain", "draw", "obs")
    assert dict(tree["posterior_predictive"].sizes) == {"chain": 1, "draw": 400, "obs": NUM_OBS}
    assert tree["log_likelihood"]["y"].dims == ("chain", "draw", "obs")
    assert tree["observed_data"]["y"].dims == ("obs",)
    np.testing.assert_array_equal(tree["observed_data"]["y"], data[1])
    assert set(tree["posterior"].data_vars) >= {"a", "b", "sigma"}  # the rest is kept


def test_log_likelihood_is_log_p_minus_log_prior_at_the_trees_draws(tree):
    # exact identity: log p(y, z) = log p(z) + sum_i log p(y_i | z), at the same draws
    post = tree["posterior"]
    prior = log_prior(post["a"].values, post["b"].values, post["sigma"].values)
    total = tree["log_likelihood"]["y"].sum("obs").values
    np.testing.assert_allclose(total, tree["sample_stats"]["log_p"].values - prior, rtol=1e-10)


def test_add_predictive_refuses_a_tree_of_another_fit(fit, tree):
    m, cov = fit.mean_and_covariance()
    other = Fit.from_gaussian(fit.target, jnp.asarray(m), 0.8 * jnp.linalg.cholesky(jnp.asarray(cov)))
    with pytest.raises(ValueError, match="drawn from another fit"):
        vt.add_predictive(tree, other)


def test_add_predictive_refuses_a_model_without_observations():
    def prior_only():
        numpyro.sample("mu", dist.Normal(0.0, 1.0))

    q = Fit.from_gaussian(Target.from_model(prior_only), jnp.zeros(1), jnp.eye(1))
    with pytest.raises(ValueError, match="no observed sites"):
        vt.add_predictive(azb.from_dict({"posterior": {"mu": np.zeros((1, 20))}}), q)


def test_a_plain_log_density_has_no_model_to_predict_with():
    q = Fit.from_gaussian(
        Target.from_log_density(lambda z: -0.5 * jnp.sum(z**2), 2), jnp.zeros(2), jnp.eye(2)
    )
    with pytest.raises(ValueError, match="plain log density"):
        _ = q.guide
    with pytest.raises(ValueError, match="plain log density"):
        q.predictive(10)


# ------------------------------------------------------------------------------------------------
# LOO
def test_loo_of_a_fullrank_fit_matches_nuts(fit, mcmc):
    vi, nuts = quiet_loo(fit), vt.loo(mcmc)
    assert vi.approx_posterior and not getattr(nuts, "approx_posterior", False)
    assert vi.pareto_k.shape == (NUM_OBS,) and vi.n_samples == 10_000
    assert abs(vi.elpd - nuts.elpd) < nuts.se  # what the issue asks (se ~ 4.8 nats)
    # The two estimates share the data, so they differ only by Monte Carlo error and q's error:
    # NUTS elpd (1 chain x 1000) moved by sd 0.03 over 3 chain seeds, VI's (10,000 draws) by 0.008
    # over 5 draw seeds (measured: -88.35 to -88.37 against -88.35 to -88.40); 0.2 nats is > 6 sd.
    assert abs(vi.elpd - nuts.elpd) < 0.2
    assert abs(vi.p - nuts.p) < 0.3
    table = azs.compare({"vi": vi, "nuts": nuts})  # a VI fit and NUTS compared the same way
    assert set(table.index) == {"vi", "nuts"}


def test_loo_of_a_tree_is_that_of_its_fit_or_mcmc(fit, mcmc):
    tree = vt.add_predictive(fit_to_datatree(fit), fit)
    assert quiet_loo(tree).elpd == quiet_loo(fit).elpd  # the same draws: seed 0, 10,000
    nuts_tree = azb.from_numpyro(mcmc, log_likelihood=True)
    assert vt.loo(nuts_tree).elpd == vt.loo(mcmc).elpd


def test_the_correction_for_q_matters_when_q_is_too_narrow(fit, mcmc):
    # q = N(m, 0.8^2 Σ) with q's own moments: deliberately overconfident, as reverse-KL fits
    # tend to be, yet with a tail index the importance weights can bear (k̂ of p/q ≈ 1 - 0.8²).
    m, cov = fit.mean_and_covariance()
    narrow = Fit.from_gaussian(fit.target, jnp.asarray(m), 0.8 * jnp.linalg.cholesky(jnp.asarray(cov)))
    tree = vt.add_predictive(fit_to_datatree(narrow), narrow)
    corrected = quiet_loo(tree)
    naive = azs.loo(tree)  # q's draws taken as the posterior's
    nuts = vt.loo(mcmc)
    # measured over draw seeds 0-2: naive -87.25 (p 1.85), corrected -88.24 to -88.29 (p 2.83-2.88),
    # NUTS -88.35; the seed-to-seed spread of each is < 0.05
    assert naive.elpd - corrected.elpd > 0.7  # the narrow q's predictive flatters itself
    assert naive.p < corrected.p - 0.7
    assert abs(corrected.elpd - nuts.elpd) < 0.3
    assert abs(naive.elpd - nuts.elpd) > 0.7


def test_loo_needs_a_log_likelihood(fit, tree):
    with pytest.raises(TypeError, match="needs a log likelihood.*has none"):
        vt.loo({"a": np.zeros(100), "b": np.zeros(100), "sigma": np.ones(100)})
    with pytest.raises(ValueError, match="no log_likelihood group"):
        vt.loo(tree.drop_nodes("log_likelihood"))
    with pytest.raises(TypeError, match="takes a vitools Fit"):
        vt.loo(3.0)


def test_a_float32_fit_accepts_its_own_tree(data):
    """Without x64 (NumPyro's default) log q recomputed at a tree's draws differs from the tree's in
    the fifth digit; the fit's own tree must still be recognised (vt.loo failed on every fit)."""
    x, y = (np.asarray(v, dtype=np.float32) for v in data)
    with jax.enable_x64(False):
        fit32 = vt.fit(regression, x, y=y, family="fullrank", init="median", num_steps=300, progress=False)
        tree = vt.to_datatree(fit32, num_draws=2000)
        # a float32 fit: its draws are float32 (log p and log q are evaluated in float64 since f02ed43)
        assert {v.dtype for v in tree["posterior"].data_vars.values()} == {np.dtype(np.float32)}
        with_groups = vt.add_predictive(tree, fit32)
        elpd = quiet_loo(fit32, num_draws=2000).elpd
    assert with_groups["log_likelihood"]["y"].shape == (1, 2000, NUM_OBS)
    assert np.isfinite(elpd)
