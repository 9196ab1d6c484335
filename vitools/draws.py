"""Containers of posterior draws, read in one place.

vitools takes posterior draws as a NumPyro ``MCMC`` that has run, an ArviZ ``DataTree`` with a
``posterior`` group, or a dict ``site -> array (S, *site shape)`` of constrained draws.
:func:`draws_dict` turns any of them into the dict, chains stacked (chain 0 first);
``ForwardKLFromDraws``, ``vt.compare``'s reference and the plots all read draws through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from numpyro.infer import MCMC

from vitools import validate

__all__ = ["draws_dict", "is_draws_container"]


def is_draws_container(obj: Any) -> bool:
    """Whether ``obj`` is an ``MCMC`` or a ``DataTree`` (a container :func:`draws_dict` unpacks)."""
    return isinstance(obj, (MCMC, xr.DataTree))


def draws_dict(obj: Any, what: str = "draws") -> dict[str, np.ndarray]:
    """Posterior draws as a dict ``site -> (S, *site shape)``, chains stacked.

    Args:
        obj: a NumPyro ``MCMC`` after ``run`` (its ``get_samples()``), a DataTree with a
            ``posterior`` group (every variable, ``chain x draw`` stacked), or a dict of draws.
        what: how messages name the draws.

    Raises:
        TypeError: ``obj`` is none of these.
        ValueError: an MCMC that has not run, a tree without ``posterior``, or dict entries that
            disagree on S or have no draw axis (:func:`vitools.validate.draws`).
    """
    if isinstance(obj, MCMC):
        if obj.last_state is None:
            raise ValueError(f"the MCMC has no {what}: call mcmc.run(key, *model_args) first")
        return {name: np.asarray(value) for name, value in obj.get_samples().items()}
    if isinstance(obj, xr.DataTree):
        if "posterior" not in obj.children:
            raise ValueError(f"the tree of {what} has no 'posterior' group (groups: {sorted(obj.children)})")
        posterior = obj["posterior"].to_dataset()
        out = {}
        for name, var in posterior.data_vars.items():
            site = str(var.attrs.get("vitools_site", name))
            stacked = var.stack(__sample__=("chain", "draw")).transpose("__sample__", ...)
            out[site] = np.asarray(stacked.values)
        return out
    if isinstance(obj, Mapping):
        validate.draws(obj, what=what)
        return dict(obj)
    raise TypeError(
        f"{what} must be a numpyro MCMC, an ArviZ DataTree with a posterior group or a dict of "
        f"constrained draws (site -> array (S, ...)), got {type(obj).__name__}"
    )
