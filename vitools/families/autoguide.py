"""A NumPyro ``AutoContinuous`` guide used as a vitools family, so existing guides keep working."""

from __future__ import annotations

import dataclasses

import jax
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.autoguide import AutoContinuous

from vitools.arguments import Static
from vitools.model import ModelDensity
from vitools.targets import Target

__all__ = ["AutoGuideFamily"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GuideParams:
    """Unconstrained guide parameters, with the constraints that map them back (static)."""

    values: dict[str, jax.Array]
    constraints: tuple = dataclasses.field(metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class AutoGuideFamily:
    """Wraps an ``AutoContinuous`` guide (AutoNormal-like flat-latent guides, IAF, ...).

    The guide's flat latent uses the model's site order, the same order as ``Target``'s flat
    vector, and lives in the same unconstrained space, so ``guide.get_posterior(params)`` is a
    distribution over our flat draws (vt.fit does not rescale the frame for guides). Parameters
    are the guide's ``numpyro.param`` values mapped to the unconstrained space through their
    constraints.

    ``init`` traces the guide once with the target's model arguments (NumPyro sets the guide up
    then), starting from the guide's own init strategy; when the guide has a ``{prefix}_loc``
    parameter of the target's dimension it is set to the vitools initial location.

    Args:
        guide: a NumPyro ``AutoContinuous`` guide of the model being fitted (e.g.
            ``AutoMultivariateNormal(model)``, ``AutoIAFNormal(model)``).
        name: the name shown for the family (``"autoguide"``).
        whiten: False (default): fit in the model's own unconstrained space, so the parameters
            stay the guide's and work with ``guide.sample_posterior`` and the rest of NumPyro.

    Raises:
        TypeError: ``guide`` is not a NumPyro ``AutoContinuous`` guide.
        ValueError: from ``init`` (at ``vt.fit``): the target was not built from a NumPyro model
            (a :meth:`~vitools.targets.Target.from_log_density` target has no model to trace).

    Examples:
        >>> from numpyro.infer.autoguide import AutoMultivariateNormal
        >>> family = vt.AutoGuideFamily(AutoMultivariateNormal(model))
        >>> fit = vt.fit(model, x, y=y, family=family, seed=0)
        >>> sorted(fit.params.values)  # the guide's own parameters, unconstrained
        ['auto_loc', 'auto_scale_tril']
    """

    guide: AutoContinuous = dataclasses.field(metadata=dict(static=True))
    name: str = dataclasses.field(default="autoguide", metadata=dict(static=True))
    # Fit in the model's own unconstrained space, so the parameters stay the guide's: they work
    # with ``guide.sample_posterior`` and the rest of NumPyro.
    whiten: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __post_init__(self):
        if not isinstance(self.guide, AutoContinuous):
            raise TypeError(
                f"AutoGuideFamily needs a numpyro AutoContinuous guide (e.g. AutoMultivariateNormal), "
                f"got {type(self.guide).__name__}"
            )

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> GuideParams:
        if not isinstance(target.density, ModelDensity):
            raise ValueError("AutoGuideFamily needs a target built from a NumPyro model")
        args, kwargs = target.density.arguments()
        trace = handlers.trace(handlers.seed(self.guide, key)).get_trace(*args, **kwargs)
        params = {}
        for name, site in trace.items():
            if site["type"] != "param":
                continue
            constraint = site["kwargs"].get("constraint", dist.constraints.real)
            params[name] = biject_to(constraint).inv(site["value"])
        loc_name = f"{self.guide.prefix}_loc"
        if loc_name in params and params[loc_name].shape == loc.shape:
            params[loc_name] = loc
        constraints = tuple(
            (n, Static(s["kwargs"].get("constraint", dist.constraints.real)))
            for n, s in trace.items()
            if s["type"] == "param"
        )
        return GuideParams(params, constraints)

    def distribution(self, params: GuideParams) -> dist.Distribution:
        constrained = {name: biject_to(c.value)(params.values[name]) for name, c in params.constraints}
        posterior = self.guide.get_posterior(constrained)
        if isinstance(posterior, dist.Normal):  # AutoDiagonalNormal returns a batched Normal
            posterior = posterior.to_event(1)
        return posterior
