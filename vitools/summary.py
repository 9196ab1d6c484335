"""A per-parameter summary that reads right for both a VI fit and an MCMC run.

``az.summary`` of a fit's tree is misleading: q's draws are independent, so its ESS reads about
the number of draws and R-hat is NaN, which looks like a perfect MCMC run although neither says
anything about how close q is to the posterior. :func:`summary` gives an MCMC run ArviZ's full
summary, and a fit q's own moments and interval next to the PSIS-reweighted mean and sd (what the
importance weights say p's are) and the fit's k̂, which says whether those reweighted numbers can be
trusted; the MCMC-only columns are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from vitools.convert import DIAGNOSTIC_DRAWS, DRAWS_NOTE, to_datatree
from vitools.diagnostics import has_log_weights
from vitools.importance import khat_threshold, psis_khat, psis_shift
from vitools.trees import flatten_draws

__all__ = ["summary"]


def summary(
    obj: Any,
    var_names: Sequence[str] | None = None,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    ci_prob: float = 0.89,
) -> pd.DataFrame:
    """Per-parameter summary of a fit or an MCMC run, one row per scalar parameter.

    Args:
        obj: a vitools ``Fit`` (drawn with :func:`vitools.convert.to_datatree`, ``num_draws`` draws
            with ``seed``), its tree, an MCMC run or its tree, or any container of draws.
        var_names: sites to keep (default: all).
        num_draws: draws from q for a fit (S); ignored for the others.
        seed: seed of those draws (the same draws as ``vt.diagnose(fit)`` by default).
        ci_prob: the equal-tailed interval's probability (ArviZ's default, 0.89).

    Returns:
        One row per scalar parameter (``"beta"``, ``"theta[3]"``), in the
            parameter's own (constrained) units. For an MCMC run (no importance weights):
            ``az.summary`` (mean, sd, interval, ESS, R-hat, MCSE). For a fit: ``mean``, ``sd``,
            the interval (``eti*_lb``/``eti*_ub``) of q's draws, ``psis_mean`` and ``psis_sd``
            (PSIS-reweighted, Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed
            importance sampling", JMLR), and ``khat`` (one value, the fit's, repeated: above
            ``attrs["khat_threshold"]`` the PSIS columns cannot be trusted); ``attrs["note"]``
            says why there is no ESS or R-hat.

    Raises:
        KeyError: a name in ``var_names`` is not a site of the draws.
        TypeError: as :func:`vitools.convert.to_datatree` (an object it cannot read).
        ValueError: as :func:`vitools.convert.to_datatree` (an MCMC that has not run, draws of
            the wrong shapes).

    Examples:
        >>> table = vt.summary(fit, var_names=["alpha", "beta"])
        >>> table.index.tolist(), table.columns.tolist()[:2]
        (['alpha', 'beta'], ['mean', 'sd'])
    """
    import arviz as az  # arviz imports arviz-plots and matplotlib: on use only

    tree = to_datatree(obj, num_draws=num_draws, seed=seed)
    names = None if var_names is None else list(var_names)
    if names is not None:
        missing = [name for name in names if name not in tree["posterior"].data_vars]
        if missing:
            raise KeyError(f"var_names {missing} not in the draws: {list(tree['posterior'].data_vars)}")
    if not has_log_weights(tree):
        return az.summary(tree, var_names=names, ci_prob=ci_prob)
    table = az.summary(tree, var_names=names, kind="stats", ci_prob=ci_prob, round_to="none")
    posterior = tree["posterior"].to_dataset()
    kept = posterior if names is None else posterior[names]
    _, values = flatten_draws(_tree_of(kept))  # the rows of az.summary, in its order
    log_weights = np.asarray(tree["sample_stats"]["log_weight"].values).ravel()
    smoothed, khat = psis_khat(log_weights)
    shift = psis_shift(values, smoothed)
    table["psis_mean"], table["psis_sd"], table["khat"] = shift["psis_mean"], shift["psis_sd"], khat
    table.attrs["khat_threshold"] = khat_threshold(log_weights.size)
    table.attrs["note"] = DRAWS_NOTE
    return table


def _tree_of(dataset: Any) -> Any:
    import xarray as xr

    return xr.DataTree.from_dict({"posterior": dataset})
