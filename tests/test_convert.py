"""Conversion of fits, MCMC runs and trees to the vitools DataTree layout."""

from __future__ import annotations

import dataclasses
import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
import xarray as xr
from numpyro.handlers import reparam

import vitools as vt
from vitools import validate
from vitools.comparison import compare
from vitools.convert import fit_to_datatree, model_name, optimization_dataset, to_datatree
from vitools.draws import as_container, draws_dict
from vitools.models import Reference
from vitools.result import Fit
from vitools.targets import Target
from vitools.trees import as_single_chain, flatten_draws, site_shapes


def plated_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("group", 3):
        numpyro.sample("theta", dist.Normal(mu, 1.0))


def gaussian_fit(loc: float = 0.0, scale: float = 1.0, num_steps: int = 7) -> Fit:
    """A ``Fit`` of independent Normal(loc, scale) on (mu, theta) of ``plated_model``, with a
    made-up record (7 steps, 70 gradient evaluations, 0.5 s)."""
    fit = Fit.from_gaussian(
        Target.from_model(plated_model),
        jnp.full(4, loc),
        scale * jnp.eye(4),
        family=vt.MeanField(),
        source="reverse_kl",
        num_steps=num_steps,
        num_grad_evals=70,
        elapsed=0.5,
        seed=3,
    )
    losses = np.linspace(2.0, 1.0, num_steps)
    return dataclasses.replace(fit, losses=losses, trace={"loss": losses})


def returning(make) -> Fit:
    """:func:`gaussian_fit` whose ``sample_with_log_densities(num_draws)`` returns ``make(num_draws)``
    (draws and log densities of wrong shapes, to test the checks)."""

    class Stub(Fit):
        def sample_with_log_densities(self, num_draws, seed=0, *, key=None):
            return make(num_draws)

    fit = gaussian_fit()
    return Stub(**{f.name: getattr(fit, f.name) for f in dataclasses.fields(fit) if f.init})


@pytest.fixture(scope="module")
def real_fit():
    # forward KL traces ess and log_evidence too; init="median" skips the (slower) Laplace search
    return vt.fit(
        plated_model, objective="forward_kl", family="meanfield", num_steps=100, init="median", progress=False
    )


@pytest.fixture(scope="module")
def tree(real_fit):
    return vt.to_datatree(real_fit, num_draws=50, seed=1)


def test_groups_dims_and_site_names_match_the_model(tree, real_fit):
    assert set(tree.children) == {"posterior", "sample_stats", "optimization"}
    post = tree["posterior"]
    assert set(post.data_vars) == set(real_fit.target.site_names) == {"mu", "theta"}
    assert post["mu"].dims == ("chain", "draw")
    assert post["theta"].dims == ("chain", "draw", "group")  # the plate names the axis
    assert dict(post.sizes) == {"chain": 1, "draw": 50, "group": 3}
    stats = tree["sample_stats"]
    assert set(stats.data_vars) == {"log_p", "log_q", "log_weight"}
    assert stats["log_p"].dims == ("chain", "draw")
    np.testing.assert_array_equal(stats["log_weight"], stats["log_p"] - stats["log_q"])
    optimization = tree["optimization"]
    assert set(optimization.data_vars) == {"loss", "ess", "log_evidence"}
    assert optimization["loss"].dims == ("step",) and optimization.sizes["step"] == 100
    np.testing.assert_array_equal(optimization["loss"], real_fit.losses)


def test_root_attrs_are_netcdf_scalars(tree, real_fit):
    attrs = tree.attrs
    assert attrs["vitools_objective"] == "forward_kl" and attrs["vitools_family"] == "meanfield"
    assert (attrs["num_steps"], attrs["status"]) == (100, "completed")
    assert attrs["num_grad_evals"] == real_fit.num_grad_evals and attrs["elapsed_s"] == real_fit.elapsed
    assert all(isinstance(v, str | int | float) for v in attrs.values())


