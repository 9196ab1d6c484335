"""Plots: each returns a Figure with the expected artists (Agg backend, figures closed after each test)."""

from __future__ import annotations

import math

import arviz as az
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.stats
import xarray as xr
from matplotlib.collections import PolyCollection

import vitools as vt
from vitools.comparison import compare
from vitools.diagnostics import diagnose
from vitools.importance import khat_threshold
from vitools.models import get_model
from vitools.plots import plot_khat, plot_marginals, plot_pair, plot_traces

NUM_STEPS = 50


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def normal_tree(loc, scale, num_draws=1000, seed=0, corr=0.0, ess=True):
    """A vitools-layout tree: q = N(loc, scale²) on (mu, theta[2]) with corr(theta[0], theta[1]) = corr,
    target p = N(0, 1)^3, and an optimisation trace of NUM_STEPS steps."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(num_draws, 3))
    z[:, 2] = corr * z[:, 1] + math.sqrt(1 - corr**2) * z[:, 2]
    z = loc + scale * z
    log_p = scipy.stats.norm.logpdf(z).sum(1)
    log_q = scipy.stats.norm(loc, scale).logpdf(z).sum(1)  # corr only matters for the pair choice
    stats = {"log_p": log_p, "log_q": log_q, "log_weight": log_p - log_q}
    tree = az.from_dict(
        {
            "posterior": {"mu": z[None, :, 0], "theta": z[None, :, 1:]},
            "sample_stats": {k: v[None] for k, v in stats.items()},
        }
    )
    trace = {"loss": ("step", 5.0 * np.exp(-np.arange(NUM_STEPS) / 10) + rng.normal(0, 0.1, NUM_STEPS))}
    if ess:
        trace["ess"] = ("step", np.linspace(10, 60, NUM_STEPS))
    tree["optimization"] = xr.DataTree(xr.Dataset(trace, coords={"step": np.arange(NUM_STEPS)}))
    tree["optimization"].attrs["num_draws_per_step"] = 64
    return tree


@pytest.fixture(scope="module")
def trees():
    return {
        "good": normal_tree(0.0, 1.0, seed=1, corr=0.9),
        "narrow": normal_tree(0.0, 0.5, seed=2, corr=0.9, ess=False),
        "shifted": normal_tree(1.0, 1.0, seed=3, corr=0.9, num_draws=700),
    }


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(99)
    z = rng.normal(size=(4000, 3))
    z[:, 2] = 0.9 * z[:, 1] + math.sqrt(1 - 0.81) * z[:, 2]
    return {"mu": z[:, 0], "theta": z[:, 1:]}


@pytest.fixture(scope="module")
def bimodal_fits():
    zoo = get_model("bimodal")
    return {
        objective: vt.fit(zoo.model, objective=objective, num_steps=NUM_STEPS, progress=False)
        for objective in ("reverse_kl", "forward_kl")
    }


def legend_labels(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_marginals_one_line_per_fit_and_a_shaded_reference_per_panel(trees, reference):
    fig = plot_marginals(trees, reference=reference)
    assert isinstance(fig, plt.Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["mu", "theta[0]", "theta[1]"]
    for ax in panels:
        assert len(ax.lines) == 3  # one density per fit
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1  # the reference
        assert [line.get_color() for line in ax.lines] == ["C0", "C1", "C2"]
    assert legend_labels(fig.legends[0]) == ["good", "narrow", "shifted", "reference"]


def test_marginals_var_names_max_params_and_reference_key(trees):
    fig = plot_marginals(trees, reference="good", var_names=["theta"], max_params=1)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["theta[0]"]
    assert len(panels[0].lines) == 2  # the reference key is shaded, not drawn as a line
    assert legend_labels(fig.legends[0]) == ["narrow", "shifted", "reference"]
    assert "first 1 of 2" in fig.get_supxlabel()
    with pytest.raises(ValueError, match="match no parameter"):
        plot_marginals(trees, var_names=["nope"])
    with pytest.raises(KeyError, match="not one of the fits"):
        plot_marginals(trees, reference="nope")


def test_marginals_of_real_fits_against_a_zoo_reference(bimodal_fits):
    zoo = get_model("bimodal")
    fig = plot_marginals(bimodal_fits, reference=zoo.reference(), num_draws=500)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["z[0]", "z[1]"]
    assert all(len(ax.lines) == 2 for ax in panels)
    lo, hi = panels[0].get_xlim()
    assert lo < -4 and hi > 4  # both reference modes are in view


def test_pair_picks_the_most_correlated_pair_and_draws_contours(trees, reference):
    fig = plot_pair(trees, reference=reference)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("theta[0]", "theta[1]")
    contour_sets = [c for c in ax.collections if hasattr(c, "levels")]
    assert len(contour_sets) == 3  # one per fit
    assert all(len(c.levels) == 2 for c in contour_sets)  # 50% and 90% HDI
    assert legend_labels(ax.get_legend()) == ["reference", "good", "narrow", "shifted"]


def test_pair_explicit_params_and_errors(trees):
    fig = plot_pair(trees, params=("mu", "theta[1]"))
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("mu", "theta[1]")
    assert legend_labels(ax.get_legend()) == ["good", "narrow", "shifted"]
    with pytest.raises(ValueError, match="unknown"):
        plot_pair(trees, params=("mu", "sigma"))
    one = {"a": az.from_dict({"posterior": {"x": np.random.default_rng(0).normal(size=(1, 100))}})}
    with pytest.raises(ValueError, match="two scalar parameters"):
        plot_pair(one)


def test_khat_bars_from_a_table_with_threshold_line(trees, reference):
    table = compare(trees, reference=reference, num_draws=1000)
    table.loc["mcmc"] = np.nan  # a row without q: skipped
    fig = plot_khat(table, num_draws=1000)
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["good", "narrow", "shifted"]
    heights = [p.get_height() for p in ax.patches]
    assert heights[1] == pytest.approx(table.loc["narrow", "khat"])
    assert heights[0] == pytest.approx(-0.3)  # k̂ = -inf (q equal to p): drawn at the floor
    ys = [line.get_ydata()[0] for line in ax.lines]
    assert khat_threshold(1000) in [pytest.approx(y) for y in ys] and 0.5 in ys
    labels = legend_labels(fig.legends[0])
    assert labels[0] == f"threshold {khat_threshold(1000):.2f} (S=1000)"


def test_khat_from_diagnostics_and_bad_input(trees):
    diags = {name: diagnose(tree, warn=False) for name, tree in trees.items()}
    fig = plot_khat(diags)
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    threshold = khat_threshold(700)  # the smallest S among the fits sets the (stricter) threshold
    assert any(line.get_ydata()[0] == pytest.approx(threshold) for line in ax.lines)
    assert len(plot_khat(diags["narrow"]).axes[0].patches) == 1
    with pytest.raises(TypeError, match="compare"):
        plot_khat([1, 2])


def test_traces_two_panels_from_trees(trees):
    fig = plot_traces(trees)
    ax_loss, ax_ess = fig.axes
    assert len(ax_loss.lines) == 2 * 3 + 1  # raw and smoothed per fit, and the zero line
    raw = ax_loss.lines[0].get_ydata()
    assert np.median(raw[-NUM_STEPS // 10 :]) == pytest.approx(0.0)  # loss minus its final value
    assert legend_labels(ax_loss.get_legend()) == ["good", "narrow", "shifted"]
    assert len(ax_ess.lines) == 2 * 2  # "narrow" traced no ESS ...
    assert any("narrow" in t.get_text() for t in ax_ess.texts)  # ... and the panel says so
    assert max(ax_ess.lines[1].get_ydata()) <= 1.0  # ESS as a fraction of the 64 draws per step


def test_traces_of_real_fits(bimodal_fits):
    fig = plot_traces({**bimodal_fits, "mcmc-like": az.from_dict({"posterior": {"x": np.zeros((1, 10))}})})
    ax_loss, ax_ess = fig.axes
    assert legend_labels(ax_loss.get_legend()) == ["reverse_kl", "forward_kl"]
    for line in ax_loss.lines[:-1]:  # the last one is the zero line
        assert len(line.get_xdata()) == NUM_STEPS
    assert ax_ess.get_ylim()[1] == pytest.approx(1.05)


def test_traces_read_the_same_group_from_a_fit_and_from_its_tree(bimodal_fits):
    trees = {name: vt.to_datatree(fit, num_draws=100) for name, fit in bimodal_fits.items()}
    assert all(tree["optimization"].attrs["num_draws_per_step"] > 0 for tree in trees.values())
    from_fits, from_trees = plot_traces(bimodal_fits), plot_traces(trees)
    for ax_fit, ax_tree in zip(from_fits.axes, from_trees.axes, strict=True):
        assert len(ax_fit.lines) == len(ax_tree.lines)
        for a, b in zip(ax_fit.lines, ax_tree.lines, strict=True):
            np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())
