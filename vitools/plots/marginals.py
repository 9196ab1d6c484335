"""Where each fit puts its mass: overlaid marginal densities and a 2-D pair plot against a reference.

Why plain matplotlib rather than arviz-plots: ``azp.plot_dist({name: tree})`` concatenates the trees
along a ``model`` dim, so the reference (4000 zoo draws, or 2 NUTS chains) and the fits must first be
thinned to one size, it has no shaded-reference style, and its per-model point-estimate labels
collide when fits agree. The densities themselves come from arviz-stats (``array_stats.kde``, with
boundary correction for constrained parameters such as a scale, and ``kde2d`` with HDI contour
levels), so they match what arviz-plots would draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitools.comparison import reference_draws
from vitools.convert import DIAGNOSTIC_DRAWS, to_datatrees
from vitools.trees import flatten_draws, site_shapes

__all__ = ["REFERENCE_COLOR", "limits", "plot_marginals", "plot_pair"]

REFERENCE_COLOR = "0.75"
Labelled = tuple[list[str], np.ndarray]  # scalar parameter labels and a (S, P) draw matrix


def _reference(reference: Any, draws: dict[str, Labelled]) -> Labelled | None:
    """Reference draws from a key of ``fits`` (popped from ``draws``) or a container of draws."""
    if reference is None:
        return None
    if isinstance(reference, str):
        if reference not in draws:
            raise KeyError(f"reference {reference!r} is not one of the fits: {list(draws)}")
        return draws.pop(reference)
    return reference_draws(reference)


def _latent_sites(trees: Mapping[str, xr.DataTree]) -> list[str]:
    """The model's latent sites, as the trees list them (root attr ``vitools_latent_sites``): a
    vitools fit's tree first (model order; an MCMC tree lists them in NumPyro's order); none when
    no tree lists them (a tree made elsewhere, a dict of draws)."""
    ordered = sorted(trees.values(), key=lambda tree: tree.attrs.get("vitools_kind") != "vi")
    for tree in ordered:
        latent = site_shapes(tree).latent
        if latent:
            return list(latent)
    return []


def _parameters(
    draws: dict[str, Labelled],
    ref: Labelled | None,
    var_names: Sequence[str] | None,
    latent: Sequence[str] = (),
) -> list[str]:
    """Scalar labels: latent sites first (model order), then the rest in first-seen order; with a
    reference, only those it has (when it shares any)."""
    labels = list(dict.fromkeys(label for names, _ in draws.values() for label in names))
    rank = {site: i for i, site in enumerate(latent)}
    labels.sort(key=lambda label: rank.get(label.split("[")[0], len(rank)))  # stable: keeps the rest
    if ref is not None and set(ref[0]) & set(labels):
        labels = [label for label in labels if label in set(ref[0])]
    if var_names is not None:
        wanted = [var_names] if isinstance(var_names, str) else list(var_names)
        labels = [lab for lab in labels if any(lab == v or lab.startswith(f"{v}[") for v in wanted)]
        if not labels:
            raise ValueError(f"var_names {wanted} match no parameter of the fits")
    return labels


def _column(labelled: Labelled | None, label: str) -> np.ndarray | None:
    if labelled is None or label not in labelled[0]:
        return None
    values = labelled[1][:, labelled[0].index(label)]
    return values[np.isfinite(values)]


def limits(columns: list[np.ndarray], lower: float = 0.01, upper: float = 0.99) -> tuple[float, float]:
    """A padded axis range showing the bulk of every sample; one long tail cannot flatten the rest."""
    lows = [np.quantile(c, lower) for c in columns if c.size]
    highs = [np.quantile(c, upper) for c in columns if c.size]
    lo, hi = min(lows), max(highs)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def _kde(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """arviz-stats' 1-D KDE (bandwidth 'experimental', boundary-corrected); None for constant draws."""
    if values.size < 2 or np.ptp(values) == 0:
        return None
    from arviz_stats.base import array_stats  # ~1.4 s import: only when plotting

    grid, pdf, _ = array_stats.kde(values)
    return np.asarray(grid), np.asarray(pdf)


def plot_marginals(
    fits: Mapping[str, Any],
    reference: Any = None,
    var_names: Sequence[str] | None = None,
    max_params: int = 12,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
) -> Figure:
    """Marginal densities of every fit overlaid, one panel per scalar parameter, reference shaded.

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``; one coloured line per fit in every panel. Fits are
            drawn from here (:func:`vitools.convert.to_datatree`): pass trees to share one set of
            draws with :func:`vitools.comparison.compare` and the other plots.
        reference: ``None``, a key of ``fits`` (then shaded, not drawn as a line), or a container of
            posterior draws: a DataTree, a dict of constrained draws ``name -> (S, ...)``, an MCMC
            that has run, or a zoo ``Reference``.
        var_names: site names (all their elements) or labels such as ``"theta[3]"`` to show.
        max_params: show at most this many panels (the first ones); a note below says how many are left out.
        num_draws: draws from each Fit (trees and MCMC keep their own).
        seed: seed of those draws (the same for every fit, as in ``vt.compare``).

    Returns:
        The figure; one legend (fit names, then "reference") above the panels.

    Example:
        >>> fig = plot_marginals({"reverse KL": fit1, "forward KL": fit2}, reference=zoo.reference())
        >>> fig.savefig("marginals.png")
    """
    if max_params < 1:
        raise ValueError(f"max_params must be at least 1, got {max_params}")
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    draws = {name: flatten_draws(tree) for name, tree in trees.items()}
    ref = _reference(reference, draws)
    labels = _parameters(draws, ref, var_names, _latent_sites(trees))
    shown = labels[:max_params]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.5 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    handles: dict[str, Any] = {}
    for ax, label in zip(axes, shown, strict=False):
        ref_values = _column(ref, label)
        columns = [c for c in (_column(d, label) for d in draws.values()) if c is not None and c.size]
        if ref_values is not None and ref_values.size:
            density = _kde(ref_values)
            if density is not None:
                handles["reference"] = ax.fill_between(*density, color=REFERENCE_COLOR, lw=0)
        for i, (name, labelled) in enumerate(draws.items()):
            values = _column(labelled, label)
            if values is None or not values.size:
                continue
            density = _kde(values)
            if density is None:  # a point mass: a vertical line at its value
                (handles[name],) = ax.plot([values[0]] * 2, [0, 1], color=f"C{i}", lw=1.6)
            else:
                (handles[name],) = ax.plot(*density, color=f"C{i}", lw=1.6)
        ax.set_xlim(*limits(columns + ([ref_values] if ref_values is not None else [])))
        ax.set_ylim(bottom=0)
        ax.set_title(label, fontsize=10)
        ax.set_yticks([])
        ax.spines[["left", "right", "top"]].set_visible(False)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    order = [n for n in draws if n in handles] + (["reference"] if "reference" in handles else [])
    fig.legend(
        [handles[n] for n in order], order, loc="outside upper center", ncols=len(order), frameon=False
    )
    if len(labels) > len(shown):
        fig.supxlabel(f"first {len(shown)} of {len(labels)} parameters (choose with var_names)", fontsize=9)
    return fig