def test_fit_record_goes_to_attrs():
    fit = gaussian_fit()
    tree = fit_to_datatree(fit, num_draws=30)
    attrs = tree.attrs
    assert (attrs["num_steps"], attrs["num_grad_evals"], attrs["elapsed_s"]) == (7, 70, 0.5)
    assert (attrs["vitools_objective"], attrs["vitools_family"], attrs["fit_seed"]) == (
        "reverse_kl",
        "meanfield",
        3,
    )
    assert attrs["vitools_model"] == f"{plated_model.__module__}.plated_model"
    assert tree["optimization"].sizes["step"] == 7
    assert "num_draws_per_step" not in tree["optimization"].attrs  # fitted elsewhere: no draws per step


def test_draws_per_step_come_from_the_objective(tree, real_fit):
    expected = real_fit.objective.num_density_evals(real_fit.target.dim)
    assert tree["optimization"].attrs["num_draws_per_step"] == expected > 0
    # the same group, without drawing from the fit (the trace plot reads it so)
    xr.testing.assert_identical(optimization_dataset(real_fit), tree["optimization"].to_dataset())


def test_netcdf_round_trip_is_lossless(tree, tmp_path):
    path = tmp_path / "fit.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    with xr.open_datatree(path, engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load(), tree)
        assert back.attrs == tree.attrs


def test_log_p_is_the_models_log_joint():
    tree = fit_to_datatree(gaussian_fit(), num_draws=30)
    mu = tree["posterior"]["mu"].values[0]
    theta = tree["posterior"]["theta"].values[0]
    expected = scipy.stats.norm.logpdf(mu) + scipy.stats.norm.logpdf(theta, mu[:, None]).sum(1)
    np.testing.assert_allclose(tree["sample_stats"]["log_p"].values[0], expected, rtol=1e-5)


def test_plain_log_density_target_gets_default_dim_names():
    target = Target.from_log_density(lambda x: -0.5 * (x**2).sum(), dim=2)
    tree = fit_to_datatree(Fit.from_gaussian(target, jnp.zeros(2), jnp.eye(2)), num_draws=10)
    assert tree["posterior"]["x"].dims == ("chain", "draw", "x_dim_0")
    assert "vitools_model" not in tree.attrs  # no model function


def test_bad_num_draws_and_bad_log_density_shapes_raise():
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        fit_to_datatree(gaussian_fit(), num_draws=0)
    fit = returning(lambda num_draws: ({"mu": np.zeros(num_draws)}, np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="expected \\(10,\\) each"):
        fit_to_datatree(fit, num_draws=10)


def test_to_datatree_dispatch(tree, real_fit):
    assert to_datatree(tree) is tree
    assert to_datatree(real_fit, num_draws=20)["posterior"].sizes["draw"] == 20
    assert to_datatree(gaussian_fit(), num_draws=20)["posterior"].sizes["draw"] == 20
    assert dict(to_datatree({"mu": np.zeros(3)})["posterior"].sizes) == {"chain": 1, "draw": 3}
    with pytest.raises(TypeError, match="cannot convert list to a DataTree: expected a vitools Fit or"):
        to_datatree([np.zeros(3)])


def test_a_zoo_reference_is_a_container_of_its_draws():
    draws = {"mu": np.arange(4.0), "theta": np.zeros((4, 3))}
    reference = Reference(draws, {}, {}, "closed form")
    assert as_container(reference).keys() == draws_dict(reference).keys() == draws.keys()
    assert all(draws_dict(reference)[site] is draws[site] for site in draws)
    xr.testing.assert_equal(to_datatree(reference)["posterior"], to_datatree(draws)["posterior"])
    with pytest.raises(TypeError, match="reference draws must be a numpyro MCMC that has run, an ArviZ"):
        as_container(np.zeros(3), what="reference draws")


def test_to_datatree_of_mcmc_keeps_its_shape_and_names_the_sampler():
    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(plated_model),
        num_warmup=20,
        num_samples=15,
        num_chains=2,
        progress_bar=False,
        chain_method="sequential",
    )
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("num_steps",))
    tree = to_datatree(mcmc)
    assert dict(tree["posterior"].sizes) == {"chain": 2, "draw": 15, "group": 3}
    assert tree.attrs["vitools_kind"] == "mcmc" and tree.attrs["vitools_family"] == "NUTS"
    assert tree.attrs["num_grad_evals"] >= 30
    assert (
        tree.attrs["vitools_model"]
        == model_name(plated_model)
        == fit_to_datatree(gaussian_fit(), 30).attrs["vitools_model"]
    )


