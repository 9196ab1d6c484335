r"""Targets: a NumPyro model (or a plain JAX log density) as a flat, unconstrained log density.

A :class:`Target` is what every objective sees: ``log_density(flat)`` of one flat draw ``u`` of
shape ``(dim,)`` in the unconstrained space. For a NumPyro model this is

.. math:: \log \pi(u) = \log p(x, T(u)) + \log |\det J_T(u)|

computed by NumPyro's own ``potential_energy`` (so transforms, including supports that depend on
other sites, are NumPyro's, not ours). ``constrain`` maps a flat draw back to named sites through
``numpyro.infer.util.constrain_fn``, which re-runs the model at that draw: a support such as
``0 < b < 1 - a`` is evaluated with each draw's own ``a``, never frozen at the initial point.

Preconditioning: a target can be expressed in an affine frame, ``u = shift + scale v`` with
``scale`` a vector (elementwise) or a lower-triangular matrix (:meth:`Target.whitened`). Every
method then works on ``v``: ``log_density(v)`` includes ``log |det scale|`` and
``log_abs_det_jacobian(v)`` is that of ``v → constrained``, so densities in the constrained
space are unchanged. ``vt.fit`` fits in the frame of its initial Gaussian: Adam's
per-coordinate steps then mean the same on every coordinate, whether a posterior sd is 1e-3 (a
slope on calendar years) or 1e3, and, with the full matrix, whatever the correlations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import init_to_median
from numpyro.infer.util import (
    constrain_fn,
    find_valid_initial_params,
    log_density,
    potential_energy,
    unconstrain_fn,
)

from vitools.arguments import (
    Static,
    check_no_subsampling,
    join_data,
    trace_in_first_mode,
    trace_once,
    try_hash,
)

__all__ = ["Site", "Target"]


class Site(NamedTuple):
    """One latent site: its name, shape in the model, and size in the flat vector."""

    name: str
    shape: tuple[int, ...]
    size: int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """A flat, unconstrained log density with the metadata to map draws back to named sites.

    Build it with :meth:`from_model` or :meth:`from_log_density`; it is usable at once. Model
    arrays are pytree leaves (so a new dataset of the same shapes reuses the compiled program);
    the model, its static arguments and the site layout are static metadata.

    Example:
        >>> target = Target.from_model(model, x, y=y)
        >>> target.log_density(target.init_flat)
    """

    init_flat: jax.Array
    data: tuple
    shift: jax.Array
    scale: jax.Array
    model: Callable | None = dataclasses.field(metadata=dict(static=True))
    static_data: tuple = dataclasses.field(metadata=dict(static=True))
    sites: tuple[Site, ...] = dataclasses.field(metadata=dict(static=True))
    log_density_fn: Callable | None = dataclasses.field(default=None, metadata=dict(static=True))
    # ``numpyro.param`` sites: unconstrained values (leaves, optimised by ``vt.fit`` as point
    # estimates) and (name, constraint) pairs (static).
    model_params: dict = dataclasses.field(default_factory=dict)
    param_sites: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    # ----------------------------------------------------------------------------------------
    # construction
    @classmethod
    def from_model(cls, model: Callable, *args: Any, seed: int = 0, **kwargs: Any) -> Target:
        """Target of a NumPyro model's posterior given its arguments.

        The arguments are whatever NumPyro's NUTS takes: arrays, NumPy or pandas values, lists,
        dicts of data, Python numbers. They reach the compiled programs in the first of
        :data:`DATA_MODES` under which the model traces: as traced inputs where the model only
        computes with them in JAX (new data of the same shapes then reuse the programs), as
        constants where it needs their values (``np.asarray(data["y"])``, ``int(data["K"])``,
        an ``if`` on the data). ``numpyro.param`` sites are kept as point estimates
        (:attr:`model_params`, at their initial values here; ``vt.fit`` optimises them).

        Raises:
            TypeError: ``model`` is not callable, or calling it with the arguments fails.
            ValueError: the model has discrete latent sites, no latent sites, a plate with
                ``subsample_size``, or no initial point with a finite log density.
        """
        if isinstance(model, Target):
            return model
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        arrays, static, trace = trace_in_first_mode(model, args, kwargs, seed)
        latent = [s for s in trace.values() if s["type"] == "sample" and not s["is_observed"]]
        discrete = [s["name"] for s in latent if s["fn"].support.is_discrete]
        if discrete:
            raise ValueError(
                f"latent site {discrete[0]!r} is discrete ({', '.join(discrete)}); vitools fits "
                "continuous latents only: marginalise it out (e.g. a mixture likelihood) or observe it"
            )
        if not latent:
            raise ValueError(
                "the model has no latent sample sites; if it is a log-density function, use "
                "Target.from_log_density(fn, dim)"
            )
        check_no_subsampling(trace)
        # jit keys its cache on the static arguments; an unhashable callable is keyed by identity.
        init, model_params, ok = _initial_point(
            model if try_hash(model) else Static(model), static, seed, arrays
        )
        if not bool(ok):
            raise ValueError(
                "no initial point with a finite log density was found (NumPyro's init_to_median, "
                "then uniform, draws); check the data for NaN/inf and the priors' supports"
            )
        sites = tuple(
            Site(s["name"], tuple(np.shape(init[s["name"]])), math.prod(np.shape(init[s["name"]])))
            for s in latent
        )
        flat = jnp.concatenate([jnp.ravel(init[s.name]) for s in sites])
        # find_valid_initial_params has checked that this point's log density and gradient are finite.
        param_sites = tuple(
            (s["name"], Static(s["kwargs"].get("constraint", constraints.real)))
            for s in trace.values()
            if s["type"] == "param"
        )
        return cls(
            flat, arrays, jnp.zeros_like(flat), jnp.ones_like(flat), model, static, sites,
            model_params=model_params, param_sites=param_sites,
        )  # fmt: skip

    @classmethod
    def from_log_density(
        cls, log_density_fn: Callable[[jax.Array], jax.Array], dim: int, name: str = "x"
    ) -> Target:
        """Target of a plain JAX log density over R^dim (already unconstrained).

        Args:
            log_density_fn: maps one draw of shape ``(dim,)`` to a scalar, unnormalized log density.
            dim: the dimension.
            name: the site name under which draws are reported.
        """
        if not callable(log_density_fn):
            raise TypeError(f"log_density_fn must be callable, got {type(log_density_fn).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        init = jnp.zeros(dim)
        value = log_density_fn(init)
        if jnp.shape(value) != ():
            raise ValueError(f"log_density_fn must return a scalar, got shape {jnp.shape(value)}")
        if not jnp.isfinite(value):
            raise ValueError("log_density_fn is not finite at the initial point (zeros)")
        ones = jnp.ones_like(init)
        return cls(init, (), jnp.zeros_like(init), ones, None, (), (Site(name, (dim,), dim),), log_density_fn)

    # ----------------------------------------------------------------------------------------
    # the flat vector
    @property
    def dim(self) -> int:
        return sum(s.size for s in self.sites)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def whitened(self, shift: jax.Array, scale: jax.Array) -> Target:
        """The same target in the frame ``u = shift + scale v``, in the model's unconstrained
        space: ``scale`` is ``(dim,)`` (positive) or ``(dim, dim)`` lower-triangular with a
        positive diagonal."""
        shift, scale = jnp.asarray(shift), jnp.asarray(scale)
        if shift.shape != (self.dim,) or scale.shape not in ((self.dim,), (self.dim, self.dim)):
            raise ValueError(
                f"shift must have shape ({self.dim},), scale ({self.dim},) or ({self.dim}, {self.dim})"
            )
        frame = dataclasses.replace(self, shift=shift, scale=scale)
        init = frame.from_unconstrained(self.to_unconstrained(self.init_flat))
        return dataclasses.replace(frame, init_flat=init)

    def to_unconstrained(self, flat: jax.Array) -> jax.Array:
        """A flat draw of this target's frame → the model's flat unconstrained space."""
        if self.scale.ndim == 2:
            return self.shift + self.scale @ flat
        return self.shift + self.scale * flat

    def from_unconstrained(self, u: jax.Array) -> jax.Array:
        if self.scale.ndim == 2:
            return jax.scipy.linalg.solve_triangular(self.scale, u - self.shift, lower=True)
        return (u - self.shift) / self.scale

    def unravel(self, flat: jax.Array) -> dict[str, jax.Array]:
        """Flat vector (of the model's unconstrained space) → dict of site values, in model order.

        Our own ravel (not ``ravel_pytree``, which sorts keys) keeps the model's site order, the
        order NumPyro's ``AutoContinuous`` guides use for their flat latent.
        """
        out, start = {}, 0
        for s in self.sites:
            out[s.name] = jnp.reshape(flat[start : start + s.size], s.shape)
            start += s.size
        return out

    def ravel(self, values: dict[str, jax.Array]) -> jax.Array:
        return jnp.concatenate([jnp.ravel(values[s.name]) for s in self.sites])

    def constrained_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one draw of each latent site in the model's (constrained) space: ``(4,)`` for
        a Dirichlet over 4 categories, whose unconstrained :attr:`Site.shape` is ``(3,)``; ``(3, 3)``
        for an ``LKJCholesky(3)``, unconstrained ``(3,)``. Computed abstractly (nothing runs)."""
        shapes = jax.eval_shape(self.constrain, self.init_flat)
        return {s.name: tuple(shapes[s.name].shape) for s in self.sites}

    # ----------------------------------------------------------------------------------------
    # densities and maps of one draw
    @property
    def _args(self) -> tuple[tuple, dict]:
        return join_data(self.data, self.static_data)

    def with_model_params(self, model_params: dict) -> Target:
        """The same target with other (unconstrained) values of its ``numpyro.param`` sites."""
        return dataclasses.replace(self, model_params=model_params) if self.param_sites else self

    def point_estimates(self) -> dict[str, jax.Array]:
        """The ``numpyro.param`` sites' values in the model's (constrained) space."""
        return {name: biject_to(c.value)(self.model_params[name]) for name, c in self.param_sites}

    @property
    def _model(self) -> Callable:
        """The model with its ``numpyro.param`` sites set to :attr:`model_params`."""
        if not self.param_sites:
            return self.model
        return handlers.substitute(self.model, data=self.point_estimates())

    def _log_scale(self) -> jax.Array:
        diagonal = jnp.diagonal(self.scale) if self.scale.ndim == 2 else self.scale
        return jnp.sum(jnp.log(diagonal))

    def log_density(self, flat: jax.Array) -> jax.Array:
        """Unnormalized log density of one flat draw (Jacobians included)."""
        u = self.to_unconstrained(flat)
        if self.model is None:
            return self.log_density_fn(u) + self._log_scale()
        args, kwargs = self._args
        return -potential_energy(self._model, args, kwargs, self.unravel(u)) + self._log_scale()

    def constrain(self, flat: jax.Array, deterministic: bool = False) -> dict[str, jax.Array]:
        """Constrained site values of one flat draw (supports re-evaluated at this draw)."""
        u = self.to_unconstrained(flat)
        if self.model is None:
            return {self.sites[0].name: u}
        args, kwargs = self._args
        return constrain_fn(self._model, args, kwargs, self.unravel(u), deterministic)

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        """Flat unconstrained vector of one draw given constrained latent values."""
        missing = [n for n in self.site_names if n not in values]
        if missing:
            raise ValueError(f"draws lack latent site(s) {missing}; expected {list(self.site_names)}")
        if self.model is None:
            return self.from_unconstrained(jnp.ravel(values[self.sites[0].name]))
        args, kwargs = self._args
        latent = {n: values[n] for n in self.site_names}
        return self.from_unconstrained(self.ravel(unconstrain_fn(self._model, args, kwargs, latent)))

    def in_support(self, values: dict[str, jax.Array]) -> jax.Array:
        """Whether one draw of constrained latent values lies in the model's support: each site's
        support evaluated at this draw (a dependent support with this draw's own values)."""
        if self.model is None:
            return jnp.array(True)
        args, kwargs = self._args
        latent = {n: values[n] for n in self.site_names}
        trace = log_density(self._model, args, kwargs, latent)[1]  # NumPyro's trace at these values
        checks = [jnp.all(trace[n]["fn"].support(trace[n]["value"])) for n in self.site_names]
        return jnp.all(jnp.stack(checks))

    def log_joint(self, values: dict[str, jax.Array]) -> jax.Array:
        """Unnormalized log joint at constrained values (no Jacobian)."""
        if self.model is None:
            return self.log_density_fn(jnp.ravel(values[self.sites[0].name]))
        args, kwargs = self._args
        return log_density(self._model, args, kwargs, values)[0]

    def log_abs_det_jacobian(self, flat: jax.Array) -> jax.Array:
        """log |det| of the Jacobian of the map flat draw → constrained values, for one draw.

        It is the difference of NumPyro's unconstrained and constrained log densities, so it is
        right for any transform NumPyro applies, dependent supports included.
        """
        if self.model is None:
            return self._log_scale() + jnp.zeros((), flat.dtype)
        return self.log_density(flat) - self.log_joint(self.constrain(flat))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _initial_point(model: Callable, static: Any, seed: int, arrays: tuple) -> tuple[dict, dict, jax.Array]:
    """NumPyro's ``find_valid_initial_params`` (init_to_median), compiled as one program:
    ``(latent values, unconstrained numpyro.param values, ok)``.

    Run eagerly it dispatches every op of the model on its own, and each new op compiles: 158
    small compilations, 2.9 s for a 10,000-row logistic regression, against one program here
    (measured). ``jax.jit`` keeps the program for the next call with the same model, static
    arguments, seed and data shapes.
    """
    model = model.value if isinstance(model, Static) else model
    model_args, model_kwargs = join_data(arrays, static)
    # Under jit NumPyro needs the unconstrained parameters' structure up front.
    trace = trace_once(model, model_args, model_kwargs, seed)
    prototype = {
        name: biject_to(site["fn"].support).inv(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    # init_to_median draws a batch from each prior, which relies on NumPyro's implicit rank
    # promotion; allow it here whatever the caller's jax_numpy_rank_promotion setting.
    with jax.numpy_rank_promotion("allow"):
        (init, _, _), ok = find_valid_initial_params(
            jax.random.PRNGKey(seed),
            model,
            init_strategy=init_to_median(num_samples=15),
            model_args=model_args,
            model_kwargs=model_kwargs,
            prototype_params=prototype,
        )
    model_params = {
        name: biject_to(site["kwargs"].get("constraint", constraints.real)).inv(jnp.asarray(site["value"]))
        for name, site in trace.items()
        if site["type"] == "param"
    }
    return init, model_params, ok
