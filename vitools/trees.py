r"""Reading vitools' DataTrees: which sites a tree holds, its draws as a matrix, one chain.

Every tree vitools makes (:mod:`vitools.convert`) has ``(chain, draw)`` sample dims; a site named
like a sample dim is held under another variable name with the site's name in its
``vitools_site`` attr (:data:`vitools.draws.SITE_ATTR`), and trees of fits and MCMC runs list
the model's latent sites in the root attr ``vitools_latent_sites`` (JSON). These readers
undo both, so callers see the model's site names.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from vitools import validate
from vitools.draws import SITE_ATTR

__all__ = ["LATENT_ATTR", "SAMPLE_DIMS", "Sites", "as_single_chain", "flatten_draws", "site_shapes"]

SAMPLE_DIMS = ("chain", "draw")
LATENT_ATTR = "vitools_latent_sites"  # root attr: JSON list of the model's latent sites


class Sites(NamedTuple):
    """The sites a tree's posterior holds: ``variables`` maps each site (deterministic ones included)
    to the shape of one draw; ``latent`` does so for the model's latent sites, or is None where the
    tree does not say which they are (a tree made elsewhere)."""

    latent: dict[str, tuple[int, ...] | None] | None
    variables: dict[str, tuple[int, ...]]


def _site_name(name: Any, da: xr.DataArray) -> str:
    return str(da.attrs.get(SITE_ATTR, name))


def site_shapes(tree: xr.DataTree) -> Sites:
    """Site name → shape of one draw, for every posterior variable and (where the tree lists them)
    the model's latent sites; a latent site missing from the posterior maps to None.

    Raises:
        ValueError: the tree has no ``posterior`` group.
    """
    if "posterior" not in tree.children:
        raise ValueError(f"the tree has no 'posterior' group (groups: {sorted(tree.children)})")
    variables = {
        _site_name(name, da): tuple(da.sizes[d] for d in da.dims if d not in SAMPLE_DIMS)
        for name, da in tree["posterior"].data_vars.items()
    }
    latent = tree.attrs.get(LATENT_ATTR)
    if latent is None:
        return Sites(None, variables)
    return Sites({site: variables.get(site) for site in json.loads(latent)}, variables)


def as_single_chain(tree: xr.DataTree, num_draws: int | None = None) -> xr.DataTree:
    """Stack ``chain × draw`` into ``(chain=1, draw=S)`` in every group that has both dims.

    Needed to overlay several trees in arviz-plots, which ``xr.concat``-s them: unequal chain/draw
    sizes are padded with NaN and intervals silently vanish. Draw order is kept (chain 0 first).

    Args:
        tree: any DataTree with ``chain`` and ``draw`` dims in its sample groups.
        num_draws: if given, keep this many draws at evenly spaced positions (thinning, which also
            suits autocorrelated MCMC draws), so that trees of different sizes become equal.

    Returns:
        a copy of ``tree`` whose sample groups have ``chain`` of size 1 and ``draw`` of size
            chains x draws (or ``num_draws``); other groups unchanged.

    Raises:
        ValueError: ``num_draws`` is not a positive integer or exceeds the draws in a group.

    Examples:
        >>> tree = az.from_dict({"posterior": {"mu": np.zeros((4, 1000))}})  # 4 chains x 1000
        >>> vt.as_single_chain(tree, num_draws=2000).posterior.sizes
        Frozen(ChainMap({'chain': 1, 'draw': 2000}, {}))
    """
    if num_draws is not None:
        num_draws = validate.count(num_draws, "num_draws")
    out = tree.copy()
    for name, node in tree.children.items():
        ds = node.to_dataset()
        if not all(d in ds.dims for d in SAMPLE_DIMS):
            continue
        total = ds.sizes["chain"] * ds.sizes["draw"]
        ds = ds.stack(__sample__=SAMPLE_DIMS, create_index=False).drop_vars(list(SAMPLE_DIMS))
        ds = ds.rename({"__sample__": "draw"})
        if num_draws is not None:
            if num_draws > total:
                raise ValueError(f"group {name!r} has {total} draws; cannot keep num_draws={num_draws}")
            ds = ds.isel(draw=np.linspace(0, total - 1, num_draws).round().astype(int))
        ds = ds.assign_coords(draw=np.arange(ds.sizes["draw"])).expand_dims(chain=[0])
        out[name] = xr.DataTree(ds.transpose(*SAMPLE_DIMS, ...))
    return out


def flatten_draws(tree: xr.DataTree, group: str = "posterior") -> tuple[list[str], np.ndarray]:
    """All draws of a group as a ``(S, P)`` matrix of scalar parameters, with their labels.

    Every variable's non-sample axes are flattened in C order; labels read ``mu``, ``theta[3]``,
    ``L[0,1]``, with the model's site names (``chain``, not its variable ``chain_``). Rows run over
    chain then draw.

    Raises:
        ValueError: the tree has no such group, or a variable lacks the ``chain``/``draw`` dims.
    """
    if group not in tree.children:
        raise ValueError(f"the tree has no {group!r} group (groups: {sorted(tree.children)})")
    ds = tree[group].to_dataset()
    labels: list[str] = []
    columns: list[np.ndarray] = []
    for name, da in ds.data_vars.items():
        if not all(d in da.dims for d in SAMPLE_DIMS):
            raise ValueError(f"variable {name!r} lacks the sample dims {SAMPLE_DIMS}: dims {da.dims}")
        da = da.transpose(*SAMPLE_DIMS, ...)
        shape, site = da.shape[2:], _site_name(name, da)
        values = np.asarray(da.values, dtype=float).reshape(-1, int(np.prod(shape)))
        columns.append(values)
        if not shape:
            labels.append(site)
        else:
            labels.extend(f"{site}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape))
    if not columns:
        return labels, np.zeros((ds.sizes.get("chain", 0) * ds.sizes.get("draw", 0), 0))
    return labels, np.concatenate(columns, axis=1)