def test_a_model_under_an_effect_handler_is_the_same_model():
    assert model_name(reparam(plated_model, config={})) == model_name(plated_model)


def two_chain_tree():
    mu = np.arange(10.0).reshape(2, 5)
    return az.from_dict(
        {"posterior": {"mu": mu, "theta": np.stack([mu, -mu], -1)}, "observed_data": {"y": np.ones(4)}}
    )


def test_as_single_chain_stacks_in_order_and_leaves_other_groups():
    original = two_chain_tree()
    single = as_single_chain(original)
    assert dict(single["posterior"].sizes) == {"chain": 1, "draw": 10, "theta_dim_0": 2}
    np.testing.assert_array_equal(single["posterior"]["mu"].values[0], np.arange(10.0))
    np.testing.assert_array_equal(single["posterior"]["theta"].values[0, :, 1], -np.arange(10.0))
    xr.testing.assert_identical(single["observed_data"], original["observed_data"])


def test_as_single_chain_thins_evenly_to_equal_sizes():
    thinned = as_single_chain(two_chain_tree(), num_draws=4)
    np.testing.assert_array_equal(thinned["posterior"]["mu"].values[0], [0.0, 3.0, 6.0, 9.0])
    np.testing.assert_array_equal(thinned["posterior"]["draw"], np.arange(4))
    with pytest.raises(ValueError, match="has 10 draws; cannot keep num_draws=11"):
        as_single_chain(two_chain_tree(), num_draws=11)


def test_flatten_draws_labels_and_errors(tree):
    labels, values = flatten_draws(tree)
    assert labels == ["mu", "theta[0]", "theta[1]", "theta[2]"]
    assert values.shape == (50, 4)
    np.testing.assert_array_equal(values[:, 2], tree["posterior"]["theta"].values[0, :, 1])
    with pytest.raises(ValueError, match="no 'prior' group"):
        flatten_draws(tree, group="prior")
    with pytest.raises(ValueError, match="lacks the sample dims"):
        flatten_draws(tree, group="optimization")
    assert math.isclose(float(values[:, 0].mean()), float(tree["posterior"]["mu"].mean()))


def sample_dim_sites():
    numpyro.sample("chain", dist.Normal(0.0, 1.0))
    numpyro.sample("draw", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


@pytest.fixture(scope="module")
def sample_dim_runs():
    fit = vt.fit(sample_dim_sites, family="meanfield", num_steps=50, init="median", progress=False)
    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(sample_dim_sites), num_warmup=20, num_samples=30, progress_bar=False
    )
    mcmc.run(jax.random.PRNGKey(0))
    return fit, mcmc


