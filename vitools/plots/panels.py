"""What a panel of :mod:`vitools.plots` shows: the draws of every fit and the reference, each
Gaussian fit's exact density, which parameters (``var_names``), and each axis (log or linear, and
its range).

Every plot converts its fits once (:func:`read`), then asks here for each parameter's axis
(:func:`axis`) and for densities in the plotted coordinates: x, or log x on a log axis, where a
density is of log x (:func:`kde`, :func:`kde2d`, :class:`vitools.plots.exact.GaussianDensity`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from vitools.comparison import reference_draws
from vitools.convert import to_datatrees
from vitools.plots.exact import Coordinate, GaussianDensity, coordinates
from vitools.result import Fit
from vitools.trees import flatten_draws, site_shapes

__all__ = [
    "LOG_SPREAD",
    "RIGHT_SKEW",
    "Axis",
    "PlotData",
    "axis",
    "column",
    "describe",
    "every_label",
    "kde",
    "kde2d",
    "label_log_axis",
    "limits",
    "read",
    "select",
]

Labelled = tuple[list[str], np.ndarray]  # scalar parameter labels and a (S, P) draw matrix
# A positive parameter gets a log axis when its draws spread over more than LOG_SPREAD (the
# 0.1%-99.9% range over every fit and the reference) or when they are clearly right-skewed
# (RIGHT_SKEW below). A linear axis from L to U = R L gives the lower half of the range in ratio,
# L to sqrt(R) L, a share 1 / (sqrt(R) + 1) of its width: a third at R = 4, a quarter at R = 10,
# a fifth at R = 20. That lower tail is where fits of a scale differ (reverse-KL fits miss the
# small values of eight schools' tau); at R = 15 (a group sd such as sigma_a, 0.1 to 1.5) a linear
# axis gave it a fifth of the width and the upper half 80%, so the old factor of 20 was too lax.
# A factor of 10 also guarantees a labelled tick: a range of one decade or more always holds a
# power of ten (and :func:`label_log_axis` labels 2 and 5 between them below two decades).
# The same rule holds for a Fit and for its tree.
LOG_SPREAD = 10.0
# Right skew by Kelly's quantile skewness, K = (q90 + q10 - 2 q50) / (q90 - q10), robust to the
# extreme draws that move a moment skewness (its sd is ~0.01 at 10,000 draws). K > 0.2 means the
# median is at least 1.5 times further from q90 than from q10: a lognormal of sigma > 0.32 or a
# gamma of shape < 4.8. A log axis only helps where log x is more symmetric, so it also needs
# |K(log x)| < K(x) / 2: 1.5 + Gamma(2) (K 0.32, of its log 0.09; spread 7) gets one, 5 + Exp(1)
# (K 0.48, of its log 0.41: a log barely bends a range of a factor 2.4) does not. A symmetric
# parameter far from 0 (K near 0) keeps its linear axis.
RIGHT_SKEW = 0.2
TAILS = (0.001, 0.999)  # axis ranges: the 0.1%-99.9% range over every fit and the reference


class PlotData(NamedTuple):
    """What a plot reads, converted once.

    Attributes:
        draws: fit name → its labels and ``(S, P)`` draws (the reference's key, if it was one, left out).
        reference: the reference's labels and draws, or None.
        latent: the model's latent sites, as the trees list them (may be empty).
        exact: fit name → q's exact density, for the Gaussian fits among the Fits given.
        coordinates: fit name → label → :class:`~vitools.plots.exact.Coordinate`, for every Fit
            given (its target says which supports are positive).
    """

    draws: dict[str, Labelled]
    reference: Labelled | None
    latent: list[str]
    exact: dict[str, GaussianDensity]
    coordinates: dict[str, dict[str, Coordinate]]


def _reference(reference: Any, draws: dict[str, Labelled]) -> Labelled | None:
    """Reference draws from a key of ``fits`` (popped from ``draws``) or a container of draws."""
    if reference is None:
        return None
    if isinstance(reference, str):
        if reference not in draws:
            raise KeyError(f"reference {reference!r} is not one of the fits: {list(draws)}")
        return draws.pop(reference)
    return reference_draws(reference)


def _latent_sites(trees: Mapping[str, Any]) -> list[str]:
    """The model's latent sites, as the trees list them (root attr ``vitools_latent_sites``): a
    vitools fit's tree first (model order; an MCMC tree lists them in NumPyro's order); none when
    no tree lists them (a tree made elsewhere, a dict of draws)."""
    ordered = sorted(trees.values(), key=lambda tree: tree.attrs.get("vitools_kind") != "vi")
    for tree in ordered:
        latent = site_shapes(tree).latent
        if latent:
            return list(latent)
    return []


def _exact_fits(fits: Mapping[str, Any], exact: Mapping[str, Any] | None, trees: Mapping[str, Any]) -> dict:
    """The Fits behind the entries of ``fits``: its own Fit entries, and ``exact``'s Fits (whose
    names must be entries of ``fits``, drawn from the same fit where the tree says so)."""
    found = {name: obj for name, obj in fits.items() if isinstance(obj, Fit)}
    if exact is None:
        return found
    if not isinstance(exact, Mapping):
        raise TypeError(f"exact must be a dict {{name: Fit}}, got {type(exact).__name__}")
    for name, fit in exact.items():
        if not isinstance(fit, Fit):
            continue  # an MCMC run or a tree beside the Fits: nothing exact to read
        if name not in trees:
            raise ValueError(f"exact[{name!r}] names no entry of fits: {list(trees)}")
        attrs = trees[name].attrs
        drawn = (attrs.get("vitools_objective"), attrs.get("vitools_family"))
        if drawn != (None, None) and drawn != (fit.objective_name, fit.family.name):
            raise ValueError(
                f"exact[{name!r}] is a {fit.name} fit, but fits[{name!r}] was drawn from a "
                f"{drawn[0]}/{drawn[1]} fit"
            )
        found[name] = fit
    return found


def read(
    fits: Mapping[str, Any], reference: Any, exact: Mapping[str, Any] | None, num_draws: int, seed: int
) -> PlotData:
    """Convert the fits once (:func:`vitools.convert.to_datatrees`) and read what the plots need.

    Raises:
        KeyError: ``reference`` is a string that names no fit.
        ValueError, TypeError: as :func:`vitools.convert.to_datatrees`; an ``exact`` entry that is
            not a fit of ``fits``.
    """
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    fits_behind = _exact_fits(fits, exact, trees)
    draws = {name: flatten_draws(tree) for name, tree in trees.items()}
    ref = _reference(reference, draws)
    coords, gaussians = {}, {}
    for name, fit in fits_behind.items():
        if name not in draws:  # the reference's own key: shaded from its draws
            continue
        coords[name] = coordinates(fit.target)
        gaussian = GaussianDensity.from_fit(fit, coords[name])
        if gaussian is not None:
            gaussians[name] = gaussian
    return PlotData(draws, ref, _latent_sites(trees), gaussians, coords)


def describe(labels: Sequence[str]) -> str:
    """``mu, tau, theta[0]..theta[7]``: the labels, one entry per site."""
    sites: dict[str, list[str]] = {}
    for label in labels:
        sites.setdefault(label.split("[")[0], []).append(label)
    return ", ".join(ls[0] if len(ls) == 1 else f"{ls[0]}..{ls[-1]}" for ls in sites.values())


def every_label(data: PlotData) -> list[str]:
    """Every scalar label of the fits: latent sites first (model order), then the rest in
    first-seen order."""
    labels = list(dict.fromkeys(label for names, _ in data.draws.values() for label in names))
    rank = {site: i for i, site in enumerate(data.latent)}
    labels.sort(key=lambda label: rank.get(label.split("[")[0], len(rank)))  # stable: keeps the rest
    return labels


def select(data: PlotData, var_names: str | Sequence[str] | None) -> list[str]:
    """Scalar labels to show, in the order of :func:`every_label`.

    Without ``var_names``, only those the reference has (when it shares any): a fit's
    deterministic sites are left out when the reference lacks them. ``var_names`` (site names, all
    their elements, or labels such as ``"theta[3]"``) picks any of the fits' parameters.

    Raises:
        ValueError: a var_name matches no parameter (the message lists the available ones).
    """
    labels = every_label(data)
    if var_names is None:
        ref = data.reference
        if ref is not None and set(ref[0]) & set(labels):
            labels = [label for label in labels if label in set(ref[0])]
        return labels
    wanted = [var_names] if isinstance(var_names, str) else list(var_names)

    def matches(label: str, name: str) -> bool:
        return label == name or label.startswith(f"{name}[")

    unknown = [name for name in wanted if not any(matches(label, name) for label in labels)]
    if unknown or not wanted:
        raise ValueError(
            f"var_names {unknown or wanted} match no parameter; the fits have {describe(labels)}"
        )
    return [label for label in labels if any(matches(label, name) for name in wanted)]


def column(labelled: Labelled | None, label: str) -> np.ndarray | None:
    """One parameter's finite draws, or None where ``labelled`` lacks it."""
    if labelled is None or label not in labelled[0]:
        return None
    values = labelled[1][:, labelled[0].index(label)]
    return values[np.isfinite(values)]


