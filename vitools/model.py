r"""The two densities a :class:`~vitools.targets.Target` can hold, over the model's flat
unconstrained space ``u`` (no frame here; see :mod:`vitools.frame`).

- :class:`ModelDensity`: a NumPyro model with its arguments. ``log_density(u)`` is

  .. math:: \log \pi(u) = \log p(x, T(u)) + \log |\det J_T(u)|

  computed by NumPyro's own ``potential_energy`` (so transforms, including supports that depend
  on other sites, are NumPyro's, not ours). ``constrain`` maps a draw back to named sites
  through ``numpyro.infer.util.constrain_fn``, which re-runs the model at that draw: a support
  such as ``0 < b < 1 - a`` is evaluated with each draw's own ``a``.
  :func:`trace_model` traces a model once and finds NumPyro's initial point.
- :class:`LogDensityFn`: a plain JAX log density over R^dim, reported as one site.

Both give the same seven maps of one draw; ``Target`` holds one and never asks which.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
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
    StaticData,
    join_data,
    trace_in_first_mode,
    trace_once,
    try_hash,
)
from vitools.compiling import QUICK
from vitools.subsample import (
    CheckedPlates,
    SubsampledModel,
    SubsamplePlate,
    draw_indices,
    draw_subset,
    subsample_plates,
)

__all__ = [
    "LogDensityFn",
    "ModelDensity",
    "Site",
    "model_density",
]


class Site(NamedTuple):
    """One latent site: its name, shape in the model, and size in the flat vector."""

    name: str
    shape: tuple[int, ...]
    size: int


def unravel(sites: tuple[Site, ...], flat: jax.Array) -> dict[str, jax.Array]:
    """Flat vector → dict of site values, in model order.

    Our own ravel (not ``ravel_pytree``, which sorts keys) keeps the model's site order, the
    order NumPyro's ``AutoContinuous`` guides use for their flat latent.
    """
    out, start = {}, 0
    for s in sites:
        out[s.name] = jnp.reshape(flat[start : start + s.size], s.shape)
        start += s.size
    return out


def ravel(sites: tuple[Site, ...], values: dict[str, jax.Array]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(values[s.name]) for s in sites])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelDensity:
    """A NumPyro model's posterior over its flat unconstrained latent vector.

    Model arrays and the ``numpyro.param`` values are pytree leaves (a new dataset of the same
    shapes reuses the compiled programs); the model, its static arguments and the site layout
    are static metadata. Build it with :func:`model_density`.

    Data subsampling: a model with ``numpyro.plate(..., subsample_size=B)`` is held as a
    :class:`SubsampledModel`, and every map here evaluates it on the full data (all N rows,
    unscaled): the Laplace init, Pathfinder, the diagnostics, ``Fit.sample`` and predictive draws
    are exact. :meth:`minibatch` gives the same density on one minibatch of B rows per plate
    (held in :attr:`indices`, a leaf), its log likelihood scaled by N / B: an unbiased
    estimate of the full log density at every point, at a cost that does not grow with N. The
    compiled loop draws one per step (:func:`vitools.engine.make_step`).
    """

    data: tuple
    # ``numpyro.param`` sites: unconstrained values (leaves, optimised by ``vt.fit`` as point
    # estimates) and (name, constraint) pairs (static).
    model_params: dict
    model: Callable = dataclasses.field(metadata=dict(static=True))
    static_data: StaticData = dataclasses.field(metadata=dict(static=True))
    sites: tuple[Site, ...] = dataclasses.field(metadata=dict(static=True))
    param_sites: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    # The plates that subsample (static), and the minibatch's row indices of each, ``{name:
    # (subsample_size,)}``; None: the full data.
    plates: tuple[SubsamplePlate, ...] = dataclasses.field(default=(), metadata=dict(static=True))
    indices: dict | None = None

    @property
    def subsamples(self) -> bool:
        """Whether the model subsamples data (a plate with ``subsample_size < size``)."""
        return bool(self.plates)

    def minibatch(self, key: jax.Array) -> ModelDensity:
        """The density on one minibatch (:func:`draw_indices` under ``key``); itself when the
        model does not subsample."""
        if not self.plates:
            return self
        return dataclasses.replace(self, indices=draw_indices(key, self.plates))

    def subset(self, key: jax.Array, num_rows: int) -> ModelDensity:
        """The density on a random subset of ``num_rows`` rows of each plate, drawn without
        replacement and scaled by N / ``num_rows`` (:func:`draw_subset`); the full data when no
        plate has more rows."""
        if all(p.size <= num_rows for p in self.plates):
            return self.full_data()
        return dataclasses.replace(self, indices=draw_subset(key, self.plates, num_rows))

    def full_data(self) -> ModelDensity:
        """The density on the full data (itself unless it holds a minibatch)."""
        return self if self.indices is None else dataclasses.replace(self, indices=None)

    def arguments(self) -> tuple[tuple, dict]:
        """The model's ``(args, kwargs)``, as the model is called with them."""
        return join_data(self.data, self.static_data)

    def point_estimates(self) -> dict[str, jax.Array]:
        """The ``numpyro.param`` sites' values in the model's (constrained) space."""
        return {name: biject_to(c.value)(self.model_params[name]) for name, c in self.param_sites}

    def with_model_params(self, model_params: dict) -> ModelDensity:
        return dataclasses.replace(self, model_params=model_params) if self.param_sites else self

    def _model(self) -> Callable:
        """The model with its ``numpyro.param`` sites set to :attr:`model_params`, on the
        minibatch :attr:`indices` when it holds one (else the full data)."""
        model = self.model
        if self.indices is not None:  # an outer handler's value wins over the full-data one
            model = SubsampledModel(model, self.plates, self.indices)
        if not self.param_sites:
            return model
        return handlers.substitute(model, data=self.point_estimates())

    def log_density(self, u: jax.Array) -> jax.Array:
        args, kwargs = self.arguments()
        return -potential_energy(self._model(), args, kwargs, unravel(self.sites, u))

    def constrain(self, u: jax.Array, deterministic: bool = False) -> dict[str, jax.Array]:
        args, kwargs = self.arguments()
        return constrain_fn(self._model(), args, kwargs, unravel(self.sites, u), deterministic)

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        args, kwargs = self.arguments()
        latent = {s.name: values[s.name] for s in self.sites}
        return ravel(self.sites, unconstrain_fn(self._model(), args, kwargs, latent))

    def log_joint(self, values: dict[str, jax.Array]) -> jax.Array:
        args, kwargs = self.arguments()
        return log_density(self._model(), args, kwargs, values)[0]

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        """NumPyro's unconstrained minus its constrained log density: right for any transform
        NumPyro applies, dependent supports included."""
        return self.log_density(u) - self.log_joint(self.constrain(u))

    def in_support(self, values: dict[str, jax.Array]) -> jax.Array:
        args, kwargs = self.arguments()
        latent = {s.name: values[s.name] for s in self.sites}
        trace = log_density(self._model(), args, kwargs, latent)[1]  # NumPyro's trace at these values
        checks = [jnp.all(trace[s.name]["fn"].support(trace[s.name]["value"])) for s in self.sites]
        return jnp.all(jnp.stack(checks))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LogDensityFn:
    """A plain JAX log density over R^dim (already unconstrained), reported as the one site ``name``."""

    fn: Callable = dataclasses.field(metadata=dict(static=True))
    sites: tuple[Site, ...] = dataclasses.field(metadata=dict(static=True))
    model_params: dict = dataclasses.field(default_factory=dict)
    param_sites = ()
    model = None
    plates = ()
    subsamples = False

    def minibatch(self, key: jax.Array) -> LogDensityFn:
        return self

    def subset(self, key: jax.Array, num_rows: int) -> LogDensityFn:
        return self

    def full_data(self) -> LogDensityFn:
        return self

    def point_estimates(self) -> dict[str, jax.Array]:
        return {}

    def with_model_params(self, model_params: dict) -> LogDensityFn:
        return self

    def log_density(self, u: jax.Array) -> jax.Array:
        return self.fn(u)

    def constrain(self, u: jax.Array, deterministic: bool = False) -> dict[str, jax.Array]:
        return {self.sites[0].name: u}

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        return jnp.ravel(values[self.sites[0].name])

    def log_joint(self, values: dict[str, jax.Array]) -> jax.Array:
        return self.fn(jnp.ravel(values[self.sites[0].name]))

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        return jnp.zeros((), u.dtype)

    def in_support(self, values: dict[str, jax.Array]) -> jax.Array:
        return jnp.array(True)


