r"""Scores of draws against a corpus posterior's reference, as the corpus README defines them.

Per scalar parameter p with reference mean :math:`m_p` and sd :math:`s_p` (over all 10,000
reference draws, ``reference_summary.json``): ``mean_error`` :math:`|\hat m_p - m_p| / s_p`,
``sd_ratio`` :math:`\hat s_p / s_p` and ``w1``, the 1-D Wasserstein-1 distance between the draws
and the 1000 stored reference draws divided by :math:`s_p`. Exact draws score a mean w1 of about
0.04-0.06 (the noise floor of 1000 reference draws).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from benchmarks.importance import standardized_w1
from vitools.comparison import reference_draws

from . import CORPUS_DIR


def reference_summary(name: str) -> dict[str, tuple[float, float]]:
    """``label -> (mean, sd)`` of every scalar parameter (``beta[0]``: 0-based) of one posterior."""
    summary = json.loads((CORPUS_DIR / name / "reference_summary.json").read_text())
    return {label: (v["mean"], v["sd"]) for label, v in summary.items()}


def score(draws: dict, reference: dict, summary: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One row per scalar parameter of ``summary``: ``mean_error``, ``sd_ratio``, ``w1``.

    Args:
        draws: ``name -> (S, *shape)`` draws to score (extra sites are ignored).
        reference: the stored reference draws, ``name -> (1000, *shape)``.
        summary: from :func:`reference_summary`.
    """
    labels, x = reference_draws({k: v for k, v in draws.items() if k in reference})
    ref_labels, y = reference_draws(reference)
    column, ref_column = dict(zip(labels, x.T, strict=True)), dict(zip(ref_labels, y.T, strict=True))
    rows = {}
    for label, (mean, sd) in summary.items():
        if label not in column:
            rows[label] = dict.fromkeys(("mean_error", "sd_ratio", "w1"), math.nan)
            continue
        values = column[label]
        rows[label] = {
            "mean_error": abs(values.mean() - mean) / sd,
            "sd_ratio": values.std(ddof=1) / sd,
            "w1": standardized_w1(values, ref_column[label], mean, sd),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def headline(table: pd.DataFrame) -> dict[str, float]:
    """Mean w1, max mean error and the sd ratio's range over the parameters of one score table."""
    return {
        "w1": float(table["w1"].mean()),
        "max_mean_error": float(table["mean_error"].max()),
        "min_sd_ratio": float(table["sd_ratio"].min()),
        "max_sd_ratio": float(table["sd_ratio"].max()),
    }
