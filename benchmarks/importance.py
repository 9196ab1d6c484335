r"""Importance-weighted draws of a fit and marginal W1 in reference units, as the benchmarks score them.

A fit's draws :math:`z_s \sim q` with log weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`
are Pareto-smoothed (:func:`vitools.importance.psis_khat`, the function behind ``vt.diagnose``);
k̂ says how far the smoothed weights can be trusted. The W1 of a scalar parameter is
:math:`W_1\big((z - m)/s, (z^{\rm ref} - m)/s\big)` with the reference's mean :math:`m` and sd
:math:`s`, the draws weighted or not: ``vt.compare``'s ``w1`` is the unweighted one averaged over
parameters, :func:`weighted_w1` the PSIS-weighted one (what k̂ vouches for).

The scripts run as ``python benchmarks/<script>.py``, so this module is importable as ``importance``
(and as ``benchmarks.importance`` from the repository root).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

from vitools.comparison import reference_draws
from vitools.importance import psis_khat


class ImportanceDraws(NamedTuple):
    """Draws of q in the model's (constrained) space with their densities and PSIS weights.

    ``log_p`` (unnormalized log joint) and ``log_q`` are ``(S,)``; ``weights`` are the smoothed
    importance weights scaled to a largest weight of 1, None where PSIS has no answer; ``khat`` is
    NaN where ``psis_khat`` refuses the log weights (NaN ones, as from a diverged fit or from draws
    where an ODE solve failed).
    """

    draws: dict[str, np.ndarray]
    log_p: np.ndarray
    log_q: np.ndarray
    weights: np.ndarray | None
    khat: float


def importance_draws(fit: Any, num_draws: int, seed: int = 1) -> ImportanceDraws:
    """``num_draws`` draws of ``fit``'s q (``fit.sample_with_log_densities``) and their PSIS weights."""
    draws, log_p, log_q = fit.sample_with_log_densities(num_draws, seed=seed)
    try:
        smoothed, khat = psis_khat(np.asarray(log_p - log_q, dtype=float))
    except ValueError:
        return ImportanceDraws(draws, log_p, log_q, None, math.nan)
    weights = np.exp(smoothed - smoothed.max())
    return ImportanceDraws(draws, log_p, log_q, weights if np.all(np.isfinite(weights)) else None, khat)


def standardized_w1(x: np.ndarray, y: np.ndarray, mean: float, sd: float, weights=None) -> float:
    """1-D W1 between draws ``x`` (weighted by ``weights`` where given, normalized or not) and
    reference draws ``y``, both standardized by the reference ``mean`` and ``sd``."""
    return float(scipy.stats.wasserstein_distance((x - mean) / sd, (y - mean) / sd, u_weights=weights))


def weighted_w1(draws: dict[str, np.ndarray], weights: np.ndarray | None, reference: dict) -> float:
    """Mean :func:`standardized_w1` of weighted draws over the scalar parameters they share with
    ``reference`` (mean and sd from the reference draws; a constant or non-finite one is skipped);
    NaN without weights."""
    if weights is None:
        return math.nan
    labels, values = reference_draws(draws)
    ref_labels, ref = reference_draws(reference)
    index = {label: j for j, label in enumerate(ref_labels)}
    w1s = []
    for i, label in enumerate(labels):
        if label not in index:
            continue
        y = ref[:, index[label]]
        mean, sd = y.mean(), y.std(ddof=1)
        x = values[:, i]
        if sd > 0 and np.isfinite(x).all():
            w1s.append(standardized_w1(x, y, mean, sd, weights))
    return float(np.mean(w1s)) if w1s else math.nan
