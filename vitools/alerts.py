"""Warnings ``vt.fit`` gives about a target or a finished fit, each with what to do."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from vitools.families.base import Family
from vitools.improper import WIDEN, flat_sites

if TYPE_CHECKING:
    from vitools.result import Fit

__all__ = [
    "LARGE_DIM",
    "LARGE_PARAMS",
    "warn_improper",
    "warn_large_family",
    "warn_large_init",
    "warn_low_ess",
]


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
            stacklevel=4,
        )


LARGE_DIM = 1000  # the Laplace init's d x d Hessians and a full-rank q's d² parameters grow heavy
LARGE_PARAMS = 500_000


def warn_large_init(dim: int) -> None:
    """Warn, before it starts, when the Laplace init's d x d Hessians will be slow."""
    if dim >= LARGE_DIM:
        warnings.warn(
            f"{dim} latent dimensions: the Laplace init computes up to 9 Hessians of {dim} x {dim}, "
            "so it may take minutes; consider init='median' (and family='meanfield' or 'lowrank')",
            RuntimeWarning,
            stacklevel=4,
        )


def warn_large_family(family: Family, params: Any, dim: int) -> None:
    """Warn, before the loop compiles, when q has so many parameters that each step is slow."""
    num_params = sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))
    if num_params >= LARGE_PARAMS:
        warnings.warn(
            f"{dim} latent dimensions: q ({family.name}) has {num_params:,} parameters, so each "
            "step is slow; consider family='meanfield' or 'lowrank'",
            RuntimeWarning,
            stacklevel=4,
        )


def warn_improper(result: Fit, key: jax.Array) -> None:
    """Say so when the posterior looks improper along some sites (:mod:`vitools.improper`);
    ``key`` seeds the check's draws of q."""
    if result.num_steps == 0:
        return
    flat = flat_sites(result.target, result.family, result.params, key)
    if flat:
        spreads = ", ".join(f"{name!r} (unconstrained sd {sd:.3g})" for name, sd in flat.items())
        warnings.warn(
            f"the posterior may be improper: q keeps widening along {spreads} (sd inf: its draws "
            f"overflow), where the log density does not fall off (widening q's draws {WIDEN:g}-fold "
            "there costs under 1 nat); check those sites' priors (an ImproperUniform prior the data "
            "do not inform has infinite mass)",
            RuntimeWarning,
            stacklevel=4,
        )