def test_sites_named_chain_and_draw_survive_as_chain_and_draw_with_an_underscore(sample_dim_runs, tmp_path):
    fit, mcmc = sample_dim_runs
    draws = fit.sample_with_log_densities(50, seed=1)[0]  # 50 draws throughout: compiled once
    samples = mcmc.get_samples(group_by_chain=True)
    for tree, expected in ((to_datatree(fit, num_draws=50, seed=1), draws), (to_datatree(mcmc), samples)):
        post = tree["posterior"]
        assert set(post.data_vars) == {"chain_", "draw_"}  # they used to vanish from the tree
        assert (
            post["chain_"].attrs["vitools_site"] == "chain" and post["draw_"].attrs["vitools_site"] == "draw"
        )
        np.testing.assert_array_equal(
            post["draw_"].values.reshape(-1, 2), np.reshape(expected["draw"], (-1, 2))
        )
        assert flatten_draws(tree)[0] == ["chain", "draw[0]", "draw[1]"]
        assert site_shapes(tree).latent == site_shapes(tree).variables == {"chain": (), "draw": (2,)}
        path = tmp_path / "tree.nc"
        as_single_chain(tree).to_netcdf(path, engine="h5netcdf")
        with xr.open_datatree(path, engine="h5netcdf") as back:
            assert flatten_draws(back)[0] == ["chain", "draw[0]", "draw[1]"]
    table = compare({"vi": fit, "NUTS": mcmc}, reference="NUTS", num_draws=50)
    assert np.isfinite(table.loc["vi", "w1"]) and table.loc["NUTS", "w1"] == 0.0


def test_trees_list_their_latent_sites_so_compare_tells_models_apart(sample_dim_runs, real_fit):
    fit, mcmc = sample_dim_runs
    assert site_shapes(vt.to_datatree(real_fit, num_draws=50)).latent == {"mu": (), "theta": (3,)}
    with pytest.raises(ValueError, match="mu: shape \\(\\) in fit 'plated', absent in fit 'NUTS'"):
        compare({"plated": real_fit, "NUTS": mcmc}, num_draws=50)
    with pytest.raises(ValueError, match="chain: absent in fit 'plated', shape \\(\\) in fit 'vi'"):
        compare({"plated": real_fit, "vi": fit}, num_draws=50)


def test_an_mcmc_that_has_not_run_is_refused():
    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(plated_model), num_warmup=10, num_samples=10, progress_bar=False
    )
    with pytest.raises(
        ValueError, match="the MCMC has no draws: call mcmc.run"
    ):  # was AttributeError '_args'
        to_datatree(mcmc)


def test_draws_without_a_leading_axis_or_of_the_wrong_shape_are_refused_naming_the_site():
    shapes = {"mu": (), "theta": (3,)}
    assert (
        validate.draws({"mu": np.zeros(5), "theta": np.zeros((5, 3)), "extra": np.zeros((5, 7))}, shapes) == 5
    )
    with pytest.raises(ValueError, match="draws 'mu' have shape \\(\\): expected \\(S,\\)"):
        validate.draws({"mu": 0.5, "theta": np.zeros((5, 3))}, shapes)
    with pytest.raises(ValueError, match="draws 'theta' have shape \\(3,\\): expected \\(S, 3\\)"):
        validate.draws({"mu": np.zeros(5), "theta": np.zeros(3)}, shapes)
    with pytest.raises(ValueError, match="lack site\\(s\\) \\['theta'\\]"):
        validate.draws({"mu": np.zeros(5)}, shapes)
    with pytest.raises(ValueError, match="one common leading draw axis; got sizes \\{'mu': 5, 'theta': 4\\}"):
        validate.draws({"mu": np.zeros(5), "theta": np.zeros((4, 3))}, shapes)
    with pytest.raises(ValueError, match="hold no draws"):
        validate.draws({"mu": np.zeros(0)})
    with pytest.raises(ValueError, match="draws 'mu' have shape \\(\\): expected \\(S, ...\\)"):
        to_datatree({"mu": 1.0})
    fit = returning(  # a fit whose draws lost theta's last component
        lambda num_draws: (
            {"mu": np.zeros(num_draws), "theta": np.zeros((num_draws, 2))},
            np.zeros(num_draws),
            np.zeros(num_draws),
        )
    )
    with pytest.raises(
        ValueError, match="the fit's draws 'theta' have shape \\(10, 2\\): expected \\(S, 3\\)"
    ):
        fit_to_datatree(fit, num_draws=10)
