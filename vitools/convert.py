r"""Fits, NumPyro MCMC runs and DataTrees → one ArviZ ``xarray.DataTree`` layout.

A vitools fit becomes a tree with

- ``posterior``: constrained draws, dims ``(chain=1, draw=S, *site dims)``; site dims take the names of
  the model's plates where NumPyro can tell them, else ``{site}_dim_{i}``;
- ``sample_stats``: ``log_p`` (unnormalized log joint), ``log_q`` and
  ``log_weight = log_p - log_q`` at the same draws, all in the constrained space so the Jacobians
  cancel and :math:`w = \tilde p(x, z) / q(z)` is the importance weight;
- ``optimization``: the per-step trace (``loss``, and ``ess``/``log_evidence`` where traced) over ``step``;
- root attrs: ``vitools_objective``, ``vitools_family``, ``num_steps``, ``num_grad_evals``,
  ``elapsed_s``, ``status`` (str/int/float only, so the tree round-trips through netCDF).

A NumPyro ``MCMC`` goes through ``az.from_numpyro`` and keeps its own ``(chain, draw)`` shape;
:func:`as_single_chain` flattens any tree to ``(chain=1, draw=S)`` when equal shapes are needed.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import arviz_base as azb  # not `arviz`: that also imports arviz-plots and matplotlib (~1.2 s)
import numpy as np
import numpyro.infer
import numpyro.infer.initialization
import xarray as xr
from numpyro.infer import MCMC

# arviz_base's from_numpyro reads the attribute numpyro.infer.initialization, which Python sets
# only when that submodule is imported after numpyro.infer's own import completed; make sure it is.
numpyro.infer.initialization = sys.modules["numpyro.infer.initialization"]

__all__ = ["FitLike", "as_single_chain", "fit_to_datatree", "flatten_draws", "to_datatree"]

SAMPLE_DIMS = ("chain", "draw")


@runtime_checkable
class FitLike(Protocol):
    """What conversion needs from a fit: draws with their log densities (see ``vitools.fit.Fit``)."""

    def sample_with_log_densities(self, num_draws: int, seed: int = 0) -> tuple[dict, Any, Any]: ...


def _label(obj: Any) -> str:
    """A short name for an objective or family: a string, its ``name`` attribute, or its class name."""
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else type(obj).__name__


def _check_num_draws(num_draws: Any) -> int:
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    return int(num_draws)


def _site_dims(fit: Any, draws: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Plate names of each site's leading axes, from ``arviz_base``'s NumPyro plate inference.

    Any site whose inferred names do not fit its shape keeps ArviZ's default ``{site}_dim_{i}``;
    a target without a model (a plain log density) has no plates.
    """
    target = getattr(fit, "target", None)
    model = getattr(target, "model", None)
    if model is None:
        return {}
    try:
        from arviz_base.io_numpyro import infer_dims

        args, kwargs = target._args
        inferred = infer_dims(model, args, kwargs)
    except Exception:  # plate names are cosmetic: never fail a conversion over them
        return {}
    return {
        name: list(dims)
        for name, dims in inferred.items()
        if name in draws and len(dims) <= np.ndim(draws[name]) - 1
    }


def fit_to_datatree(fit: FitLike, num_draws: int = 1000, seed: int = 0) -> xr.DataTree:
    r"""Draw from a fit and return its ArviZ DataTree (layout in the module docstring).

    Args:
        fit: a ``vitools.fit.Fit`` (anything with ``sample_with_log_densities``).
        num_draws: S, the number of draws from q.
        seed: seed of the draws (use different seeds for fits you overlay, or their draws correlate).

    Returns:
        The tree; ``tree.sample_stats.log_weight`` holds :math:`\log w_s = \log \tilde p - \log q`.

    Example:
        >>> tree = fit_to_datatree(vt.fit(model, num_steps=500), num_draws=2000)
        >>> tree.to_netcdf("fit.nc", engine="h5netcdf")
    """
    num_draws = _check_num_draws(num_draws)
    draws, log_p, log_q = fit.sample_with_log_densities(num_draws, seed=seed)
    draws = {k: np.asarray(v) for k, v in draws.items()}
    log_p, log_q = np.asarray(log_p), np.asarray(log_q)
    if log_p.shape != (num_draws,) or log_q.shape != (num_draws,):
        raise ValueError(
            f"sample_with_log_densities returned log_p {log_p.shape} and log_q {log_q.shape}; "
            f"expected ({num_draws},) each"
        )
    stats = {"log_p": log_p, "log_q": log_q, "log_weight": log_p - log_q}
    tree = azb.from_dict(
        {
            "posterior": {k: v[None] for k, v in draws.items()},
            "sample_stats": {k: v[None] for k, v in stats.items()},
        },
        dims=_site_dims(fit, draws),
    )
    tree["optimization"] = xr.DataTree(_optimization_dataset(fit))
    tree.attrs.update(_fit_attrs(fit, num_draws, seed))
    return tree


