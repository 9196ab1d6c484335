"""Containers of posterior draws, read in one place.

vitools takes posterior draws as a NumPyro ``MCMC`` that has run, an ArviZ ``DataTree`` with a
``posterior`` group, a dict ``site -> array (S, *site shape)`` of constrained draws, or a model
zoo :class:`Reference` (its ``draws``, a dict; the class lives here, with the containers, so
the core never imports the zoo). :func:`as_container` checks
which one it is and gives it back in one of three forms (MCMC, DataTree, dict), so every reader
branches on those three only; :func:`draws_dict` turns any of them into the dict, chains stacked
(chain 0 first). ``ForwardKLFromDraws`` reads draws through :func:`draws_dict`;
:func:`vitools.convert.to_datatree`, ``vt.compare``'s reference and the plots through
:func:`as_container`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import arviz_base as azb
import numpy as np
import xarray as xr
from numpyro.infer import MCMC

from vitools import validate

__all__ = ["KINDS", "SITE_ATTR", "Reference", "as_container", "draws_dict", "is_draws", "is_draws_container"]

KINDS = (
    "a numpyro MCMC that has run, an ArviZ DataTree with a posterior group, a dict of constrained "
    "draws (site -> array (S, ...)) or a model zoo Reference"
)
SITE_ATTR = "vitools_site"  # a posterior variable's model site name, where the two differ


@dataclass(frozen=True)
class Reference:
    """Trusted posterior draws and moments of a zoo model.

    Attributes:
        draws: constrained draws of the latent sample sites, site → ``(S, *site shape)``.
        mean: posterior mean per site, ``site shape`` (exact for closed-form references, else from
            all NUTS draws).
        sd: posterior standard deviation per site, same convention as ``mean``.
        source: ``"closed form"`` or ``"NUTS: <chains> chains x <draws> draws, max R-hat ..., min ESS ..."``.

    Examples:
        >>> ref = get_model("funnel").reference()  # vitools.models.get_model
        >>> ref.source, ref.num_draws, ref.draws["x"].shape, ref.mean["x"].shape
        ('closed form', 4000, (4000, 9), (9,))
        >>> table = vt.compare({"VI": vt.fit(get_model("funnel").model, seed=0)}, reference=ref)
    """

    draws: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    source: str

    @property
    def num_draws(self) -> int:
        """Number of draws (the length of the leading axis)."""
        return int(next(iter(self.draws.values())).shape[0])


Container = MCMC | xr.DataTree | dict[str, Any]


def is_draws_container(obj: Any) -> bool:
    """Whether ``obj`` is an ``MCMC``, a ``DataTree`` or a zoo ``Reference``: a container object
    :func:`draws_dict` unpacks (a plain dict is not one; :func:`is_draws` counts it too)."""
    return isinstance(obj, (MCMC, xr.DataTree, Reference))


def is_draws(obj: Any) -> bool:
    """Whether :func:`as_container` takes ``obj``: a container object or a dict (unchecked)."""
    return is_draws_container(obj) or isinstance(obj, Mapping)


def as_container(obj: Any, what: str = "draws") -> Container:
    """``obj`` as one of three forms: an ``MCMC`` that has run, a ``DataTree`` (as given), or a
    checked dict ``site -> (S, ...)`` (a dict's entries, or a zoo ``Reference``'s ``draws``).

    Args:
        obj: any of the containers in the module docstring.
        what: how messages name the draws (``"reference draws"``).

    Raises:
        TypeError: ``obj`` is none of them.
        ValueError: an MCMC that has not run; dict entries that disagree on S or have no draw axis
            (:func:`vitools.validate.draws`).
    """
    if isinstance(obj, Reference):
        obj = obj.draws
    if isinstance(obj, MCMC):
        if obj.last_state is None:
            raise ValueError(f"the MCMC has no {what}: call mcmc.run(key, *model_args) first")
        return obj
    if isinstance(obj, xr.DataTree):
        return obj
    if isinstance(obj, Mapping):
        validate.draws(obj, what=what)
        return dict(obj)
    raise TypeError(f"{what} must be {KINDS}, got {type(obj).__name__}")


def draws_dict(obj: Any, what: str = "draws") -> dict[str, np.ndarray]:
    """Posterior draws as a dict ``site -> (S, *site shape)``, chains stacked.

    Args:
        obj: a NumPyro ``MCMC`` after ``run`` (its ``get_samples()``), a DataTree with a
            ``posterior`` group (every variable, ``chain x draw`` stacked, named by its model site),
            a dict of draws or a zoo ``Reference``.
        what: how messages name the draws.

    Raises:
        TypeError: ``obj`` is none of these.
        ValueError: as :func:`as_container`, or a tree without ``posterior``.
    """
    obj = as_container(obj, what)
    if isinstance(obj, MCMC):
        return {name: np.asarray(value) for name, value in obj.get_samples().items()}
    if isinstance(obj, xr.DataTree):
        if "posterior" not in obj.children:
            raise ValueError(f"the tree of {what} has no 'posterior' group (groups: {sorted(obj.children)})")
        stacked = azb.extract(obj, group="posterior", combined=True, keep_dataset=True)  # chain-major
        return {
            str(var.attrs.get(SITE_ATTR, name)): np.asarray(var.transpose("sample", ...).values)
            for name, var in stacked.data_vars.items()
        }
    return obj
