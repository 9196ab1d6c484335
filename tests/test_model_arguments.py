"""Models written the way people write them: whatever NumPyro's NUTS accepts, vt.fit accepts.

Each model below reads its data the way posted NumPyro code does (numpy on the data, sizes
from data values, dicts, pandas columns, Python control flow on data). The assertion is that
the fit equals the fit of the same model with its data closed over by hand (what a user had
to do before), so the arguments change nothing but convenience.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.distributions import constraints

import vitools as vt
from vitools import engine

RNG = np.random.default_rng(0)
GROUPS = RNG.integers(1, 4, 40)  # 1-based, as in Stan data
Y = RNG.normal(GROUPS * 0.5, 1.0)
DATA = {"N": 40, "K": 3, "g": GROUPS.tolist(), "y": Y.tolist()}


def hierarchical(data):
    """Stan-style: numpy on the data, sizes from data values, a Python `if` and `for` on them."""
    y = np.asarray(data["y"])
    g = np.asarray(data["g"]) - 1
    K = int(data["K"])
    scale = float(np.log(np.exp(y.std())))  # numpy on data inside the model
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0 * scale))
    tau = numpyro.sample("tau", dist.HalfNormal(2.0))
    with numpyro.plate("groups", K):
        a = numpyro.sample("a", dist.Normal(mu, tau))
    if int(np.sum(g >= 0)) == len(y):  # control flow on data values
        for k in range(K):  # a Python loop over a size taken from the data
            rows = g == k
            numpyro.sample(f"y_{k}", dist.Normal(a[k], 1.0), obs=y[rows])


def closed_over():
    return hierarchical(DATA)


def fitted_means(fit):
    draws = fit.sample(500, seed=1)
    return {name: np.mean(draws[name], axis=0) for name in ("mu", "tau", "a")}


def assert_same_fit(fit, reference):
    for name, value in fitted_means(reference).items():
        # same target, same seed: the same floating-point computation up to op ordering
        np.testing.assert_allclose(fitted_means(fit)[name], value, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference_fit():
    return vt.fit(closed_over, num_steps=300, progress=False)


@pytest.mark.parametrize(
    "data",
    [
        DATA,
        {**DATA, "K": np.int64(3)},  # a size from df.group.nunique()
        {**DATA, "g": np.asarray(GROUPS), "y": np.asarray(Y)},
        {**DATA, "g": pd.Series(GROUPS), "y": pd.Series(Y)},
        {**DATA, "g": jnp.asarray(GROUPS), "y": jnp.asarray(Y), "K": jnp.asarray(3)},
    ],
    ids=["lists", "numpy-int-size", "numpy", "pandas", "jax"],
)
def test_data_as_numpy_nuts_takes_fits_the_same_posterior(data, reference_fit):
    assert_same_fit(vt.fit(hierarchical, data, num_steps=300, progress=False), reference_fit)


def test_a_model_that_needs_data_values_reuses_its_programs_across_seeds_and_steps():
    fit = vt.fit(hierarchical, DATA, num_steps=200, progress=False)
    compiled = engine.num_compilations()
    again = vt.fit(hierarchical, dict(DATA), num_steps=300, seed=3, progress=False)
    assert engine.num_compilations() == compiled and again.num_steps == 300 and fit.num_steps == 200


def test_changed_data_is_never_served_a_stale_program():
    """Closed-over data are keyed by content: data edited in place give a new posterior."""
    data = {"y": np.zeros(20)}

    def model(data):
        y = np.asarray(data["y"])
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(mu, 1.0).expand([len(y)]), obs=y)

    first = vt.fit(model, data, num_steps=300, progress=False).sample(2000, seed=1)["mu"].mean()
    data["y"][:] = 5.0
    second = vt.fit(model, data, num_steps=300, progress=False).sample(2000, seed=1)["mu"].mean()
    # posterior means 0 and 5 * 20 / (20 + 0.01): sd 0.22, so 0.1 is 5 Monte Carlo sds of 2000 draws
    assert abs(first) < 0.1 and abs(second - 4.9975) < 0.1


def jax_regression(x, y):
    slope = numpyro.sample("slope", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


def test_a_jax_only_model_keeps_the_fast_path_new_data_same_shapes_no_recompile():
    x = jnp.linspace(-1, 1, 30)
    vt.fit(jax_regression, x, 2 * x, num_steps=100, progress=False)
    compiled = engine.num_compilations()
    fit = vt.fit(jax_regression, x, -x, num_steps=100, progress=False)
    assert engine.num_compilations() == compiled
    assert fit.sample(500, seed=0)["slope"].mean() < -0.5  # fitted to the new data, not the old


def test_a_model_argument_named_like_a_fit_option_is_passed_by_model_kwargs():
    def model(y, init):
        mu = numpyro.sample("mu", dist.Normal(init, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(TypeError, match=r"init.*model_kwargs=\{'init'"):
        vt.fit(model, jnp.zeros(3), init=2.0, progress=False)
    fit = vt.fit(model, jnp.zeros(3), model_kwargs={"init": 8.0}, num_steps=300, progress=False)
    # posterior mean of mu: prior N(8, 1), three observations at 0: 8 / 4 = 2 (sd 0.5)
    assert abs(fit.sample(2000, seed=0)["mu"].mean() - 2.0) < 0.05


def test_a_model_that_fails_on_its_arguments_says_so():
    def model(data):
        numpyro.sample("mu", dist.Normal(data["missing"], 1.0))

    with pytest.raises(KeyError, match="missing"):
        vt.fit(model, {"y": 1.0}, progress=False)


def param_model(y):
    sigma = numpyro.param("sigma", 1.0, constraint=constraints.positive)
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("N", len(y)):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


PARAM_Y = np.random.default_rng(0).normal(1.0, 3.0, 1000)


@pytest.mark.parametrize("objective", ["reverse_kl", "forward_kl"])
def test_numpyro_param_sites_are_fitted_as_point_estimates(objective):
    """Type-II maximum likelihood, as NumPyro's SVI: with a flat-ish prior on mu the maximising
    sigma is the data's sd (2.930 here) and mu's posterior sd is sigma / sqrt(n) = 0.0927;
    kept frozen at sigma = 1, mu's sd would be 0.0316. Tolerances: 2% of sigma (the prior, Adam's
    last steps, SNIS noise in forward KL), 6% of the sd (2,000 draws: 1.6% Monte Carlo error)."""
    y = PARAM_Y
    fit = vt.fit(param_model, y, objective=objective, progress=False)
    assert fit.point_estimates["sigma"] == pytest.approx(y.std(), rel=0.02)
    assert fit.sample(2000, seed=1)["mu"].std() == pytest.approx(y.std() / np.sqrt(len(y)), rel=0.06)


def test_param_sites_are_refused_by_an_objective_that_never_evaluates_the_model():
    draws = {"mu": np.random.default_rng(1).normal(1.0, 0.1, 100)}
    with pytest.raises(ValueError, match=r"numpyro.param site\(s\) \['sigma'\]"):
        vt.fit(param_model, PARAM_Y, objective=vt.ForwardKLFromDraws(draws), progress=False)


def test_a_subsampling_plate_fits_and_an_objective_that_needs_the_full_joint_says_what_works():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("rows", 100, subsample_size=10) as index:
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[index])

    assert vt.Target.from_model(model, jnp.zeros(100)).subsamples  # fits (tests/test_subsample.py)
    with pytest.raises(ValueError, match=r"'forward_kl' needs the full-data.*'rows' \(10 of 100.*reverse_kl"):
        vt.fit(model, jnp.zeros(100), objective="forward_kl", progress=False)


def test_log_q_is_minus_infinity_outside_the_support_and_bad_shapes_are_named():
    def model():
        numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))

    # init="median": the claims are about log q at given draws, whatever q is; the Laplace start
    # (its path and Hessian programs compiled for this model) was most of the test's time.
    fit = vt.fit(model, num_steps=50, init="median", progress=False)
    draws = {"scale": np.array([0.5, -1.0, 0.5]), "p": np.array([[0.2, 0.3, 0.5]] * 2 + [[0.5, 0.6, 0.2]])}
    log_q = fit.log_prob(draws)
    assert np.isfinite(log_q[0]) and log_q[1] == -np.inf and log_q[2] == -np.inf
    with pytest.raises(ValueError, match=r"'p' have shape \(3,\): expected \(S, 3\)"):
        fit.log_prob({"scale": np.array([0.5]), "p": np.array([0.2, 0.3, 0.5])})
    with pytest.raises(ValueError, match=r"lack site\(s\) \['p'\]"):
        fit.log_prob({"scale": np.array([0.5])})


def test_an_improper_posterior_is_flagged_naming_the_site_and_a_proper_wide_one_is_not():
    def improper(y):
        numpyro.sample("free", dist.ImproperUniform(constraints.real, (), ()))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.warns(RuntimeWarning, match=r"may be improper.*'free'"):
        vt.fit(improper, jnp.zeros(5), num_steps=500, progress=False)

    def improper_positive(y):  # flat on (0, inf): log-density e^u in the unconstrained space
        numpyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.warns(RuntimeWarning, match=r"may be improper.*'scale'"):
        vt.fit(improper_positive, jnp.zeros(5), num_steps=500, progress=False)

    def wide(y):  # proper, with an unconstrained sd of 1000 (a coefficient in dollars)
        numpyro.sample("coef", dist.Normal(0.0, 1000.0))
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = vt.fit(wide, jnp.zeros(5), num_steps=500, progress=False)
    assert fit.sample(2000, seed=0)["coef"].std() == pytest.approx(1000.0, rel=0.1)  # 3 MC sds


def test_a_large_model_warns_of_its_cost_and_announces_its_init(capsys):
    def large():
        numpyro.sample("x", dist.Normal(jnp.zeros(1000), 1.0))

    with pytest.warns(
        RuntimeWarning, match=r"1000 latent dimensions: q \(fullrank\) has 1,001,000 parameters"
    ):
        vt.fit(large, init="median", num_steps=1, chunk_size=1, progress=False)
    with pytest.warns(
        RuntimeWarning, match=r"Laplace init computes up to 9 Hessians of 1000 x 1000"
    ) as caught:
        small = vt.fit(large, family="meanfield", num_steps=1, chunk_size=1, progress=True)
    assert caught[0].filename == __file__  # the warning points at the user's call
    assert "initialising (Laplace" in capsys.readouterr().err and small.num_steps == 1


def test_the_usual_numpyro_constructs_fit_and_their_draws_respect_the_constraints():
    from numpyro.contrib.control_flow import scan

    def model(y, mask):
        with numpyro.plate("columns", 2, dim=-1), numpyro.plate("rows", 3, dim=-2):
            grid = numpyro.sample("grid", dist.Normal(0.0, 1.0))
        numpyro.deterministic("grid_sum", grid.sum())
        numpyro.factor("penalty", -0.5 * jnp.sum(grid**2))
        rate = numpyro.sample("rate", dist.TruncatedNormal(1.0, 1.0, low=0.0, high=3.0))
        probs = numpyro.sample("probs", dist.Dirichlet(jnp.ones(3)))
        chol = numpyro.sample("chol", dist.LKJCholesky(3, 2.0))
        cuts = numpyro.sample("cuts", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
        numpyro.sample("cut_prior", dist.Normal(0.0, 3.0).expand([2]).to_event(1), obs=cuts)

        def step(level, obs):
            level = numpyro.sample("level", dist.Normal(0.9 * level, 1.0))
            numpyro.sample("obs", dist.Normal(level, 1.0), obs=obs)
            return level, None

        scan(step, 0.0, y)
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample("masked", dist.Normal(rate + probs[0] + chol[1, 0], 1.0), obs=y)

    y = jnp.asarray(np.random.default_rng(2).normal(size=5))
    fit = vt.fit(model, y, jnp.array([True, True, False, True, True]), num_steps=200, progress=False)
    draws = fit.sample(200, seed=0)
    assert draws["grid"].shape == (200, 3, 2) and draws["level"].shape == (200, 5)
    np.testing.assert_allclose(draws["grid_sum"], draws["grid"].sum((1, 2)), rtol=1e-6, atol=1e-6)
    assert np.all((draws["rate"] > 0) & (draws["rate"] < 3))
    np.testing.assert_allclose(draws["probs"].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(draws["chol"], axis=-1), 1.0, atol=1e-6)  # unit rows
    assert np.all(np.diff(draws["cuts"], axis=-1) > 0)


def test_a_discrete_latent_is_refused_naming_it():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        vt.fit(model, progress=False)
