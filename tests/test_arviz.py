"""ArviZ next steps on fits and MCMC runs: arviz-plots overlays, summaries that do not mislead."""

from __future__ import annotations

import arviz as az
import arviz_plots as azp
import jax
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vitools as vt
from vitools.importance import psis_khat


def regression(x, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 1.0 + 0.5 * x + rng.normal(scale=0.8, size=40)
    fits = {
        family: vt.fit(regression, x, y, family=family, num_steps=400, init="median", progress=False)
        for family in ("meanfield", "fullrank")
    }
    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(regression),
        num_warmup=200,
        num_samples=300,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), x, y)
    return {**fits, "NUTS": mcmc}


def test_the_forest_of_two_fits_and_nuts_has_three_entries(runs):
    # unaligned, arviz-plots pads NUTS's 2 x 300 draws to the fits' 1 x 2000 with NaN and draws
    # nothing for it; aligned trees are one chain of 600 draws each
    trees = vt.to_datatrees(runs, num_draws=2000, aligned=True)
    assert {tuple(t["posterior"]["alpha"].shape) for t in trees.values()} == {(1, 600)}
    plot = azp.plot_forest(trees, backend="matplotlib")
    twigs = plot.viz["twig"].to_dataset()["alpha"]
    models = twigs.coords["model"].values
    drawn = [name for name in models if twigs.sel(model=name).values.ravel()[0] is not None]
    assert drawn == ["meanfield", "fullrank", "NUTS"]
    plt.close("all")


def test_aligned_trees_keep_every_draw_of_the_smallest(runs):
    tree = vt.to_datatrees({"NUTS": runs["NUTS"]}, aligned=True)["NUTS"]  # one chain, all draws
    draws = np.asarray(runs["NUTS"].get_samples()["beta"])
    np.testing.assert_array_equal(tree["posterior"]["beta"].values.ravel(), draws)


def test_summary_of_a_fit_has_psis_columns_and_no_mcmc_ones(runs):
    fit = runs["meanfield"]
    table = vt.summary(fit, num_draws=2000)
    assert "r_hat" not in table and "ess_bulk" not in table
    assert "independent draws from the approximation q" in table.attrs["note"]
    tree = vt.to_datatree(fit, num_draws=2000)
    assert tree["posterior"].attrs["vitools_note"] == table.attrs["note"]
    # psis_mean is the PSIS-weighted mean of the same draws
    smoothed, khat = psis_khat(tree["sample_stats"]["log_weight"].values.ravel())
    beta = tree["posterior"]["beta"].values.ravel()
    assert table.loc["beta", "psis_mean"] == pytest.approx(np.exp(smoothed) @ beta, rel=1e-10)
    assert table.loc["beta", "mean"] == pytest.approx(beta.mean(), rel=1e-10)
    assert table.loc["beta", "khat"] == pytest.approx(khat)
    assert list(vt.summary(fit, var_names=["sigma"], num_draws=2000).index) == ["sigma"]
    with pytest.raises(KeyError, match=r"var_names \['tau'\] not in the draws"):
        vt.summary(fit, var_names=["tau"], num_draws=2000)


def test_summary_of_mcmc_is_arviz_summary(runs):
    table = vt.summary(runs["NUTS"])
    expected = az.summary(vt.to_datatree(runs["NUTS"]))
    assert list(table.columns) == list(expected.columns) and "r_hat" in table
    np.testing.assert_array_equal(table["mean"].astype(float), expected["mean"].astype(float))