def _optimization_dataset(fit: Any) -> xr.Dataset:
    trace = dict(getattr(fit, "trace", None) or {})
    if "loss" not in trace and getattr(fit, "losses", None) is not None:
        trace["loss"] = fit.losses
    arrays = {k: np.asarray(v) for k, v in trace.items()}
    arrays = {k: v for k, v in arrays.items() if v.ndim == 1}  # per-step scalars only
    num_steps = max((v.shape[0] for v in arrays.values()), default=0)
    arrays = {k: v for k, v in arrays.items() if v.shape[0] == num_steps}
    dataset = xr.Dataset({k: ("step", v) for k, v in arrays.items()}, coords={"step": np.arange(num_steps)})
    per_step = getattr(getattr(fit, "objective", None), "num_draws", None)
    if isinstance(per_step, int):  # so ESS traces read as a fraction of each step's draws
        dataset.attrs["num_draws_per_step"] = per_step
    return dataset


def _fit_attrs(fit: Any, num_draws: int, seed: int) -> dict[str, str | int | float]:
    """Root attrs of a fit's tree: netCDF-serialisable scalars only (str, int, float)."""
    attrs: dict[str, str | int | float] = {
        "vitools_kind": "vi",
        "num_draws": num_draws,
        "draws_seed": int(seed),
    }
    for key, attr in (("vitools_objective", "objective"), ("vitools_family", "family")):
        if getattr(fit, attr, None) is not None:
            attrs[key] = _label(getattr(fit, attr))
    for key, attr, cast in (
        ("vitools_name", "name", str),
        ("num_steps", "num_steps", int),
        ("num_grad_evals", "num_grad_evals", int),
        ("elapsed_s", "elapsed", float),
        ("compile_time_s", "compile_time", float),
        ("status", "status", str),
        ("fit_seed", "seed", int),
    ):
        value = getattr(fit, attr, None)
        if value is not None:
            attrs[key] = cast(value)
    return attrs


def _mcmc_to_datatree(mcmc: MCMC) -> xr.DataTree:
    tree = azb.from_numpyro(mcmc)
    attrs: dict[str, str | int | float] = {
        "vitools_kind": "mcmc",
        "vitools_objective": "mcmc",
        "vitools_family": type(mcmc.sampler).__name__,
        "num_steps": int(mcmc.num_warmup + mcmc.num_samples),
        "num_chains": int(mcmc.num_chains),
    }
    stats = tree.children.get("sample_stats")
    if stats is not None and "n_steps" in stats.data_vars:  # recorded with extra_fields=("num_steps",)
        attrs["num_grad_evals"] = int(stats["n_steps"].sum())
    tree.attrs.update(attrs)
    return tree


def to_datatree(obj: Any, num_draws: int = 1000, seed: int = 0) -> xr.DataTree:
    """Any result vitools compares → an ArviZ DataTree.

    Args:
        obj: a vitools ``Fit`` (drawn with :func:`fit_to_datatree`), a NumPyro ``MCMC`` (through
            ``az.from_numpyro``; root attrs ``vitools_kind="mcmc"`` and the sampler's name added), or a
            DataTree (returned unchanged).
        num_draws: draws from q for a fit; ignored for MCMC and trees.
        seed: seed of those draws.

    Raises:
        TypeError: ``obj`` is none of these.
    """
    if isinstance(obj, xr.DataTree):
        return obj
    if isinstance(obj, MCMC):
        return _mcmc_to_datatree(obj)
    if isinstance(obj, FitLike):
        return fit_to_datatree(obj, num_draws=num_draws, seed=seed)
    raise TypeError(
        f"cannot convert {type(obj).__name__} to a DataTree: expected a vitools Fit, a NumPyro MCMC "
        "or an xarray.DataTree"
    )


def as_single_chain(tree: xr.DataTree, num_draws: int | None = None) -> xr.DataTree:
    """Stack ``chain × draw`` into ``(chain=1, draw=S)`` in every group that has both dims.

    Needed to overlay several trees in arviz-plots, which ``xr.concat``-s them: unequal chain/draw
    sizes are padded with NaN and intervals silently vanish. Draw order is kept (chain 0 first).

    Args:
        tree: any DataTree with ``chain`` and ``draw`` dims in its sample groups.
        num_draws: if given, keep this many draws at evenly spaced positions (thinning, which also
            suits autocorrelated MCMC draws), so that trees of different sizes become equal.

    Raises:
        ValueError: ``num_draws`` is not a positive integer or exceeds the draws in a group.
    """
    if num_draws is not None:
        num_draws = _check_num_draws(num_draws)
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
    ``L[0,1]``. Rows run over chain then draw.

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
        shape = da.shape[2:]
        values = np.asarray(da.values, dtype=float).reshape(-1, int(np.prod(shape)))
        columns.append(values)
        if not shape:
            labels.append(str(name))
        else:
            labels.extend(f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape))
    if not columns:
        return labels, np.zeros((ds.sizes.get("chain", 0) * ds.sizes.get("draw", 0), 0))
    return labels, np.concatenate(columns, axis=1)