def limits(
    columns: list[np.ndarray], lower: float = TAILS[0], upper: float = TAILS[1]
) -> tuple[float, float]:
    """A padded axis range from each sample's ``lower`` to its ``upper`` quantile, over all of them:
    the tails of every sample show (the 0.1% and 99.9% quantiles by default), and one sample's
    extreme draws cannot flatten the rest."""
    lows = [np.quantile(c, lower) for c in columns if c.size]
    highs = [np.quantile(c, upper) for c in columns if c.size]
    lo, hi = min(lows), max(highs)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


class Axis(NamedTuple):
    """One parameter's axis: log or linear, and its range (in the parameter's own units)."""

    log: bool
    lo: float
    hi: float


def _positive_support(data: PlotData, label: str) -> bool | None:
    """Whether the Fits' targets say the support is positive (None: no Fit knows the label)."""
    known = [coords[label].positive for coords in data.coordinates.values() if label in coords]
    return all(known) if known else None


def axis(data: PlotData, label: str, log_axes: str | Sequence[str] = "auto") -> Axis:
    """The axis of ``label``: log where ``log_axes`` says (``"auto"``: where the parameter is
    positive, as a Fit's target knows or as every fit's and the reference's draws show, and
    spreads over more than :data:`LOG_SPREAD` or is clearly right-skewed in some fit or the
    reference (:data:`RIGHT_SKEW`)), with the range of :func:`limits` over every fit and the
    reference (taken in log x on a log axis).

    Raises:
        ValueError: ``log_axes`` names the label but some draws are not positive.
    """
    samples = [*data.draws.values(), data.reference]
    columns = [c for c in (column(s, label) for s in samples) if c is not None and c.size]
    if not columns:
        raise ValueError(f"no finite draws of {label}")
    all_positive = all(c.min() > 0 for c in columns)
    if log_axes == "auto":
        support = _positive_support(data, label)
        log = bool(support) or (support is None and all_positive)
        if log:
            positive = [c[c > 0] for c in columns]
            log = all(c.size for c in positive) and (
                _spread(positive) > LOG_SPREAD or any(_right_skewed(c) for c in positive)
            )
    else:
        named = [log_axes] if isinstance(log_axes, str) else list(log_axes)
        log = any(label == n or label.startswith(f"{n}[") for n in named)
        if log and not all_positive:
            raise ValueError(f"log_axes names {label}, but some of its draws are not positive")
    if not log:
        return Axis(False, *limits(columns))
    lo, hi = limits([np.log(c[c > 0]) for c in columns])
    return Axis(True, math.exp(lo), math.exp(hi))


