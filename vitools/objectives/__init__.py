"""Objectives: divergence estimators between the posterior and q."""

from vitools import validate
from vitools.objectives.annealed import Hybrid
from vitools.objectives.base import (
    Objective,
    ObjectiveHooks,
    importance_info,
    objective_hooks,
    weighted_cross_entropy,
)
from vitools.objectives.bounds import IWAE, ChiSquare
from vitools.objectives.forward_kl import ForwardKL, ForwardKLFromDraws, draws_to_flat
from vitools.objectives.reverse_kl import RenyiAlpha, ReverseKL
from vitools.objectives.score import BatchAndMatch
from vitools.objectives.score_climbing import MarkovianScoreClimbing

OBJECTIVES = {
    "reverse_kl": ReverseKL,
    "forward_kl": ForwardKL,
    "renyi": RenyiAlpha,
    "iwae": IWAE,
    "chi2": ChiSquare,
    "hybrid": Hybrid,
    "msc": MarkovianScoreClimbing,
    "batch_and_match": BatchAndMatch,
}

__all__ = [
    "BatchAndMatch",
    "ChiSquare",
    "IWAE",
    "OBJECTIVES",
    "ForwardKL",
    "ForwardKLFromDraws",
    "Hybrid",
    "MarkovianScoreClimbing",
    "Objective",
    "ObjectiveHooks",
    "objective_hooks",
    "RenyiAlpha",
    "ReverseKL",
    "draws_to_flat",
    "get_objective",
    "importance_info",
    "weighted_cross_entropy",
]


def get_objective(objective: "str | Objective") -> Objective:
    """An objective from its name (a key of :data:`OBJECTIVES`: ``"reverse_kl"``, ``"forward_kl"``,
    ``"renyi"``, ``"iwae"``, ``"chi2"``, ``"hybrid"``, ``"msc"``, ``"batch_and_match"``) or itself.

    Raises:
        ValueError: an unknown name.
        TypeError: anything else, a class instead of an instance, or an objective that is not a
            JAX pytree with array leaves (:func:`vitools.validate.static_pytree`).
    """
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            pathfinder = objective == "pathfinder"
            hint = "; Pathfinder is a method of its own: vt.pathfinder(model, ...)" if pathfinder else ""
            raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}{hint}")
        return OBJECTIVES[objective]()
    if isinstance(objective, type) or isinstance(objective, Objective):
        return validate.static_pytree(objective, "objective")
    raise TypeError(
        f"objective must be a name {sorted(OBJECTIVES)} or an Objective, got {type(objective).__name__}"
    )
