"""Model zoo: NumPyro models with data and trusted reference posteriors."""

from vitools.models.base import ClosedForm, NutsSettings, Reference, ZooModel
from vitools.models.registry import MODELS, get_model, list_models

__all__ = ["MODELS", "ClosedForm", "NutsSettings", "Reference", "ZooModel", "get_model", "list_models"]
