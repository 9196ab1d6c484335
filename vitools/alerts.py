"""Warnings ``vt.fit`` gives about a target or a finished fit, each with what to do."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from vitools.families.base import Family
from vitools.improper import WIDEN, flat_sites
from vitools.targets import Target

if TYPE_CHECKING:
    from vitools.fit import Fit

__all__ = ["LARGE_DIM", "LARGE_PARAMS", "warn_improper", "warn_large", "warn_low_ess"]


def warn_low_ess(result: Fit) -> None:
    """Forward KL by SNIS is only as good as its weights: say so when the ESS collapsed."""
    if result.objective.name != "forward_kl" or "ess" not in result.trace or result.num_steps == 0:
        return
    tail = result.trace["ess"][-max(1, len(result.trace["ess"]) // 10) :]
    fraction = float(np.nanmean(tail)) / result.objective.num_draws
    if fraction < 0.05:
        warnings.warn(
            f"forward KL's importance ESS averaged {fraction:.1%} of the draws over the last "
            "10% of steps: the weights collapsed, so the gradient rests on a few draws; raise "
            "num_draws or start from a wider init",
            RuntimeWarning,
            stacklevel=3,
        )


LARGE_DIM = 1000  # the Laplace init's d x d Hessians and a full-rank q's d² parameters grow heavy
LARGE_PARAMS = 500_000


def warn_large(target: Target, family: Family, init: Any) -> None:
    """Warn, before the long part starts, when q or its Laplace init will be slow at this size."""
    dim = target.dim
    ones = jax.ShapeDtypeStruct((dim,), target.init_flat.dtype)
    shapes = jax.eval_shape(family.init, target, ones, jax.ShapeDtypeStruct((dim, dim), ones.dtype))
    num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    laplace = isinstance(init, str) and init == "laplace" and dim >= LARGE_DIM
    if num_params < LARGE_PARAMS and not laplace:
        return
    costs = [f"q ({family.name}) has {num_params:,} parameters"]
    if laplace:
        costs.append(f"the Laplace init computes up to 9 Hessians of {dim} x {dim}")
    warnings.warn(
        f"{dim} latent dimensions: {' and '.join(costs)}, so this may take minutes; consider "
        "family='meanfield' or 'lowrank' and init='median'",
        RuntimeWarning,
        stacklevel=3,
    )


def warn_improper(result: Fit) -> None:
    """Say so when the posterior looks improper along some sites (:mod:`vitools.improper`)."""
    if result.num_steps == 0:
        return
    flat = flat_sites(result.target, result.sample_flat(64, seed=result.seed))
    if flat:
        spreads = ", ".join(f"{name!r} (unconstrained sd {sd:.3g})" for name, sd in flat.items())
        warnings.warn(
            f"the posterior may be improper: the log density is flat along {spreads}, where q "
            f"keeps widening (widening its draws {WIDEN:g}-fold there costs under 1 nat); check "
            "those sites' priors (an ImproperUniform prior the data do not inform has infinite mass)",
            RuntimeWarning,
            stacklevel=3,
        )
