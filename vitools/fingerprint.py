"""The layout of a model's sites, as JSON: what a saved fit's parameters mean.

:func:`fingerprint` describes a target's latent and ``numpyro.param`` sites (names, shapes,
supports, transforms); :func:`differences` says, site by site, how two fingerprints differ, so
that :func:`vitools.persist.load` can refuse a model whose sites are not those of the file.
Priors and data are not part of it: a fit loads with any model of the same site layout.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from vitools.arguments import join_data, trace_once
from vitools.model import ModelDensity
from vitools.targets import Target

__all__ = ["differences", "fingerprint"]


def fingerprint(target: Target) -> dict[str, Any]:
    """The layout of a target's sites, as JSON: what a fit's parameters mean.

    Returns:
        ``{"dim", "latent_sites", "param_sites"}``: per latent site (in model order, the order of
        the flat vector) its ``name``, ``shape`` (in the model), ``unconstrained_shape``,
        ``support`` (the constraint's class and constant bounds, ``?`` for bounds that depend
        on other sites or traced data) and ``transform`` (NumPyro's ``biject_to``); per
        ``numpyro.param`` site its ``name``, unconstrained ``shape`` and ``constraint``.
    """
    shapes = target.constrained_shapes()
    supports = _supports(target.density)
    latent = [
        {
            "name": site.name,
            "shape": list(shapes[site.name]),
            "unconstrained_shape": list(site.shape),
            "support": supports[site.name][0],
            "transform": supports[site.name][1],
        }
        for site in target.sites
    ]
    params = [
        {
            "name": name,
            "shape": list(np.shape(target.model_params[name])),
            "constraint": _describe(constraint.value),
        }
        for name, constraint in target.param_sites
    ]
    return {"dim": target.dim, "latent_sites": latent, "param_sites": params}


def _supports(density: Any) -> dict[str, tuple[str, str]]:
    """Site name → (support, transform) of each latent site, from one abstract trace of the
    model (nothing is compiled or run: as ``vitools.arguments``' own trace)."""
    if not isinstance(density, ModelDensity):  # a plain log density over R^dim
        return {site.name: ("Real", "IdentityTransform") for site in density.sites}
    captured: dict[str, tuple[str, str]] = {}

    def run(data):
        args, kwargs = join_data(data, density.static_data)
        for name, site in trace_once(density.model, args, kwargs, 0).items():
            if site["type"] == "sample" and not site["is_observed"]:
                support = site["fn"].support
                try:
                    transform = type(biject_to(support)).__name__
                except NotImplementedError:
                    transform = "?"
                captured[name] = (_describe(support), transform)
        return ()

    jax.eval_shape(run, density.data)
    return captured


def _describe(constraint: constraints.Constraint) -> str:
    """A constraint as text: its class and its constant bounds (``Interval(0, 1)``); bounds that
    are arrays or traced values (other sites, traced data) read ``?``."""
    name = type(constraint).__name__.lstrip("_")
    if isinstance(constraint, constraints.independent):
        base = _describe(constraint.base_constraint)
        return f"{name}({base}, {constraint.reinterpreted_batch_ndims})"
    bounds = []
    for attribute in ("lower_bound", "upper_bound"):
        if hasattr(constraint, attribute):
            value = getattr(constraint, attribute)
            concrete = not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0
            bounds.append(f"{float(value):.6g}" if concrete else "?")
    return f"{name}({', '.join(bounds)})"


def differences(saved: dict, current: dict) -> list[str]:
    """What differs between the file's fingerprint and the model's, one phrase per finding."""
    found = []
    for kind, label, keys in (
        ("latent_sites", "site", ("shape", "unconstrained_shape", "support", "transform")),
        ("param_sites", "param site", ("shape", "constraint")),
    ):
        before = {s["name"]: s for s in saved[kind]}
        after = {s["name"]: s for s in current[kind]}
        mine = []
        mine += [f"{label} {n!r} is in the file but not in the model" for n in before if n not in after]
        mine += [f"{label} {n!r} is in the model but not in the file" for n in after if n not in before]
        for name in (n for n in before if n in after):
            for key in keys:
                old, new = before[name][key], after[name][key]
                if key == "unconstrained_shape" and before[name]["shape"] != after[name]["shape"]:
                    continue  # follows from the shape, already named
                if old != new:
                    old, new = (tuple(v) if isinstance(v, list) else v for v in (old, new))
                    mine.append(f"{label} {name!r}: {key} {old} in the file, {new} in the model")
        if not mine and list(before) != list(after):  # same sites, another flat layout
            mine.append(
                f"the {label}s come in another order: {list(before)} in the file, {list(after)} in the model"
            )
        found += mine
    if not found and saved["dim"] != current["dim"]:
        found.append(f"dimension {saved['dim']} in the file, {current['dim']} in the model")
    return found
