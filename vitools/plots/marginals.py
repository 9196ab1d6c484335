"""Where each fit puts its mass: overlaid marginal densities against a reference, page by page.

Why plain matplotlib rather than arviz-plots: ``azp.plot_dist({name: tree})`` concatenates the trees
along a ``model`` dim, so the reference (4000 zoo draws, or 2 NUTS chains) and the fits must first be
thinned to one size, it has no shaded-reference style, and its per-model point-estimate labels
collide when fits agree. The densities of draws come from arviz-stats (``array_stats.kde``, with
boundary correction for constrained parameters such as a scale), so they match what arviz-plots
would draw; a Gaussian fit's are exact (:mod:`vitools.plots.exact`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from vitools.convert import DIAGNOSTIC_DRAWS
from vitools.plots.panels import PlotData, axis, column, kde, label_log_axis, limits, read, select

__all__ = ["REFERENCE_COLOR", "limits", "plot_marginal_pages", "plot_marginals"]

REFERENCE_COLOR = "0.75"


def _panel(ax: Any, data: PlotData, label: str, log_axes: str | Sequence[str], handles: dict) -> None:
    """One parameter: the reference shaded, a line per fit (exact for a Gaussian fit), labelled axes."""
    scale = axis(data, label, log_axes)
    ref_values = column(data.reference, label)
    if ref_values is not None and ref_values.size:
        density = kde(ref_values, scale.log)
        if density is not None:
            handles["reference"] = ax.fill_between(*density, color=REFERENCE_COLOR, lw=0)
    for i, (name, labelled) in enumerate(data.draws.items()):
        values = column(labelled, label)
        if values is None or not values.size:
            continue
        gaussian = data.exact.get(name)
        if gaussian is not None and gaussian.has(label):
            density = gaussian.marginal(label, scale.log)
        else:
            density = kde(values, scale.log)
        if density is None:  # a point mass: a vertical line at its value
            (handles[name],) = ax.plot([values[0]] * 2, [0, 1], color=f"C{i}", lw=1.6)
        else:
            (handles[name],) = ax.plot(*density, color=f"C{i}", lw=1.6)
    if scale.log:
        ax.set_xscale("log")
        label_log_axis(ax.xaxis, scale)
    ax.set_xlim(scale.lo, scale.hi)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"{label} (log scale)" if scale.log else label, fontsize=9)
    ax.set_ylabel(f"density of log {label}" if scale.log else "density", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["right", "top"]].set_visible(False)


def _legend_name(data: PlotData, name: str, shown: list[str]) -> str:
    """``name``, marked "(exact density)" for a Gaussian fit drawn exactly in some panel shown."""
    gaussian = data.exact.get(name)
    if gaussian is None or name not in data.draws:
        return name
    labels = [label for label in shown if label in data.draws[name][0]]
    return f"{name} (exact density)" if any(gaussian.has(label) for label in labels) else name


def _kde_note(data: PlotData, shown: list[str]) -> str:
    """The footnote for the Gaussian fits' parameters shown as a KDE of their draws, naming why:
    a deterministic site (a function of the others), or a latent one that is not one coordinate
    of q (a simplex, a support that depends on another site); "" when there are none."""
    reasons: dict[str, str] = {}
    for gaussian in data.exact.values():
        for label in shown:
            if not gaussian.has(label):
                site = label.split("[")[0]
                latent = label in gaussian.coordinates
                reasons.setdefault(site, "not one coordinate of q" if latent else "deterministic")
    if not reasons:
        return ""
    sites = ", ".join(f"{site} ({why})" for site, why in reasons.items())
    exact = any(gaussian.has(label) for gaussian in data.exact.values() for label in shown)
    rest = "; elsewhere a Gaussian fit's line is its exact density" if exact else ""
    return f"a KDE of the draws for every fit: {sites}{rest}"


def _figure(data: PlotData, shown: list[str], log_axes: str | Sequence[str], note: str) -> Figure:
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    handles: dict[str, Any] = {}
    for ax, label in zip(axes, shown, strict=False):
        _panel(ax, data, label, log_axes, handles)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    order = [n for n in data.draws if n in handles] + (["reference"] if "reference" in handles else [])
    names = [_legend_name(data, n, shown) for n in order]
    fig.legend(
        [handles[n] for n in order], names, loc="outside upper center", ncols=len(order), frameon=False
    )
    footnote = "\n".join(line for line in (_kde_note(data, shown), note) if line)
    if footnote:
        fig.supxlabel(footnote, fontsize=9, color="0.3")
    return fig


def _pages(labels: list[str], max_params: int) -> list[list[str]]:
    if max_params < 1:
        raise ValueError(f"max_params must be at least 1, got {max_params}")
    return [labels[start : start + max_params] for start in range(0, len(labels), max_params)]


def _note(pages: list[list[str]], page: int, total: int) -> str:
    """``parameters 13-18 of 18, page 2 of 2`` (pages counted from 1, as a reader counts them;
    the ``page`` argument counts from 0); "" for a single page."""
    if len(pages) == 1:
        return ""
    first = sum(len(p) for p in pages[:page]) + 1
    last = first + len(pages[page]) - 1
    return f"parameters {first}-{last} of {total}, page {page + 1} of {len(pages)}"


def plot_marginals(
    fits: Mapping[str, Any],
    reference: Any = None,
    var_names: Sequence[str] | None = None,
    max_params: int = 12,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    *,
    page: int = 0,
    exact: Mapping[str, Any] | None = None,
    log_axes: str | Sequence[str] = "auto",
) -> Figure:
    """Marginal densities of every fit overlaid, one panel per scalar parameter, reference shaded.

    A Gaussian fit's density is exact where the parameter is one unconstrained coordinate under an
    elementwise bijection (:mod:`vitools.plots.exact`; marked "(exact density)" in the legend);
    other fits, other parameters (a simplex, a deterministic site: a footnote names them) and the
    reference are KDEs of their draws. Each axis spans the 0.1%-99.9% range of every fit and of
    the reference, so a q that is too narrow or too wide in the tails shows. A positive parameter
    that spreads over more than a factor of 10 (:data:`vitools.plots.panels.LOG_SPREAD`; eight
    schools' tau, a group sd) or is clearly right-skewed (:data:`vitools.plots.panels.RIGHT_SKEW`)
    is drawn on a log axis, with densities of log x (labelled so).

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``; one coloured line per fit in every panel. Fits are
            drawn from here (:func:`vitools.convert.to_datatree`): pass trees to share one set of
            draws with :func:`vitools.comparison.compare` and the other plots, and the Fits behind
            them as ``exact``.
        reference: ``None``, a key of ``fits`` (then shaded, not drawn as a line), or a container of
            posterior draws: a DataTree, a dict of constrained draws ``name -> (S, ...)``, an MCMC
            that has run, or a zoo ``Reference``.
        var_names: site names (all their elements) or labels such as ``"theta[3]"`` to show (any
            parameter of the fits; without it, those the reference has).
        max_params: panels per page.
        num_draws: draws from each Fit (trees and MCMC keep their own).
        seed: seed of those draws (the same for every fit, as in ``vt.compare``).
        page: which page of ``max_params`` parameters to show (0 first); a note below the panels
            says which parameters the page holds, counting pages from 1 as a reader does
            ("parameters 13-18 of 18, page 2 of 2" for ``page=1``). Other parameters: another
            ``page``, ``var_names``, or :func:`plot_marginal_pages` for every page.
        exact: ``{name: Fit}``, the Fits behind tree entries of ``fits`` (same names; entries that
            are not Fits are skipped): their exact densities replace the KDEs of those trees, which
            are not drawn again. A Fit entry of ``fits`` is used so without it.
        log_axes: ``"auto"`` (the rule above) or the site names or labels to draw on a log axis
            (all others linear; ``()`` for none).

    Returns:
        The figure (never shown); one legend (fit names, then "reference") above the
            panels.

    Raises:
        ValueError: an unknown var_name (the message lists the parameters), ``max_params`` < 1, a
            page past the last, a log axis for a parameter with draws ≤ 0, an ``exact`` entry that
            names no entry of ``fits``.
        KeyError: ``reference`` is a string that is not a key of ``fits``.
        TypeError: ``exact`` is not a dict; a fit or the reference is of a kind
            :func:`vitools.convert.to_datatree` cannot read.

    Examples:
        >>> from vitools.plots import plot_marginals
        >>> fit_f = vt.fit(model, x, y=y, objective="forward_kl", seed=0)
        >>> fig = plot_marginals({"reverse KL": fit, "forward KL": fit_f}, reference=mcmc)
        >>> fig.savefig("marginals.png")
        >>> fits = {"reverse KL": fit, "forward KL": fit_f}
        >>> trees = vt.to_datatrees(fits)  # drawn once, as for vt.compare(trees)
        >>> fig = plot_marginals(trees, reference=mcmc, exact=fits, var_names=["sigma"])
    """
    data = read(fits, reference, exact, num_draws, seed)
    labels = select(data, var_names)
    pages = _pages(labels, max_params)
    if not 0 <= page < len(pages):
        raise ValueError(
            f"page {page} is out of range: {len(labels)} parameters make pages 0-{len(pages) - 1} "
            f"of {max_params}"
        )
    return _figure(data, pages[page], log_axes, _note(pages, page, len(labels)))


def plot_marginal_pages(
    fits: Mapping[str, Any],
    reference: Any = None,
    var_names: Sequence[str] | None = None,
    max_params: int = 12,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    *,
    exact: Mapping[str, Any] | None = None,
    log_axes: str | Sequence[str] = "auto",
) -> list[Figure]:
    """Every page of :func:`plot_marginals` (same arguments and errors, less ``page``), from one
    conversion of the fits: every parameter, ``max_params`` panels per figure.

    Returns:
        One figure per page of ``max_params`` parameters.

    Examples:
        >>> from vitools.plots import plot_marginal_pages
        >>> figs = plot_marginal_pages({"VI": fit}, reference=mcmc, max_params=2)
        >>> len(figs)  # 3 parameters, 2 per page
        2
        >>> for i, fig in enumerate(figs):
        ...     fig.savefig(f"marginals_{i}.png")
    """
    data = read(fits, reference, exact, num_draws, seed)
    labels = select(data, var_names)
    pages = _pages(labels, max_params)
    return [_figure(data, shown, log_axes, _note(pages, i, len(labels))) for i, shown in enumerate(pages)]
