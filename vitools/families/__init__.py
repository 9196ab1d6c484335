"""Variational families over the flat unconstrained space."""

from vitools import validate
from vitools.families.autoguide import AutoGuideFamily, GuideParams
from vitools.families.base import Family, FamilyHooks, draw_many, family_hooks
from vitools.families.coupling import Coupling, CouplingParams
from vitools.families.flow import IAF, IAFParams
from vitools.families.gaussian import FullRank, LowRank, MeanField
from vitools.families.mixture import GaussianMixture, MixtureParams

FAMILIES = {
    "meanfield": MeanField,
    "fullrank": FullRank,
    "lowrank": LowRank,
    "iaf": IAF,
    "coupling": Coupling,
    "mixture": GaussianMixture,
}

__all__ = [
    "Coupling",
    "CouplingParams",
    "AutoGuideFamily",
    "FAMILIES",
    "Family",
    "FamilyHooks",
    "family_hooks",
    "FullRank",
    "GaussianMixture",
    "GuideParams",
    "IAF",
    "IAFParams",
    "LowRank",
    "MeanField",
    "MixtureParams",
    "draw_many",
    "get_family",
]


def get_family(family: "str | Family") -> Family:
    """A family from its name (a key of :data:`FAMILIES`: ``"meanfield"``, ``"fullrank"``,
    ``"lowrank"``, ``"iaf"``, ``"coupling"``, ``"mixture"``...) or itself.

    A NumPyro ``AutoContinuous`` guide is wrapped in :class:`AutoGuideFamily`.

    Raises:
        ValueError: an unknown name.
        TypeError: anything else, a class instead of an instance, or a family that is not a
            JAX pytree with array leaves (:func:`vitools.validate.static_pytree`).
    """
    from numpyro.infer.autoguide import AutoContinuous

    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
        return FAMILIES[family]()
    if isinstance(family, AutoContinuous):
        return AutoGuideFamily(family)
    if isinstance(family, type) or isinstance(family, Family):
        return validate.static_pytree(family, "family")
    raise TypeError(
        f"family must be a name {sorted(FAMILIES)}, a Family or a numpyro AutoContinuous guide, "
        f"got {type(family).__name__}"
    )
