"""VSBC's picture (:mod:`vitools.vsbc`): per scalar parameter, the histogram of
p = Pr_q(θ < θ*) over the simulated datasets, which is flat when q is calibrated, against its
mirror 1 - p (the two differ when q is biased) and the uniform's density (a U when q is too
narrow, a hump when too wide; Yao, Vehtari, Simpson & Gelman 2018, Fig. 1; Talts et al. 2018).

Plain matplotlib, the house's verdict colours (:data:`vitools.plots.diagnostics.VERDICT_COLORS`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vitools.plots.diagnostics import VERDICT_COLORS

if TYPE_CHECKING:
    from vitools.vsbc import VSBC

__all__ = ["plot_vsbc"]

MAX_PANELS = 24  # beyond this a grid of histograms is unreadable: the first ones, and a note


def plot_vsbc(result: VSBC, bins: int | None = None, max_panels: int = MAX_PANELS) -> Figure:
    """One panel per scalar parameter: the histogram of its p (filled, green when the parameter
    reads ``"calibrated"``, red otherwise), that of 1 - p (outline) and the uniform density
    (dashed), titled with the verdict and both tests' p-values.

    Args:
        result: a :class:`vitools.vsbc.VSBC`.
        bins: histogram bins (None: about sqrt(number of datasets), 5 to 20).
        max_panels: at most this many panels (the table's first parameters); the title says how
            many were left out.

    Returns:
        The figure (never shown: it runs under Agg), ``min(P, max_panels)`` panels for P
            scalar parameters.

    Raises:
        ValueError: ``bins`` or ``max_panels`` is not a positive integer.

    Examples:
        >>> from vitools.plots import plot_vsbc
        >>> check = vt.vsbc(model, x, y=None, num_datasets=20, num_steps=300, progress=False)
        >>> fig = plot_vsbc(check, bins=5)  # or check.plot(bins=5)
    """
    table = result.table
    num_datasets = len(result.fits)
    bins = int(np.clip(round(math.sqrt(num_datasets)), 5, 20)) if bins is None else bins
    if not isinstance(bins, int) or bins < 1 or not isinstance(max_panels, int) or max_panels < 1:
        raise ValueError(f"bins and max_panels must be positive integers, got {bins!r} and {max_panels!r}")
    labels = list(table.index[:max_panels])
    columns = min(4, len(labels))
    rows = math.ceil(len(labels) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(max(7.5, 2.9 * columns), 2.4 * rows + 1.2),
        squeeze=False,
        layout="constrained",
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    values = _scalar_columns(result)
    for ax, label in zip(axes.ravel(), labels, strict=False):
        p, row = values[label], table.loc[label]
        good = row["verdict"] == "calibrated"
        ax.hist(p, bins=edges, density=True, color=VERDICT_COLORS["good" if good else "bad"], alpha=0.75)
        ax.hist(1.0 - p, bins=edges, density=True, histtype="step", color="0.15", lw=1.0)
        ax.axhline(1.0, color="k", ls="--", lw=1.0)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(
            f"{label}: {row['verdict']}\nsymmetry p={row['symmetry_pvalue']:.2g}, "
            f"uniform p={row['uniformity_pvalue']:.2g}",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(labels) :]:
        ax.set_axis_off()
    left_out = len(table) - len(labels)
    fig.suptitle(
        f"VSBC: p = Pr_q(θ < θ*) over {num_datasets} simulated datasets ({result.fits[0].name})\n"
        f"a test fails below p={result.threshold:.2g} (Bonferroni)"
        + (f"; {left_out} parameters not shown" if left_out else ""),
        fontsize=9,
    )
    handles = [
        Patch(color=VERDICT_COLORS["good"], alpha=0.75),
        Patch(color=VERDICT_COLORS["bad"], alpha=0.75),
        Line2D([], [], color="0.15", lw=1.0),
        Line2D([], [], color="k", ls="--", lw=1.0),
    ]
    texts = [
        "p (calibrated)",
        "p (flagged)",
        "1 - p (differs from p: q biased)",
        "uniform (flat: calibrated)",
    ]
    fig.legend(handles, texts, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def _scalar_columns(result: VSBC) -> dict[str, np.ndarray]:
    """Scalar parameter label (as in the table) -> its p ``(num_datasets,)``."""
    out = {}
    for name, values in result.probabilities.items():
        flat = values.reshape(values.shape[0], -1)
        for j, index in enumerate(np.ndindex(values.shape[1:])):
            out[name + (f"[{','.join(map(str, index))}]" if index else "")] = flat[:, j]
    return out