def model_density(
    model: Callable, args: tuple, kwargs: dict, seed: int = 0
) -> tuple[ModelDensity, jax.Array]:
    """``(density, initial point u)`` of a NumPyro model given its arguments (see
    ``Target.from_model`` for the arguments accepted and the errors raised)."""
    if not callable(model):
        raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
    # under CheckedPlates a bad subsample_size is named before NumPyro draws indices with it
    arrays, static, trace = trace_in_first_mode(CheckedPlates(model), args, kwargs, seed)
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
    plates = subsample_plates(trace)
    if plates:  # evaluated on the full data unless given a minibatch (ModelDensity.minibatch)
        model = SubsampledModel(model, plates)
    # jit keys its cache on the static arguments; an unhashable callable is keyed by identity.
    keyed = model if try_hash(model) else Static(model)
    init, model_params, ok = initial_point_program(arrays)(keyed, static, seed, arrays)
    if not bool(ok):
        raise ValueError(
            "no initial point with a finite log density was found (NumPyro's init_to_median, "
            "then uniform, draws); "
            + (
                _outside_support(model, args, kwargs, seed)
                or "check the data for NaN/inf and the priors' supports"
            )
        )
    sites = tuple(
        Site(s["name"], tuple(np.shape(init[s["name"]])), math.prod(np.shape(init[s["name"]])))
        for s in latent
    )
    # find_valid_initial_params has checked that this point's log density and gradient are finite.
    param_sites = tuple(
        (s["name"], Static(s["kwargs"].get("constraint", constraints.real)))
        for s in trace.values()
        if s["type"] == "param"
    )
    density = ModelDensity(arrays, model_params, model, static, sites, param_sites, plates)
    return density, ravel(sites, init)


