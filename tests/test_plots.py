"""Plots: each returns a Figure with the expected artists (Agg backend, figures closed after each test)."""

from __future__ import annotations

import math

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
import scipy.special
import scipy.stats
import xarray as xr
from matplotlib.collections import PolyCollection
from numpyro.distributions import constraints

import vitools as vt
from vitools.comparison import compare
from vitools.diagnostics import diagnose
from vitools.importance import khat_threshold
from vitools.models import get_model
from vitools.plots import plot_khat, plot_marginal_pages, plot_marginals, plot_pair, plot_traces

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
    # init="median": the plots' claims hold for any fit; the Laplace start (its path and Hessian
    # programs compiled for the zoo model) would cost more than the two 50-step loops.
    zoo = get_model("bimodal")
    return {
        objective: vt.fit(zoo.model, objective=objective, num_steps=NUM_STEPS, init="median", progress=False)
        for objective in ("reverse_kl", "forward_kl")
    }


def legend_labels(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def panels_of(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_marginals_one_line_per_fit_and_a_shaded_reference_per_panel(trees, reference):
    fig = plot_marginals(trees, reference=reference)
    assert isinstance(fig, plt.Figure)
    panels = panels_of(fig)
    assert [ax.get_xlabel() for ax in panels] == ["mu", "theta[0]", "theta[1]"]
    for ax in panels:
        assert len(ax.lines) == 3  # one density per fit
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1  # the reference
        assert [line.get_color() for line in ax.lines] == ["C0", "C1", "C2"]
        assert ax.get_ylabel() == "density" and len(ax.get_yticks()) > 1  # a labelled y axis
        assert ax.get_xscale() == "linear"  # real-valued
    assert legend_labels(fig.legends[0]) == ["good", "narrow", "shifted", "reference"]
    assert fig.get_supxlabel() == ""  # one page: no note


def test_marginals_var_names_max_params_page_and_reference_key(trees):
    fig = plot_marginals(trees, reference="good", var_names=["theta"], max_params=1)
    panels = panels_of(fig)
    assert [ax.get_xlabel() for ax in panels] == ["theta[0]"]
    assert len(panels[0].lines) == 2  # the reference key is shaded, not drawn as a line
    assert legend_labels(fig.legends[0]) == ["narrow", "shifted", "reference"]
    assert fig.get_supxlabel() == "parameters 1-1 of 2, page 1 of 2"  # pages counted from 1
    assert "page=" not in fig.get_supxlabel()  # the figure does not speak of the argument
    fig = plot_marginals(trees, var_names=["mu", "theta[1]"])  # a site and one element of another
    assert [ax.get_xlabel() for ax in panels_of(fig)] == ["mu", "theta[1]"]
    with pytest.raises(KeyError, match="not one of the fits"):
        plot_marginals(trees, reference="nope")


def test_an_unknown_var_name_raises_and_names_the_parameters(trees):
    for plot in (plot_marginals, plot_pair):
        with pytest.raises(
            ValueError,
            match=r"var_names \['nope'\] match no parameter; the fits have mu, theta\[0\]..theta\[1\]",
        ):
            plot(trees, var_names=["theta", "nope"])
    with pytest.raises(ValueError, match=r"params must be two of the fits' parameters \(mu, theta"):
        plot_pair(trees, params=("mu", "sigma"))


def test_pages_reach_every_parameter(trees):
    pages = plot_marginal_pages(trees, max_params=2)
    shown = [ax.get_xlabel() for fig in pages for ax in panels_of(fig)]
    assert shown == ["mu", "theta[0]", "theta[1]"] and len(pages) == 2
    notes = [fig.get_supxlabel() for fig in pages]
    assert notes == ["parameters 1-2 of 3, page 1 of 2", "parameters 3-3 of 3, page 2 of 2"]
    last = plot_marginals(trees, max_params=2, page=1)  # the argument counts from 0
    assert [ax.get_xlabel() for ax in panels_of(last)] == ["theta[1]"]
    assert last.get_supxlabel() == notes[1]
    with pytest.raises(ValueError, match="page 2 is out of range: 3 parameters make pages 0-1"):
        plot_marginals(trees, max_params=2, page=2)
    with pytest.raises(ValueError, match="max_params must be at least 1"):
        plot_marginals(trees, max_params=0)


def test_marginal_axes_show_the_tails_of_every_fit_and_the_reference(trees, reference):
    fig = plot_marginals(trees, reference=reference, var_names=["mu"])
    lo, hi = panels_of(fig)[0].get_xlim()
    ref = reference["mu"]
    assert lo < np.quantile(ref, 0.001) and hi > np.quantile(ref, 0.999)  # the 1-99% clip hid these
    for tree in trees.values():
        mu = tree.posterior["mu"].values.ravel()
        assert lo < np.quantile(mu, 0.001) and hi > np.quantile(mu, 0.999)


def test_marginals_of_real_fits_against_a_zoo_reference(bimodal_fits):
    zoo = get_model("bimodal")
    fig = plot_marginals(bimodal_fits, reference=zoo.reference(), num_draws=500)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == ["z[0]", "z[1]"]
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


def test_pair_explicit_params_var_names_and_errors(trees):
    fig = plot_pair(trees, params=("mu", "theta[1]"))
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("mu", "theta[1]")
    assert legend_labels(ax.get_legend()) == ["good", "narrow", "shifted"]
    (ax,) = plot_pair(trees, var_names=["mu", "theta[0]"]).axes  # the pair among var_names
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("mu", "theta[0]")
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
    assert labels[2] == "k̂ ± 2 Monte Carlo sd (the interval the verdict reads)"
    assert "± 2 Monte Carlo sd" in ax.get_ylabel()


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


def final_loss(tree) -> float:
    loss = tree["optimization"]["loss"].values
    return float(np.median(loss[-NUM_STEPS // 10 :]))


def test_traces_two_panels_from_trees(trees):
    fig = plot_traces(trees)
    ax_loss, ax_ess = fig.axes
    assert len(ax_loss.lines) == 2 * 3 + 1  # raw and smoothed per fit, and the zero line
    raw = ax_loss.lines[0].get_ydata()
    assert np.median(raw[-NUM_STEPS // 10 :]) == pytest.approx(0.0)  # loss minus its final value
    finals = {name: f"final loss {final_loss(tree):.4g}" for name, tree in trees.items()}
    assert legend_labels(fig.legends[0]) == [  # one legend for both panels, with the final losses ...
        f"good ({finals['good']})",
        f"narrow ({finals['narrow']}; no ESS trace)",  # ... and the fit that traced no ESS
        f"shifted ({finals['shifted']})",
    ]
    assert ax_loss.get_legend() is None and not ax_loss.texts and not ax_ess.texts  # no text on the curves
    assert len(ax_ess.lines) == 2 * 2  # "narrow" traced no ESS
    assert max(ax_ess.lines[1].get_ydata()) <= 1.0  # ESS as a fraction of the 64 draws per step


def test_the_traces_legend_lies_outside_both_panels(trees):
    """The legend (with the final losses) cannot cover a curve: its box meets neither panel's."""
    fig = plot_traces({**trees, "a fit with a long name, to make the legend wide": trees["good"]})
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1  # all of it on the figure
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
        for text in legend.get_texts():
            assert not text.get_window_extent().overlaps(ax.get_window_extent())


def test_traces_of_real_fits(bimodal_fits):
    fig = plot_traces({**bimodal_fits, "mcmc-like": az.from_dict({"posterior": {"x": np.zeros((1, 10))}})})
    ax_loss, ax_ess = fig.axes
    assert [label.split(" (")[0] for label in legend_labels(fig.legends[0])] == ["reverse_kl", "forward_kl"]
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


# ------------------------------------------------------------------------------------------------
# Exact densities of Gaussian fits, log axes, k̂ labels

COV = np.array([[1.0, 1.6], [1.6, 4.0]])  # correlation 0.8
MEAN = np.array([0.5, -1.0])


@pytest.fixture(scope="module")
def gaussian_fit():
    """q = N(MEAN, COV), full rank, over a plain 2-D log density (nothing is fitted)."""
    precision = jnp.asarray(np.linalg.inv(COV))
    target = vt.Target.from_log_density(lambda x: -0.5 * x @ precision @ x, dim=2)
    return vt.Fit.from_gaussian(target, MEAN, np.linalg.cholesky(COV))


def scale_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    numpyro.sample("y", dist.Normal(mu, tau + 1.0), obs=jnp.array([1.0, 2.0]))


@pytest.fixture(scope="module")
def scale_fit():
    """q over (mu, log tau) = N((1, 0.5), diag(2², 1.5²)) on a model with a half-Cauchy scale tau."""
    target = vt.Target.from_model(scale_model)
    return vt.Fit.from_gaussian(target, np.array([1.0, 0.5]), np.diag([2.0, 1.5]))


def polygons(contour_set) -> list[np.ndarray]:
    """The vertices of each level of a contour set, in the order of its (ascending) levels."""
    return [np.concatenate(path.to_polygons(closed_only=False)) for path in contour_set.get_paths()]


def contour_sets(ax) -> list:
    return [c for c in ax.collections if hasattr(c, "levels")]


def test_a_gaussian_fits_pair_contours_are_its_exact_chi_square_ellipses(gaussian_fit):
    (ax,) = plot_pair({"q": gaussian_fit}, num_draws=200).axes
    assert legend_labels(ax.get_legend()) == ["q (exact density)"]
    (contours,) = contour_sets(ax)
    inverse = np.linalg.inv(COV)
    # levels ascend: the 90% region's (lower density) first, then the 50% region's
    for vertices, prob in zip(polygons(contours), (0.9, 0.5), strict=True):
        delta = vertices - MEAN
        distance2 = np.einsum("ni,ij,nj->n", delta, inverse, delta)
        # contour interpolates linearly between grid nodes 0.06 sd apart: ~1e-4 relative
        np.testing.assert_allclose(distance2, scipy.stats.chi2.ppf(prob, 2), rtol=2e-3)


def test_a_gaussian_fits_marginals_are_its_exact_normal_densities(gaussian_fit, reference):
    fig = plot_marginals({"q": gaussian_fit}, num_draws=200)
    assert legend_labels(fig.legends[0]) == ["q (exact density)"]
    assert fig.get_supxlabel() == ""  # every panel exact, one page: no footnote
    for ax, k in zip(panels_of(fig), range(2), strict=True):
        (line,) = ax.lines
        x = line.get_xdata()
        expected = scipy.stats.norm(MEAN[k], math.sqrt(COV[k, k])).pdf(x)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)


def test_a_tree_with_its_fit_as_exact_draws_the_exact_density_without_drawing_again(
    gaussian_fit, monkeypatch
):
    tree = vt.to_datatree(gaussian_fit, num_draws=300)
    from_fit = plot_marginals({"q": gaussian_fit}, num_draws=300)

    def no_draws(*args, **kwargs):
        raise AssertionError("the fit was drawn from again")

    monkeypatch.setattr(vt.Fit, "sample_with_log_densities", no_draws)
    from_tree = plot_marginals({"q": tree}, exact={"q": gaussian_fit, "mcmc": "skipped"})
    for a, b in zip(panels_of(from_fit), panels_of(from_tree), strict=True):
        np.testing.assert_array_equal(a.lines[0].get_ydata(), b.lines[0].get_ydata())
    kde_only = plot_marginals({"q": tree})
    assert legend_labels(kde_only.legends[0]) == ["q"]  # a tree alone: a KDE
    assert len(panels_of(kde_only)[0].lines[0].get_xdata()) != len(
        panels_of(from_tree)[0].lines[0].get_xdata()
    )
    with pytest.raises(ValueError, match=r"exact\['p'\] names no entry of fits: \['q'\]"):
        plot_marginals({"q": tree}, exact={"p": gaussian_fit})


def deterministic_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.deterministic("double", 2.0 * mu)


def test_a_deterministic_site_is_named_under_the_panels_as_a_kde_not_in_the_legend():
    target = vt.Target.from_model(deterministic_model)
    fit = vt.Fit.from_gaussian(target, np.array([0.5]), np.array([[1.0]]))
    fig = plot_marginals({"q": fit}, num_draws=500)
    assert [ax.get_xlabel() for ax in panels_of(fig)] == ["mu", "double"]
    assert legend_labels(fig.legends[0]) == ["q (exact density)"]  # no "(exact; KDE: double)"
    assert fig.get_supxlabel() == (
        "a KDE of the draws for every fit: double (deterministic); "
        "elsewhere a Gaussian fit's line is its exact density"
    )
    only = plot_marginals({"q": fit}, num_draws=500, var_names=["double"])
    assert legend_labels(only.legends[0]) == ["q"]  # nothing exact on this page
    assert only.get_supxlabel() == "a KDE of the draws for every fit: double (deterministic)"
    pages = plot_marginal_pages({"q": fit}, num_draws=500, max_params=1)
    assert [p.get_supxlabel().split("\n")[-1] for p in pages] == [
        "parameters 1-1 of 2, page 1 of 2",
        "parameters 2-2 of 2, page 2 of 2",
    ]
    assert "\n" not in pages[0].get_supxlabel()  # the page of mu alone has no KDE to name


def test_a_positive_scale_gets_a_log_axis_and_an_exact_density_of_log_x(scale_fit):
    fig = plot_marginals({"q": scale_fit}, num_draws=1000)
    mu, tau = panels_of(fig)
    assert (mu.get_xscale(), mu.get_ylabel()) == ("linear", "density")
    assert (tau.get_xscale(), tau.get_xlabel(), tau.get_ylabel()) == (
        "log",
        "tau (log scale)",
        "density of log tau",
    )
    (line,) = tau.lines
    log_x = np.log(line.get_xdata())  # q's log tau is N(0.5, 1.5²): its density is a Gaussian in log x
    np.testing.assert_allclose(line.get_ydata(), scipy.stats.norm(0.5, 1.5).pdf(log_x), rtol=1e-9)
    # on the log axis the HDR is the unconstrained chi-square ellipse: exp has a constant Jacobian there
    (ax,) = plot_pair({"q": scale_fit}, params=("mu", "tau"), num_draws=1000).axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    vertices = polygons(contour_sets(ax)[0])[0]  # the 90% region
    z = (vertices[:, 0] - 1.0) / 2.0, (np.log(vertices[:, 1]) - 0.5) / 1.5
    np.testing.assert_allclose(z[0] ** 2 + z[1] ** 2, scipy.stats.chi2.ppf(0.9, 2), rtol=2e-3)


def test_hdr_levels_on_a_linear_axis_of_a_scale_hold_their_probability(scale_fit):
    """On a linear tau axis the Jacobian of exp varies: the 90% region is the plotted density's HDR,
    set by quadrature; q's draws above its level must be 90% of them (Monte Carlo sd 0.002)."""
    from vitools.plots.exact import GaussianDensity

    gaussian = GaussianDensity.from_fit(scale_fit)
    _, _, _, log_levels = gaussian.pair(("mu", "tau"), (False, False), np.array([0.5, 0.9]))
    u = np.random.default_rng(0).normal(size=(20_000, 2)) * [2.0, 1.5] + [1.0, 0.5]
    # plotted density at q's draws: N(u) / |d tau / d log tau| = N(u) / tau
    log_q = scipy.stats.norm(1.0, 2.0).logpdf(u[:, 0]) + scipy.stats.norm(0.5, 1.5).logpdf(u[:, 1]) - u[:, 1]
    inside = [np.mean(log_q >= level) for level in log_levels]
    np.testing.assert_allclose(inside, [0.5, 0.9], atol=0.01)
    chi_square_level = -0.5 * scipy.stats.chi2.ppf(0.9, 2) - math.log(2 * math.pi * 2.0 * 1.5)
    image_of_ellipse = (log_q + u[:, 1]) >= chi_square_level  # also 90%, but not this density's HDR
    assert abs(np.mean(image_of_ellipse) - 0.9) < 0.01 and abs(log_levels[1] - chi_square_level) > 0.1


def positive_tree(sd: float, seed: int = 0) -> xr.DataTree:
    draws = np.exp(np.random.default_rng(seed).normal(0.0, sd, size=(1, 2000)))
    return az.from_dict({"posterior": {"s": draws, "m": np.log(draws)}})


def test_trees_get_a_log_axis_where_every_draw_is_positive_and_spreads_over_a_factor_of_10():
    # 0.1-99.9%: factors e^9.3 and e^1.2 = 3.4 (Kelly skewness 0.13, below RIGHT_SKEW = 0.2)
    wide, narrow = positive_tree(1.5), positive_tree(0.2)
    panels = panels_of(plot_marginals({"wide": wide}, reference={"s": wide.posterior["s"].values[0]}))
    assert [(ax.get_xlabel(), ax.get_xscale()) for ax in panels] == [("s (log scale)", "log")]
    panels = panels_of(plot_marginals({"narrow": narrow, "wide": wide}, var_names=["m", "s"]))
    assert [ax.get_xscale() for ax in panels] == ["log", "linear"]  # s (wide with narrow), m (real)
    assert panels_of(plot_marginals({"narrow": narrow}, var_names=["s"]))[0].get_xscale() == "linear"
    forced = panels_of(plot_marginals({"narrow": narrow}, log_axes=["s"], var_names=["s"]))
    assert forced[0].get_xscale() == "log" and forced[0].get_ylabel() == "density of log s"
    assert panels_of(plot_marginals({"wide": wide}, log_axes=(), var_names=["s"]))[0].get_xscale() == "linear"
    with pytest.raises(ValueError, match="log_axes names m, but some of its draws are not positive"):
        plot_marginals({"wide": wide}, log_axes=["m"])


def one_site_tree(values: np.ndarray) -> xr.DataTree:
    return az.from_dict({"posterior": {"s": values[None]}})


def kelly(values: np.ndarray) -> float:
    low, mid, high = np.quantile(values, (0.1, 0.5, 0.9))
    return float((high + low - 2 * mid) / (high - low))


def test_a_scale_spread_over_a_factor_of_15_or_clearly_right_skewed_gets_a_log_axis():
    from vitools.plots.panels import LOG_SPREAD, RIGHT_SKEW

    rng = np.random.default_rng(0)
    z = rng.normal(size=4000)
    cases = {  # name: (positive draws, spread over LOG_SPREAD?, right-skewed with a more symmetric log?)
        "group sd": (np.exp(0.44 * z), True, True),  # spread ~15 (sigma_a's): linear under the old 20
        "1.5 + Gamma(2)": (1.5 + rng.gamma(2.0, size=4000), False, True),  # spread ~7, K 0.32, of log 0.09
        "5 + Exp(1)": (5.0 + rng.exponential(size=4000), False, False),  # K 0.48, of log 0.41: no help
        "N(4, 1)": (4.0 + z, False, False),  # spread ~7, symmetric
    }
    for name, (values, spread, skewed) in cases.items():
        ratio = np.quantile(values, 0.999) / np.quantile(values, 0.001)
        skew, skew_of_log = kelly(values), kelly(np.log(values))
        assert (ratio > LOG_SPREAD) == spread, (name, ratio)
        assert (skew > RIGHT_SKEW and abs(skew_of_log) < skew / 2) == skewed, (name, skew, skew_of_log)
        (ax,) = panels_of(plot_marginals({name: one_site_tree(values)}))
        assert ax.get_xscale() == ("log" if spread or skewed else "linear"), name


def test_a_log_axis_under_two_decades_labels_1_2_5_ticks_as_plain_numbers():
    z = np.random.default_rng(1).normal(size=4000)
    fig = plot_marginals({"sd": one_site_tree(np.exp(0.44 * z))})  # ~0.25 to 4: 1.2 decades
    fig.canvas.draw()
    (ax,) = panels_of(fig)
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert shown == ["0.5", "1", "2"]  # matplotlib alone labels only 10^0 here
    fig = plot_marginals({"tau": one_site_tree(np.exp(2.0 * z))})  # 5 decades: powers of ten only
    fig.canvas.draw()
    (ax,) = panels_of(fig)
    lo, hi = ax.get_xlim()
    assert all("10^" in t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi)


def test_coordinates_are_exact_only_for_elementwise_bijections_of_fixed_supports():
    from vitools.plots.exact import coordinates

    def model():  # no Dirichlet or Beta: their samplers take NumPyro's init ~10 s to compile
        scale = numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("share", dist.Uniform(0.0, scale))  # a support that depends on another site
        numpyro.sample("w", dist.ImproperUniform(constraints.simplex, (), (3,)))  # no elementwise bijection
        numpyro.sample("p", dist.Uniform(-1.0, 2.0))
        numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))  # a vector site: elementwise
        numpyro.sample("tau", dist.HalfNormal(1.0).expand([2]).to_event(1))

    coords = coordinates(vt.Target.from_model(model))
    labels = ["scale", "share", "w[0]", "w[1]", "w[2]", "p", "beta[0]", "beta[1]", "tau[0]", "tau[1]"]
    assert list(coords) == labels
    assert [c.index for c in coords.values()] == [0, None, None, None, None, 4, 5, 6, 7, 8]  # w has 2
    assert [c.positive for c in coords.values()] == [True] + [False] * 7 + [True, True]
    x, log_det = coords["p"].through(np.array([-1.0, 0.0, 2.0]))  # p = -1 + 3 sigmoid(u)
    sigmoid = scipy.special.expit([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(x, -1.0 + 3.0 * sigmoid)
    np.testing.assert_allclose(np.exp(log_det), 3.0 * sigmoid * (1 - sigmoid))


def khat_table(khats, errors) -> pd.DataFrame:
    table = pd.DataFrame(
        {"khat": khats, "khat_se": errors, "verdict": "uncertain"},
        index=[f"fit{i}" for i in range(len(khats))],
    )
    table.attrs["num_draws"] = 10_000  # threshold 0.7
    return table


def test_khat_bars_are_coloured_by_what_khat_alone_says_not_by_the_verdict():
    from matplotlib.colors import to_rgba

    from vitools.plots.diagnostics import VERDICT_COLORS

    # every fit reads bad (for other reasons, say a mean shift), and its k̂ ± 2 sd against 0.7 is:
    khats, errors = [0.43, 0.66, 0.55, 0.9, math.nan], [0.05, 0.1, 0.06, 0.05, math.nan]
    readings = ["good", "uncertain", "good", "bad", "bad"]  # an undefined k̂ reads bad, as in verdict()
    table = khat_table(khats, errors).assign(verdict="bad")
    (ax,) = plot_khat(table).axes
    for bar, reading in zip(ax.patches, readings, strict=True):
        assert bar.get_facecolor()[:3] == pytest.approx(to_rgba(VERDICT_COLORS[reading])[:3])
    assert ax.patches[-1].get_hatch() == "//"  # undefined k̂: hatched, drawn up to the threshold
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
    (segments,) = [c.get_segments() for c in bars.lines[2]]
    for (lo, hi), k, se in zip((s[:, 1] for s in map(np.asarray, segments)), khats, errors, strict=True):
        if math.isfinite(se):  # the whisker spans k̂ ± 2 sd, as the legend and the y label say
            assert (lo, hi) == (pytest.approx(k - 2 * se), pytest.approx(k + 2 * se))
    fig = ax.figure
    assert legend_labels(fig.legends[0])[3:] == [
        "k̂ + 2 sd below the threshold",
        "k̂ ± 2 sd straddles it",
        "k̂ − 2 sd above it",
    ]
    assert "verdict may be worse" in fig.legends[0].get_title().get_text()


@pytest.mark.parametrize(
    ("khats", "errors"),
    [
        ([0.5, 0.6, 0.66, 0.69, 0.72], [0.1, 0.05, 0.01, 0.0, 0.01]),  # label bottoms near 0.7
        ([0.45, 0.48, 0.3], [0.0, 0.01, 0.1]),  # ... near the 0.5 line
    ],
)
def test_khat_labels_never_cross_the_threshold_or_the_half_line(khats, errors):
    fig = plot_khat(khat_table(khats, errors))
    fig.canvas.draw()
    (ax,) = fig.axes
    lines = [
        line for line in ax.lines if len(set(line.get_ydata())) == 1 and line.get_ydata()[0] in (0.5, 0.7)
    ]
    assert len(lines) == 2
    labels = [t for t in ax.texts if t.get_text()[0].isdigit()]
    assert [t.get_text() for t in labels] == [f"{k:.2f}" for k in khats]
    for line in lines:
        y = ax.transData.transform((0, line.get_ydata()[0]))[1]
        half_width = line.get_linewidth() * fig.dpi / 72 / 2
        for text in labels:
            box = text.get_window_extent()
            assert box.y1 < y - half_width or box.y0 > y + half_width, (text.get_text(), line.get_ydata()[0])
            assert box.y1 < ax.get_window_extent().y1  # inside the axes


def test_only_gaussian_families_have_exact_densities(gaussian_fit):
    from vitools.plots.exact import is_gaussian

    target, loc, scale_tril = gaussian_fit.target, jnp.zeros(2), jnp.eye(2)
    for family, gaussian in (
        (vt.MeanField(), True),
        (vt.FullRank(), True),
        (vt.LowRank(1), True),
        (vt.IAF(), False),
    ):
        params = family.init(jax.random.PRNGKey(0), target, loc, scale_tril)
        assert is_gaussian(family.distribution(params)) is gaussian, family.name
