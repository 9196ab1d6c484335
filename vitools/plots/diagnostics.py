"""How far to trust each fit: PSIS k̂ bars against the threshold, and the loss and ESS traces.

Plain matplotlib: arviz-plots has no bar chart of one number per model, and the optimisation trace
is not an ArviZ sample group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vitools.convert import DIAGNOSTIC_DRAWS, optimization_dataset
from vitools.diagnostics import KHAT_Z, Diagnostics, verdict
from vitools.importance import khat_threshold
from vitools.plots.panels import limits
from vitools.result import Fit

__all__ = ["KHAT_FLOOR", "KHAT_LEGEND", "VERDICT_COLORS", "khat_reading", "plot_khat", "plot_traces"]

KHAT_FLOOR = -0.3  # bars of k̂ below this are drawn down to it, labelled with their value
VERDICT_COLORS = {"good": "#2e8b57", "uncertain": "#e69f00", "bad": "#c0392b"}
LEGEND_ROW = 170  # characters of legend text (8 pt, with each entry's handle) in a row of the 11-inch traces


Row = tuple[str, float, float, str, int]  # (name, k̂, its sd, the fit's verdict, S behind k̂)


def _khat_rows(source: Any, num_draws: int) -> tuple[list[Row], float, int]:
    """``([(name, k̂, its sd, verdict, S)], threshold, S)``."""
    if isinstance(source, Diagnostics):
        source = {"fit": source}
    if isinstance(source, pd.DataFrame):
        if "khat" not in source:
            raise ValueError("the table has no 'khat' column: pass a vitools.comparison.compare table")
        num_draws = int(source.attrs.get("num_draws", num_draws))
        verdicts = source["verdict"] if "verdict" in source else pd.Series("", index=source.index)
        errors = source["khat_se"] if "khat_se" in source else pd.Series(0.0, index=source.index)
        rows = [
            (str(name), float(k), float(se), str(v), num_draws)
            for name, k, se, v in zip(source.index, source["khat"], errors, verdicts, strict=True)
            if isinstance(v, str) and v  # MCMC rows have no q, hence no k̂ and no verdict
        ]
        return rows, khat_threshold(num_draws), num_draws
    if isinstance(source, Mapping) and all(isinstance(d, Diagnostics) for d in source.values()):
        rows = [(str(n), d.khat, d.khat_se, d.verdict, d.num_draws) for n, d in source.items()]
        sizes = {d.num_draws for d in source.values()}
        size = min(sizes) if sizes else num_draws
        return rows, min(d.khat_threshold for d in source.values()) if source else khat_threshold(size), size
    raise TypeError(
        "plot_khat takes a compare() table, a Diagnostics, or {name: Diagnostics}; "
        f"got {type(source).__name__}"
    )


def khat_reading(khat: float, khat_se: float, num_draws: int) -> str:
    """What k̂ alone says of q as a proposal: ``"good"`` (k̂ + 2 sd below the threshold),
    ``"uncertain"`` (k̂ ± 2 sd straddles it) or ``"bad"`` (k̂ − 2 sd above it, or k̂ undefined):
    :func:`vitools.diagnostics.verdict`'s label. A fit's verdict may be worse (a PSIS mean shift,
    missed mass, no convergence: the reasons under the table), never better."""
    return verdict(khat, num_draws, khat_se)[0]


KHAT_LEGEND = {  # k̂'s reading -> what its bar's colour says
    "good": f"k̂ + {KHAT_Z:g} sd below the threshold",
    "uncertain": f"k̂ ± {KHAT_Z:g} sd straddles it",
    "bad": f"k̂ − {KHAT_Z:g} sd above it",
}


def plot_khat(diagnostics_or_table: Any, num_draws: int = DIAGNOSTIC_DRAWS) -> Figure:
    """Pareto k̂ of each fit as a bar with k̂ ± 2 sd (its Monte Carlo uncertainty,
    :func:`vitools.importance.khat_se`; the interval the verdict reads, where a table lists
    k̂ ± 1 sd), against the threshold min(1 - 1/log10 S, 0.7).

    A bar's colour is what k̂ alone says (:func:`khat_reading`): green when k̂ + 2 sd is below the
    threshold, amber when k̂ ± 2 sd straddles it, red when k̂ − 2 sd is above it. A fit's verdict
    may be worse for other reasons (a PSIS mean shift, missed mass, no convergence), listed under
    the table: a k̂ of 0.43 is green even when its fit reads bad.

    Args:
        diagnostics_or_table: a :func:`vitools.comparison.compare` table (rows without a verdict, e.g.
            MCMC, are skipped), a :class:`~vitools.diagnostics.Diagnostics`, or ``{name: Diagnostics}``.
        num_draws: S behind a table's k̂ (compare's ``num_draws``; a table's ``attrs["num_draws"]``
            wins), which sets the threshold. Diagnostics carry their own.

    Returns:
        One bar per fit, labelled with k̂ (bars below ``KHAT_FLOOR``, including k̂ = -inf
            for a flat tail, stop there; an undefined k̂ is drawn hatched up to the threshold), a
            dashed line at the threshold, a dotted one at 0.5; a legend below says what the
            colours and the error bars are.

    Raises:
        ValueError: a table without a ``khat`` column, or no fit with a k̂ (MCMC rows have none).
        TypeError: ``diagnostics_or_table`` is none of the kinds above.

    Examples:
        >>> from vitools.plots import plot_khat
        >>> fig = plot_khat(vt.compare({"VI": fit, "NUTS": mcmc}))
        >>> [tick.get_text() for tick in fig.axes[0].get_xticklabels()]  # MCMC has no k̂
        ['VI']
        >>> fig = plot_khat({"VI": vt.diagnose(fit)})
    """
    rows, threshold, size = _khat_rows(diagnostics_or_table, num_draws)
    if not rows:
        raise ValueError("no fit with a k̂ to plot (MCMC rows have none)")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2.0), 3.8), layout="constrained")
    names = [r[0] for r in rows]
    # A negative k̂ (bounded weights) is as good as 0 for the reader: clip its bar at KHAT_FLOOR.
    heights = [threshold if math.isnan(k) else max(k, KHAT_FLOOR) for _, k, *_ in rows]
    readings = [khat_reading(k, se, s) for _, k, se, _, s in rows]
    bars = ax.bar(names, heights, color=[VERDICT_COLORS[r] for r in readings], width=0.6)
    spans = [KHAT_Z * se if math.isfinite(k) and math.isfinite(se) else 0.0 for _, k, se, *_ in rows]
    errors = ax.errorbar(names, heights, yerr=spans, fmt="none", ecolor="0.15", elinewidth=1.0, capsize=4)
    labels = []
    for bar, span, (_, k, *_) in zip(bars, spans, rows, strict=True):
        text = "−∞ (flat tail)" if k == -math.inf else ("undefined" if math.isnan(k) else f"{k:.2f}")
        if math.isnan(k):
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        x, y = bar.get_x() + bar.get_width() / 2, max(bar.get_height() + span, 0.0) + 0.02
        labels.append(ax.text(x, y, text, ha="center", va="bottom", fontsize=9))  # lifted off lines below
    limit = ax.axhline(threshold, color="k", ls="--", lw=1.2)
    half = ax.axhline(0.5, color="0.4", ls=":", lw=1.0)
    ax.axhline(0.0, color="0.2", lw=0.6)
    ax.set_ylim(KHAT_FLOOR - 0.05, max(1.0, *(h + e for h, e in zip(heights, spans, strict=True))) + 0.15)
    ax.set_ylabel(f"Pareto k̂ of log p − log q\n(bars: k̂ ± {KHAT_Z:g} Monte Carlo sd)")
    ax.set_title("PSIS k̂ per fit (lower is better)", fontsize=10)
    handles = [limit, half, errors] + [Patch(color=VERDICT_COLORS[r]) for r in KHAT_LEGEND]
    texts = [
        f"threshold {threshold:.2f} (S={size})",
        "0.5 (weights of finite variance below)",
        f"k̂ ± {KHAT_Z:g} Monte Carlo sd (the interval the verdict reads)",
        *KHAT_LEGEND.values(),
    ]
    title = "bar colour: what k̂ alone says (a fit's verdict may be worse for reasons under the table)"
    fig.legend(
        handles, texts, loc="outside lower center", ncols=2, fontsize=8, frameon=False, title=title,
        title_fontsize=8,
    )  # fmt: skip
    ax.tick_params(axis="x", labelrotation=15 if len(rows) > 3 else 0)
    _clear_of_lines(fig, ax, labels, sorted({threshold, 0.5}))
    return fig


def _clear_of_lines(fig: Figure, ax: Any, labels: list[Any], lines: list[float]) -> None:
    """Lift each k̂ label (bottom-anchored above its whisker) just above any of the horizontal
    ``lines`` (data y) that its box would cross, then make room for the labels at the top. Text
    sizes are only known after a layout, so the figure is laid out first, and again after a move
    (the y range may have grown); labels stay centred on their bars."""
    for _ in range(3):
        fig.draw_without_rendering()
        to_data = ax.transData.inverted()
        lo, hi = ax.get_ylim()
        gap = 0.015 * (hi - lo)
        moved, top = False, hi
        for label in labels:
            box = label.get_window_extent()
            (_, y0), (_, y1) = to_data.transform([[box.x0, box.y0], [box.x1, box.y1]])
            height, start = y1 - y0, y0
            for line in sorted(lines):  # lowest first: above one line, the next is checked from there
                if y0 - gap < line < y0 + height + gap:
                    y0 = line + gap
            if y0 != start:
                label.set_position((label.get_position()[0], y0))
                moved = True
            top = max(top, y0 + height + 2 * gap)
        if top > hi:
            ax.set_ylim(lo, top)
            moved = True
        if not moved:
            return


def _trace(obj: Any) -> tuple[dict[str, np.ndarray], int | None]:
    """A fit's per-step trace and its draws per step (None where unknown: the ESS stays absolute).

    Read from a tree's ``optimization`` group (and its ``num_draws_per_step`` attr); a Fit's group
    is made without drawing from it (:func:`vitools.convert.optimization_dataset`). Anything else
    (an MCMC run, a tree without the group) has no trace: ``({}, None)``.
    """
    if isinstance(obj, Fit):
        optimization = optimization_dataset(obj)
    elif isinstance(obj, xr.DataTree) and "optimization" in obj.children:
        optimization = obj["optimization"].to_dataset()
    else:
        return {}, None
    per_step = optimization.attrs.get("num_draws_per_step")
    trace = {k: np.asarray(v) for k, v in optimization.data_vars.items()}
    return trace, None if per_step is None else int(per_step)


def _smooth(values: np.ndarray) -> np.ndarray:
    width = max(1, len(values) // 50)
    kernel = np.ones(width) / width
    padded = np.concatenate([np.full(width - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_traces(fits: Mapping[str, Any]) -> Figure:
    """Loss (left) and importance ESS (right) per optimisation step of each fit.

    Each fit gets a faint raw line and a solid moving average (window: 2% of its steps). Losses of
    different objectives live on different scales (a negative ELBO, a cross-entropy), so each is
    drawn minus its own final value (the median over the last 10% of steps, given in the legend):
    every curve settles at 0 when its fit converged. The loss axis is fitted to the smoothed curves
    after the first 5% of steps, so an initial transient does not flatten the rest. The ESS of each
    step's draws is shown as a fraction of them when every fit says how many it drew (Fits do;
    trees may carry ``num_draws_per_step``), else as a count. Fits without a trace (MCMC) are skipped.
    One legend below both panels names the fits, with each final loss (and "no ESS trace" where a
    fit has none), so no text sits over the curves.

    Args:
        fits: ``{name: Fit | DataTree}`` (a tree's ``optimization`` group, with its
            ``num_draws_per_step`` attr); others (MCMC runs) are skipped.

    Returns:
        Two panels, the loss (nats, minus its final value) and the ESS per step (a
            fraction of the step's draws, or a count), against the step.

    Examples:
        >>> from vitools.plots import plot_traces
        >>> fit_f = vt.fit(model, x, y=y, objective="forward_kl", seed=0)
        >>> fig = plot_traces({"reverse KL": fit, "forward KL": fit_f})
        >>> [ax.get_xlabel() for ax in fig.axes]
        ['step', 'step']
    """
    fig, (ax_loss, ax_ess) = plt.subplots(1, 2, figsize=(11.0, 3.8), layout="constrained")
    traces = {name: _trace(obj) for name, obj in fits.items()}
    relative = all(n is not None for t, n in traces.values() if "ess" in t)
    tails, handles, names = [], [], []
    for i, (name, (trace, per_step)) in enumerate(traces.items()):
        notes, handle = [], None
        for ax, key in ((ax_loss, "loss"), (ax_ess, "ess")):
            values = trace.get(key)
            if values is None or not values.size:
                if key == "ess" and "loss" in trace:
                    notes.append("no ESS trace")
                continue
            if key == "ess" and relative:
                values = values / per_step
            steps = np.arange(1, values.size + 1)
            smooth = _smooth(values)
            if key == "loss":
                final = float(
                    np.median(values[-max(1, values.size // 10) :])
                )  # robust to the last steps' noise
                notes.insert(0, f"final loss {final:.4g}")
                values, smooth = values - final, smooth - final
                tails.append(smooth[values.size // 20 :])
            ax.plot(steps, values, color=f"C{i}", alpha=0.25, lw=0.8)
            (line,) = ax.plot(steps, smooth, color=f"C{i}", lw=1.6)
            if handle is None:  # the fit's loss, else its ESS, stands for it in the legend
                handle = line
        if handle is not None:
            handles.append(handle)
            names.append(f"{name} ({'; '.join(notes)})" if notes else name)
    if tails:
        lo, hi = limits([t[np.isfinite(t)] for t in tails] + [np.zeros(1)], 0.0, 1.0)
        ax_loss.set_ylim(lo, hi + 0.1 * (hi - lo))
        ax_loss.axhline(0.0, color="0.3", lw=0.6)
    else:
        ax_loss.text(0.5, 0.5, "no optimisation trace", ha="center", va="center", transform=ax_loss.transAxes)
    if handles:  # outside the axes: it cannot cover a curve
        rows = math.ceil(sum(len(name) + 6 for name in names) / LEGEND_ROW)  # balanced rows, none too wide
        ncols = math.ceil(len(names) / rows)
        fig.legend(handles, names, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    if ax_ess.lines:
        ax_ess.set_ylim(0, 1.05 if relative else None)
    ylabel = "ESS / draws of the step" if relative else "importance ESS of the step's draws"
    ax_loss.set(xlabel="step", ylabel="loss − final loss", title="loss per step, relative to its final value")
    ax_ess.set(xlabel="step", ylabel=ylabel, title="importance ESS per step (1 = equal weights on q's draws)")
    for ax in (ax_loss, ax_ess):
        ax.title.set_fontsize(10)
    return fig
