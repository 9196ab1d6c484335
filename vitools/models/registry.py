"""The registry of zoo models: `MODELS`, `get_model`, `list_models`."""

from __future__ import annotations

from vitools.models import hierarchical, regression, timeseries, toy
from vitools.models.base import ZooModel

MODELS: dict[str, ZooModel] = {
    zoo.name: zoo for module in (toy, regression, hierarchical, timeseries) for zoo in module.ZOO
}


def list_models() -> list[str]:
    """Names of the registered models, in registry order (``vitools models`` prints them).

    Examples:
        >>> from vitools.models import list_models
        >>> "eight_schools_noncentered" in list_models()
        True
    """
    return list(MODELS)


def get_model(name: str) -> ZooModel:
    """The zoo model called ``name``.

    Args:
        name: a registered name (:func:`list_models`).

    Returns:
        The model, its data and its reference posterior.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.

    Examples:
        >>> from vitools.models import get_model
        >>> zoo = get_model("funnel")  # Neal's funnel, 10-D
        >>> zoo.latent_shapes()
        {'v': (), 'x': (9,)}
        >>> fit = vt.fit(zoo.model, *zoo.args, **zoo.kwargs, seed=0)
        >>> table = vt.compare({"VI": fit}, reference=zoo.reference())  # w1 to the exact draws
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