def trace_at_uniform(model: Callable, args: tuple, kwargs: dict, seed: int = 0) -> dict:
    """One eager run of a model traced, its latent values from NumPyro's ``init_to_uniform`` (drawn
    in the unconstrained space, so improper ``ImproperUniform`` priors run too).

    Raises:
        Whatever the model raises on these arguments.
    """
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_uniform

    seeded = handlers.substitute(handlers.seed(model, jax.random.key(seed)), substitute_fn=init_to_uniform)
    return handlers.trace(seeded).get_trace(*args, **kwargs)


def _outside_support(model: Callable, args: tuple, kwargs: dict, seed: int) -> str | None:
    """Which observed site holds values its likelihood gives no density (a 2 under a Bernoulli, a
    NaN), at latent values from ``init_to_uniform``; None when every observation has a finite log
    density there, or when the model cannot be run eagerly (the diagnosis is a hint, never an error)."""
    try:
        trace = trace_at_uniform(model, args, kwargs, seed)
    except Exception:  # the user's model: whatever it raises, the generic message stands
        return None
    for site in trace.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = np.asarray(site["value"])
        with warnings.catch_warnings():  # NumPyro warns of out-of-support values: what we look for
            warnings.simplefilter("ignore")
            finite = np.isfinite(np.asarray(site["fn"].log_prob(site["value"]), dtype=float))
        inside = np.asarray(site["fn"].support(site["value"]), dtype=bool)
        bad = ~np.broadcast_to(finite & inside, np.broadcast_shapes(finite.shape, inside.shape))
        if bad.any():
            values = np.broadcast_to(value, bad.shape)[bad] if value.shape == bad.shape else value.ravel()
            return (
                f"observed site {site['name']!r} has {int(bad.sum())} value(s) outside its "
                f"distribution's support ({type(site['fn']).__name__}: {site['fn'].support}), "
                f"e.g. {values.ravel()[0].item()!r}"
            )
    return None


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
    # Under jit NumPyro needs the unconstrained parameters' structure up front: zeros of their
    # shapes. The trace's own values (init_to_uniform draws) would be the loop's first carry, so
    # XLA would keep their Threefry draws: 0.15 s of the program's 0.7 s compile (measured).
    trace = trace_once(model, model_args, model_kwargs, seed)
    prototype = {
        name: jnp.zeros_like(biject_to(site["fn"].support).inv(site["value"]))
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


# Run once per model, so its compile is most of its cost: at LLVM's lowest level it compiled in
# 0.82 s against 1.14 s (a second compile in one process; 1.8-2.0 s in a first fit at the default
# level), measured by the first-fit profile (benchmarks/bench_first_fit.py --profile). Its run
# reads the data only for the density and gradient at the point it finds (init_to_median's 15
# prior draws do not; another try only where they are not finite), so the slower generated code
# costs nothing even over large data: on the engine benchmark's logistic regressions (51
# coefficients, float32, an idle 2-core machine) the model's set-up took 0.56-0.57 s against
# 0.80-0.89 s at the default level at 10^5 rows, and 0.62-0.68 s against 0.89-0.94 s at 10^6
# (measured). Hence -O0 whatever the data's size, unlike the Laplace init, whose run grows with
# them (vitools.compiling.sized_jit).
_initial_point_program = jax.jit(_initial_point, static_argnums=(0, 1, 2), compiler_options=QUICK)


def initial_point_program(arrays: Any) -> Callable:
    """The jitted :func:`_initial_point` that :func:`model_density` runs for these data arrays
    (one program whatever their size)."""
    return _initial_point_program
