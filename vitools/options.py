"""``vt.fit``'s options (``vt.fit_many``'s too), checked before anything is traced or compiled:
:func:`checked_options`, and the stopping rule that ``converge`` and ``tol`` name
(:func:`stopping_rule`). Each error names the option (:mod:`vitools.validate`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from vitools import validate
from vitools.convergence import ConvergenceRule, StoppingRule
from vitools.families import get_family
from vitools.objectives import Objective, get_objective, objective_hooks

__all__ = ["checked_options", "stopping_rule"]


def checked_options(**options: Any) -> dict[str, Any]:
    """``vt.fit``'s options (``fit_many``'s too), validated before anything is traced or compiled
    (``vitools.validate``).

    A model keyword argument that shares an option's name (``init=``, ``family=``) is taken by
    ``vt.fit``; when its value cannot be the option's, the error says how to pass it to the model.
    """
    try:
        checked = dict(
            num_steps=validate.count(options["num_steps"], "num_steps"),
            chunk_size=validate.count(options["chunk_size"], "chunk_size"),
            seed=_maybe(validate.seed, options["seed"], "seed"),
            learning_rate=_maybe(validate.positive, options["learning_rate"], "learning_rate"),
            tol=_maybe(validate.positive, options["tol"], "tol"),
            converge=_converge(options["converge"], "converge"),
            on_nonfinite=validate.choice(options["on_nonfinite"], "on_nonfinite", ("raise", "warn")),
            init=(
                validate.choice(options["init"], "init", ("laplace", "median"))
                if isinstance(options["init"], str)
                else validate.gaussian(options["init"], "init")
            ),
            family=validate.option(get_family, options["family"], "family"),
            objective=validate.option(get_objective, options["objective"], "objective"),
            optimizer=_optimizer(options["optimizer"], "optimizer"),
            key=None if options["key"] is None else validate.key(options["key"], "key"),
        )
    except validate.ArgumentError as err:
        if err.argument in ("init", "family", "objective", "optimizer", "tol", "seed") and _data_like(
            options[err.argument]
        ):
            name = err.argument
            hint = f"if {name!r} is an argument of your model, pass it as model_kwargs={{{name!r}: ...}}"
            raise type(err)(f"{err} ({hint})", err.argument) from None
        raise
    _no_optimizer_options(checked["objective"], checked["learning_rate"], checked["optimizer"])
    return checked


def _no_optimizer_options(objective: Objective, learning_rate: Any, optimizer: Any) -> None:
    """An objective that moves q by its own update (``ObjectiveHooks.update``: batch and match)
    follows no gradient: ``learning_rate`` and ``optimizer`` would be ignored, so they are refused
    (a user's trial passed ``learning_rate=0.5`` with ``objective="batch_and_match"`` and got the
    default fit). Raises :class:`vitools.validate.ArgumentValueError` naming the objective's own
    step-size option where it has one."""
    if objective_hooks(objective).update is None:
        return
    for name, value in (("learning_rate", learning_rate), ("optimizer", optimizer)):
        if value is not None:
            own = getattr(objective, "learning_rate", None)
            hint = (
                f"; its own step size is {type(objective).__name__}(learning_rate=...), now {own:g}"
                if own is not None
                else ""
            )
            raise validate.ArgumentValueError(
                f"{name} is not used by objective {objective.name!r}, which updates q in closed form "
                f"(no gradient, no optimizer){hint}",
                name,
            )


def _data_like(value: Any) -> bool:
    """Whether a bad option value could be a model argument given by the option's name."""
    return value is None or isinstance(
        value, (str, bytes, int, float, list, tuple, dict, np.ndarray, jax.Array)
    )


def _maybe(check: Callable, value: Any, name: str) -> Any:
    return None if value is None else check(value, name)


def _converge(value: Any, name: str) -> bool | StoppingRule:
    if isinstance(value, StoppingRule):
        return value
    if not isinstance(value, bool | np.bool_):
        raise validate.ArgumentTypeError(
            f"{name} must be True, False or a StoppingRule, got {type(value).__name__}", name
        )
    return bool(value)


def stopping_rule(
    converge: bool | StoppingRule, tol: float | None, own: Callable | None = None
) -> StoppingRule:
    """The rule that stops (or, with ``converge=False``, only assesses) the fit; ``own``: the
    objective's (``ObjectiveHooks.stopping_rule``), used unless ``converge`` is a rule."""
    if isinstance(converge, StoppingRule):
        if tol is not None:
            raise validate.ArgumentValueError("give tol or a StoppingRule as converge, not both", "tol")
        return converge
    if own is not None:
        return own(tol)
    return ConvergenceRule() if tol is None else ConvergenceRule(tol=tol)


def _optimizer(value: Any, name: str) -> Any:
    if value is not None and not isinstance(value, optax.GradientTransformation):
        raise validate.ArgumentTypeError(
            f"{name} must be an optax.GradientTransformation, got {type(value).__name__}", name
        )
    return value
