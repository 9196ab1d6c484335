"""The joint density of two parameters: reference draws as points, each fit's HDR contours.

A Gaussian fit's contours are exact (:mod:`vitools.plots.exact`), those of other fits come from
arviz-stats' ``kde2d`` with its HDR levels; both are highest-density regions of the density in the
plotted coordinates (log x on a log axis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitools.convert import DIAGNOSTIC_DRAWS
from vitools.plots.marginals import REFERENCE_COLOR
from vitools.plots.panels import Labelled, axis, describe, every_label, kde2d, label_log_axis, read, select

__all__ = ["plot_pair"]

STYLES = ("-", "--", ":", "-.")  # by probability, highest first
REFERENCE_POINTS = 1500


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


def _contour(ax: Any, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray, color: str) -> None:
    """Contours of ``z [j, i]`` at ``levels``, one per probability of the ascending ``probs``
    (so levels descend): the lowest probability solid, then dashed, dotted, ..."""
    order = np.argsort(levels)  # contour wants ascending levels: the highest probability first
    kept = np.concatenate([[True], np.diff(levels[order]) > 0])  # equal levels: one line
    styles = [STYLES[k % len(STYLES)] for k in order[kept]]
    ax.contour(x, y, z, levels=levels[order][kept], colors=color, linestyles=styles)


def plot_pair(
    fits: Mapping[str, Any],
    reference: Any = None,
    params: tuple[str, str] | None = None,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    hdi_probs: tuple[float, ...] = (0.5, 0.9),
    *,
    var_names: Sequence[str] | None = None,
    exact: Mapping[str, Any] | None = None,
    log_axes: str | Sequence[str] = "auto",
) -> Figure:
    """Joint density of two parameters: reference draws as grey points, each fit's HDR contours.

    Contours are highest-density regions {q ≥ c} of each fit's density in the plotted coordinates
    (log x on a log axis), holding ``hdi_probs`` of its mass. A Gaussian fit's are exact where both
    parameters are unconstrained coordinates under elementwise bijections: for an affine map (or
    exp, on a log axis) the chi-square(2) ellipse of q in the unconstrained space, mapped; where
    the map's Jacobian varies the image of that ellipse still holds the same probability but is not
    the plotted density's HDR, so the level is set by quadrature instead (see
    :mod:`vitools.plots.exact`). Other fits' contours are KDEs of their draws (arviz-stats' ``kde2d``).
    Axes are chosen as in :func:`vitools.plots.plot_marginals` (log for a widely spread positive
    parameter, the 0.1%-99.9% range of every fit and the reference).

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``.
        reference: as in :func:`plot_marginals`.
        params: two scalar labels (e.g. ``("mu", "tau")``); default: the pair with the largest
            absolute correlation in the reference's draws (the first fit's without a reference),
            among the latent sites when a tree says which they are (trees of Fits and MCMC runs do),
            among ``var_names`` when given.
        num_draws: draws from each Fit, as in :func:`plot_marginals`.
        seed: seed of those draws, as in :func:`plot_marginals`.
        hdi_probs: contour levels, as highest-density-region probabilities (solid to dotted).
        var_names: site names or labels among which the default pair is chosen.
        exact: the Fits behind tree entries of ``fits``, as in :func:`plot_marginals`.
        log_axes: ``"auto"`` or the labels on a log axis, as in :func:`plot_marginals`.

    Returns:
        The figure (never shown), one panel: the pair's contours per fit, the
            reference's shaded.

    Raises:
        ValueError: fewer than two scalar parameters, ``params`` or ``var_names`` not shown by the
            fits (the message lists those available); as :func:`plot_marginals`.
        KeyError: ``reference`` is a string that is not a key of ``fits``.
        TypeError: as :func:`plot_marginals`.

    Examples:
        >>> from vitools.plots import plot_pair
        >>> fig = plot_pair({"VI": fit}, reference=mcmc, params=("alpha", "beta"))
        >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
        ('alpha', 'beta')
    """
    data = read(fits, reference, exact, num_draws, seed)
    labels = select(data, var_names)
    draws, ref, latent = data.draws, data.reference, data.latent
    if params is None:
        if len(labels) < 2:
            raise ValueError(f"a pair plot needs two scalar parameters; the fits have {labels}")
        basis = ref if ref is not None and set(labels) <= set(ref[0]) else next(iter(draws.values()))
        candidates = [lab for lab in labels if lab in basis[0]]
        sampled = [lab for lab in candidates if lab.split("[")[0] in latent]
        # A deterministic site is correlated with its parents by construction: prefer latent pairs.
        params = _most_correlated(basis, sampled if len(sampled) >= 2 else candidates)
    params = tuple(params)
    every = every_label(data)
    missing = [p for p in params if p not in every]
    if len(params) != 2 or missing:
        raise ValueError(
            f"params must be two of the fits' parameters ({describe(every)}); unknown: {missing}"
        )
    scales = [axis(data, p, log_axes) for p in params]
    logs = (scales[0].log, scales[1].log)
    probs = np.asarray(sorted(hdi_probs))
    fig, ax = plt.subplots(figsize=(5.8, 5.2), layout="constrained")
    handles, names = [], []
    if ref is not None and all(p in ref[0] for p in params):
        x, y = (ref[1][:REFERENCE_POINTS, ref[0].index(p)] for p in params)
        ax.scatter(x, y, s=4, color=REFERENCE_COLOR, alpha=0.6, linewidths=0, rasterized=True)
        handles.append(Line2D([], [], ls="", marker="o", color=REFERENCE_COLOR))
        names.append("reference")
    for i, (name, (cols, values)) in enumerate(draws.items()):
        if not all(p in cols for p in params):
            continue
        x, y = (values[:, cols.index(p)] for p in params)
        gaussian = data.exact.get(name)
        if gaussian is not None and all(gaussian.has(p) for p in params):
            gx, gy, log_density, log_levels = gaussian.pair(params, logs, probs)
            _contour(ax, gx, gy, log_density, log_levels, f"C{i}")
            name = f"{name} (exact density)"
        elif np.ptp(x) == 0 or np.ptp(y) == 0:
            ax.scatter(x[:300], y[:300], s=6, color=f"C{i}")
        else:
            _contour(ax, *kde2d(x, y, logs, probs), f"C{i}")
        handles.append(Line2D([], [], color=f"C{i}"))
        names.append(name)
    for scale, set_scale, set_lim, ticks in (
        (scales[0], ax.set_xscale, ax.set_xlim, ax.xaxis),
        (scales[1], ax.set_yscale, ax.set_ylim, ax.yaxis),
    ):
        if scale.log:
            set_scale("log")
            label_log_axis(ticks, scale)
        set_lim(scale.lo, scale.hi)
    ax.set_xlabel(params[0] + (" (log scale)" if logs[0] else ""))
    ax.set_ylabel(params[1] + (" (log scale)" if logs[1] else ""))
    levels_text = ", ".join(f"{p:.0%}" for p in probs[::-1])
    ax.set_title(f"{params[1]} vs {params[0]}: fits' {levels_text} highest-density contours", fontsize=10)
    ax.legend(handles, names, loc="best", fontsize=9, framealpha=0.85)
    return fig
