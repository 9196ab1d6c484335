"""The registry of zoo models: `MODELS`, `get_model`, `list_models`."""

from __future__ import annotations

from vitools.models import hierarchical, regression, timeseries, toy
from vitools.models.base import ZooModel

MODELS: dict[str, ZooModel] = {
    zoo.name: zoo for module in (toy, regression, hierarchical, timeseries) for zoo in module.ZOO
}


def list_models() -> list[str]:
    """Names of the registered models, in registry order."""
    return list(MODELS)


def get_model(name: str) -> ZooModel:
    """The zoo model called ``name``.

    Example:
        >>> from vitools.models import get_model
        >>> get_model("funnel").latent_shapes()
        {'v': (), 'x': (9,)}

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