def _most_correlated(labelled: Labelled, candidates: list[str]) -> tuple[str, str]:
    names, values = labelled
    index = [names.index(c) for c in candidates]
    columns = values[:, index]
    varying = columns.std(axis=0) > 0
    if varying.sum() < 2:
        return candidates[0], candidates[1]
    corr = np.abs(np.corrcoef(columns[:, varying], rowvar=False))
    np.fill_diagonal(corr, -1.0)
    i, j = np.unravel_index(np.nanargmax(corr), corr.shape)
    kept = [c for c, v in zip(candidates, varying, strict=True) if v]
    return kept[min(i, j)], kept[max(i, j)]


def plot_pair(
    fits: Mapping[str, Any],
    reference: Any = None,
    params: tuple[str, str] | None = None,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    hdi_probs: tuple[float, ...] = (0.5, 0.9),
) -> Figure:
    """Joint density of two parameters: reference draws as grey points, each fit's HDI contours.

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``.
        reference: as in :func:`plot_marginals`.
        params: two scalar labels (e.g. ``("mu", "tau")``); default: the pair with the largest
            absolute correlation in the reference's draws (the first fit's without a reference),
            among the latent sites when a tree says which they are (trees of Fits and MCMC runs do).
        num_draws, seed: draws from each Fit, as in :func:`plot_marginals`.
        hdi_probs: contour levels, as highest-density-region probabilities (solid to dotted).

    Raises:
        ValueError: fewer than two scalar parameters, or ``params`` not shown by the fits.
    """
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    draws = {name: flatten_draws(tree) for name, tree in trees.items()}
    ref = _reference(reference, draws)
    latent = _latent_sites(trees)
    labels = _parameters(draws, ref, None, latent)
    if params is None:
        if len(labels) < 2:
            raise ValueError(f"a pair plot needs two scalar parameters; the fits have {labels}")
        basis = ref if ref is not None and set(labels) <= set(ref[0]) else next(iter(draws.values()))
        candidates = [lab for lab in labels if lab in basis[0]]
        sampled = [lab for lab in candidates if lab.split("[")[0] in latent]
        # A deterministic site is correlated with its parents by construction: prefer latent pairs.
        params = _most_correlated(basis, sampled if len(sampled) >= 2 else candidates)
    missing = [p for p in params if p not in labels]
    if len(params) != 2 or missing:
        raise ValueError(f"params must be two of the fits' parameters {labels[:8]}...; unknown: {missing}")
    from arviz_stats.base import array_stats

    fig, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
    handles, names, shown = [], [], []
    if ref is not None and all(p in ref[0] for p in params):
        x, y = (ref[1][:1500, ref[0].index(p)] for p in params)
        ax.scatter(x, y, s=4, color=REFERENCE_COLOR, alpha=0.6, linewidths=0, rasterized=True)
        handles.append(Line2D([], [], ls="", marker="o", color=REFERENCE_COLOR))
        names.append("reference")
        shown += [x, y]
    styles = ("-", "--", ":", "-.")
    for i, (name, (cols, values)) in enumerate(draws.items()):
        if not all(p in cols for p in params):
            continue
        x, y = (values[:, cols.index(p)] for p in params)
        shown += [x, y]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            ax.scatter(x[:300], y[:300], s=6, color=f"C{i}")
        else:
            density, gx, gy, levels = array_stats.kde2d(x, y, hdi_probs=np.asarray(hdi_probs))
            ax.contour(gx, gy, np.asarray(density).T, levels=np.sort(np.unique(levels)), colors=f"C{i}",
                       linestyles=[styles[k % 4] for k in np.argsort(levels)])  # fmt: skip
        handles.append(Line2D([], [], color=f"C{i}"))
        names.append(name)
    ax.set_xlim(*limits(shown[0::2], 0.005, 0.995))  # wider than the marginals: 90% contours fit
    ax.set_ylim(*limits(shown[1::2], 0.005, 0.995))
    ax.set_xlabel(params[0])
    ax.set_ylabel(params[1])
    probs = ", ".join(f"{p:.0%}" for p in sorted(hdi_probs, reverse=True))
    ax.set_title(f"{params[1]} vs {params[0]}: fits' {probs} HDI contours", fontsize=10)
    ax.legend(handles, names, loc="best", fontsize=9, framealpha=0.85)
    return fig
