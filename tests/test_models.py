"""The model zoo: registry, model contracts, stored and closed-form references.

Closed-form draws come from a fixed seed, so every statistical check below is deterministic;
tolerances are still set from the Monte Carlo error (5 standard errors: a correct sampler fails
one component with probability ~6e-7), so a reseed would not break them.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import stats

from vitools.models import MODELS, ClosedForm, NutsSettings, Reference, ZooModel, get_model, list_models
from vitools.models.base import REFERENCE_DIR
from vitools.models.toy import GAUSSIAN_MEAN, gaussian_100_covariance

EXPECTED = [
    "bimodal",
    "banana",
    "funnel",
    "gaussian_100",
    "logistic_regression",
    "bad_scaling",
    "collinear",
    "collinear_large",
    "flat_prior",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "radon",
    "stochastic_volatility",
    "gp_poisson",
]
CLOSED_FORM = [name for name in EXPECTED if MODELS[name].closed_form is not None]
NUTS = [name for name in EXPECTED if MODELS[name].nuts is not None]
Z_TOL = 5.0  # standard errors


def _joint_log_density(zoo: ZooModel):
    """Batched log p(data, sites), in the constrained space (no Jacobian)."""

    def one(sites):
        return log_density(zoo.model, zoo.args, dict(zoo.kwargs), sites)[0]

    return jax.jit(jax.vmap(one))


def test_registry_lists_every_model_once():
    assert list_models() == EXPECTED
    assert all(MODELS[name].name == name for name in EXPECTED)
    assert all(get_model(name) is MODELS[name] for name in EXPECTED)
    assert all(MODELS[name].description and "\n" not in MODELS[name].description for name in EXPECTED)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*bimodal.*gp_poisson"):
        get_model("nope")


def test_zoo_model_needs_exactly_one_reference_kind():
    closed = ClosedForm(sample=lambda rng, n: {}, mean={}, sd={})
    with pytest.raises(ValueError, match="exactly one of closed_form and nuts"):
        ZooModel("both", "d", lambda: None, closed_form=closed, nuts=NutsSettings())
    with pytest.raises(ValueError, match="exactly one of closed_form and nuts"):
        ZooModel("neither", "d", lambda: None)


@pytest.mark.parametrize("name", EXPECTED)
def test_model_traces_with_latent_sites(name):
    zoo = get_model(name)
    if "improper-prior" in zoo.tags:
        # ImproperUniform cannot be sampled; ZooModel.trace substitutes NumPyro's init values.
        trace = zoo.trace(jax.random.key(0))
    else:
        trace = handlers.trace(handlers.seed(zoo.model, jax.random.key(0))).get_trace(*zoo.args, **zoo.kwargs)
    latent = [n for n, site in trace.items() if site["type"] == "sample" and not site["is_observed"]]
    assert latent and latent == list(zoo.latent_shapes())
    observed = [n for n, site in trace.items() if site["type"] == "sample" and site["is_observed"]]
    assert observed or zoo.closed_form is not None  # toy targets have no data
    assert zoo.model.__doc__ and "Hard" in zoo.model.__doc__


@pytest.mark.parametrize("name", EXPECTED)
def test_reference_matches_latent_sites(name):
    zoo = get_model(name)
    ref = zoo.reference()
    assert isinstance(ref, Reference)
    shapes = zoo.latent_shapes()
    assert list(ref.draws) == list(shapes) == list(ref.mean) == list(ref.sd)
    for site, shape in shapes.items():
        assert ref.draws[site].shape == (ref.num_draws, *shape)
        assert np.shape(ref.mean[site]) == shape and np.shape(ref.sd[site]) == shape
        assert np.all(np.isfinite(ref.draws[site])) and np.all(np.asarray(ref.sd[site]) > 0)
        assert not ref.draws[site].flags.writeable
    # Every draw lies in the support: the joint log density is finite at the first 50.
    first = {site: jnp.asarray(value[:50], dtype=jnp.float64) for site, value in ref.draws.items()}
    assert np.all(np.isfinite(_joint_log_density(zoo)(first)))


@pytest.mark.parametrize("name", NUTS)
def test_nuts_reference_source_passes_checks(name):
    zoo = get_model(name)
    ref = zoo.reference()
    assert ref.num_draws == zoo.nuts.num_kept
    match = re.search(r"max R-hat ([\d.]+), min ESS bulk (\d+) / tail (\d+), (\d+) divergences", ref.source)
    assert ref.source.startswith("NUTS: 4 chains") and match, ref.source
    rhat, bulk, tail, divergences = float(match[1]), int(match[2]), int(match[3]), int(match[4])
    assert rhat < 1.01 and bulk > 400 and tail > 400 and divergences == 0


def test_centered_eight_schools_reference_is_the_noncentered_run():
    centered = get_model("eight_schools_centered").reference()
    noncentered = get_model("eight_schools_noncentered").reference()
    assert "eight_schools_noncentered" in centered.source
    draws = noncentered.draws
    theta = draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_t"]
    np.testing.assert_allclose(centered.draws["theta"], theta, rtol=1e-5, atol=1e-4)  # float32 storage


def test_stored_reference_rejects_other_data():
    zoo = get_model("radon")
    changed = dataclasses.replace(zoo, kwargs={**zoo.kwargs, "y": zoo.kwargs["y"] + 1.0})
    with pytest.raises(ValueError, match="built on other data"):
        changed.reference()
    with pytest.raises(FileNotFoundError, match="make_references.py"):
        dataclasses.replace(zoo, name="not_stored").reference()


def test_reference_files_are_small():
    total = sum(path.stat().st_size for path in REFERENCE_DIR.glob("*.npz"))
    assert total < 3 * 2**20


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_draws_match_moments(name):
    ref = get_model(name).reference()
    assert ref.source == "closed form" and ref.num_draws == 4000
    for site, draws in ref.draws.items():
        if name == "funnel" and site == "x":
            continue  # heavy-tailed (kurtosis ~ exp(9)): checked through x / exp(v / 2) below
        # Mean: SE = sd / sqrt(S). Sd: delta method on the sample variance,
        # SE(s) = sqrt((m4 - s^4) / S) / (2 s) with the sample fourth central moment m4, which
        # covers the non-Gaussian marginals (bimodal, banana y, log_sigma).
        num_draws = draws.shape[0]
        z_mean = (draws.mean(axis=0) - ref.mean[site]) / (ref.sd[site] / np.sqrt(num_draws))
        centred = draws - draws.mean(axis=0)
        sd, m4 = draws.std(axis=0), np.mean(centred**4, axis=0)
        z_sd = (sd - ref.sd[site]) / (np.sqrt((m4 - sd**4) / num_draws) / (2 * sd))
        assert np.all(np.abs(z_mean) < Z_TOL), (site, z_mean)
        assert np.all(np.abs(z_sd) < Z_TOL), (site, z_sd)


def test_funnel_draws_are_conditionally_gaussian():
    draws = get_model("funnel").reference().draws
    u = draws["x"] / np.exp(draws["v"] / 2)[:, None]  # N(0, 1) given v
    se_mean, se_sd = 1 / np.sqrt(u.shape[0]), 1 / np.sqrt(2 * u.shape[0])
    assert np.all(np.abs(u.mean(axis=0)) < Z_TOL * se_mean)
    assert np.all(np.abs(u.std(axis=0) - 1) < Z_TOL * se_sd)


def test_gaussian_100_density_normalizer_and_correlation():
    zoo = get_model("gaussian_100")
    cov = gaussian_100_covariance()
    x = zoo.reference().draws["x"][:5]
    log_p = _joint_log_density(zoo)({"x": jnp.asarray(x)})
    # Exact identity: unnormalized log density + log Z = the Gaussian log density.
    expected = stats.multivariate_normal(GAUSSIAN_MEAN, cov).logpdf(x)
    np.testing.assert_allclose(np.asarray(log_p) - zoo.log_normalizer, expected, rtol=1e-10)
    # Lag-1 correlations are 0.9; SE of a sample correlation ~ (1 - rho^2) / sqrt(S).
    draws = zoo.reference().draws["x"]
    lag1 = np.array([np.corrcoef(draws[:, i], draws[:, i + 1])[0, 1] for i in range(99)])
    assert np.all(np.abs(lag1 - 0.9) < Z_TOL * (1 - 0.9**2) / np.sqrt(draws.shape[0]))


# 2-D targets: a grid quadrature of exp(log joint), in coordinates u with sites = loc + scale * u
# (linear, so the Jacobian is constant), gives log Z, the means and the sds independently of the
# closed forms. The grids reach past where the mass is ~1e-9, and for smooth densities the
# rectangle rule error decays like exp(-2 pi^2 sd^2 / h^2) (h/sd < 0.5 here), far below 1e-6.
QUADRATURE = {
    "bimodal": lambda zoo: (np.zeros(2), 1.5 * np.eye(2)),
    "banana": lambda zoo: (np.array([0.0, 15.0]), np.diag([2.0, 6.0])),  # y up to 75: |x| < 6 sd
    "flat_prior": lambda zoo: (  # +-30 sd: mu is Student-t with 9 degrees of freedom
        np.array([zoo.closed_form.mean["mu"], zoo.closed_form.mean["log_sigma"]]),
        np.diag([3.0 * zoo.closed_form.sd["mu"], 3.0 * zoo.closed_form.sd["log_sigma"]]),
    ),
    "bad_scaling": lambda zoo: _bad_scaling_frame(zoo),
}


def _bad_scaling_frame(zoo):
    draws = zoo.closed_form.sample(np.random.default_rng(0), 4000)
    stacked = np.stack([draws["intercept"], draws["slope"]], axis=1)
    return stacked.mean(axis=0), np.linalg.cholesky(np.cov(stacked.T))  # whitens the -0.9997 ridge


def _split(zoo, values):
    names = list(zoo.latent_shapes())
    if len(names) == 1:
        return {names[0]: values}
    return {name: values[:, i] for i, name in enumerate(names)}


@pytest.mark.parametrize("name", list(QUADRATURE))
def test_two_dimensional_closed_forms_by_quadrature(name):
    zoo = get_model(name)
    loc, scale = QUADRATURE[name](zoo)
    grid = np.linspace(-10.0, 10.0, 401)
    u = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    values = loc + u @ scale.T
    log_p = np.asarray(_joint_log_density(zoo)(_split(zoo, jnp.asarray(values))))
    cell = (grid[1] - grid[0]) ** 2 * abs(np.linalg.det(scale))
    log_z = np.logaddexp.reduce(log_p) + np.log(cell)
    np.testing.assert_allclose(log_z, zoo.log_normalizer, atol=1e-6)
    weights = np.exp(log_p - np.logaddexp.reduce(log_p))
    mean = weights @ values
    sd = np.sqrt(weights @ (values - mean) ** 2)
    exact_mean = np.concatenate([np.ravel(m) for m in zoo.closed_form.mean.values()])
    exact_sd = np.concatenate([np.ravel(s) for s in zoo.closed_form.sd.values()])
    assert np.all(np.abs(mean - exact_mean) < 1e-6 * exact_sd), (mean, exact_mean)
    np.testing.assert_allclose(sd, exact_sd, rtol=1e-6)