def _spread(columns: list[np.ndarray]) -> float:
    """The ratio of the highest upper tail quantile to the lowest lower one (positive draws)."""
    lo = min(np.quantile(c, TAILS[0]) for c in columns)
    hi = max(np.quantile(c, TAILS[1]) for c in columns)
    return float(hi / lo)


def _kelly(values: np.ndarray) -> float:
    """Kelly's quantile skewness (q90 + q10 - 2 q50) / (q90 - q10); 0 for constant draws."""
    low, mid, high = np.quantile(values, (0.1, 0.5, 0.9))
    return float((high + low - 2 * mid) / (high - low)) if high > low else 0.0


def _right_skewed(values: np.ndarray) -> bool:
    """Positive draws clearly skewed to the right (:data:`RIGHT_SKEW`) that a log makes more symmetric."""
    skew = _kelly(values)
    return skew > RIGHT_SKEW and abs(_kelly(np.log(values))) < skew / 2


def label_log_axis(axis: Any, scale: Axis) -> None:
    """Plain-number ticks on a log axis (``axis``: ``ax.xaxis`` or ``ax.yaxis``) that spans under
    two decades, at 1, 2 and 5 times powers of ten (0.2, 0.5, 1, 2): matplotlib labels only the
    powers themselves, one or two of them on such a range. Wider ranges keep its 10^k labels."""
    if not scale.log or scale.hi / scale.lo >= 100:
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def kde(values: np.ndarray, log: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """arviz-stats' 1-D KDE (bandwidth 'experimental', boundary-corrected) of x, or of log x on a
    log axis (returned at x, a density of log x); None for constant draws."""
    if log:
        values = np.log(values[values > 0])
    if values.size < 2 or np.ptp(values) == 0:
        return None
    from arviz_stats.base import array_stats  # ~1.4 s import: only when plotting

    grid, pdf, _ = array_stats.kde(values)
    grid = np.asarray(grid)
    return (np.exp(grid) if log else grid), np.asarray(pdf)


def kde2d(
    x: np.ndarray, y: np.ndarray, logs: tuple[bool, bool], probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x grid, y grid, density [j, i], levels)``: arviz-stats' 2-D KDE in the plotted
    coordinates (log x on a log axis) and its HDR levels of probability ``probs``."""
    from arviz_stats.base import array_stats

    keep = np.ones(x.size, bool)
    for values, log in zip((x, y), logs, strict=True):
        if log:
            keep &= values > 0
    plotted = [np.log(v[keep]) if log else v[keep] for v, log in zip((x, y), logs, strict=True)]
    density, gx, gy, levels = array_stats.kde2d(*plotted, hdi_probs=np.asarray(probs))
    gx, gy = (np.exp(g) if log else np.asarray(g) for g, log in zip((gx, gy), logs, strict=True))
    return gx, gy, np.asarray(density).T, np.asarray(levels)
