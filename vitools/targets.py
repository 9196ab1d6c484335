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
import hashlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import init_to_median, init_to_uniform
from numpyro.infer.util import (
    constrain_fn,
    find_valid_initial_params,
    log_density,
    potential_energy,
    unconstrain_fn,
)

__all__ = ["Site", "Target"]


class Site(NamedTuple):
    """One latent site: its name, shape in the model, and size in the flat vector."""

    name: str
    shape: tuple[int, ...]
    size: int


class _Hashable:
    """Wraps an unhashable static object (a model, a constraint) so it can sit in a pytree's
    static metadata: keyed by identity."""

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hashable) and other.value is self.value


class _Static:
    """A model argument held as static metadata (the model sees it as given), keyed by content.

    Arrays and pandas objects are keyed by a digest of their values, so a compiled program is
    reused for equal data and never for changed data (keyed by identity, a dict of data edited
    in place between two fits would reuse the first fit's program and data). Other unhashable
    objects are keyed by identity.
    """

    def __init__(self, value: Any):
        self.value = value
        self.key = _content_key(value)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and other.key == self.key


def _content_key(value: Any) -> Any:
    if _is_array(value) and np.asarray(value).dtype != object:
        values = np.ascontiguousarray(np.asarray(value))
        digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
        return ("array", values.dtype.str, values.shape, digest)
    if type(value).__module__.startswith("pandas"):
        import pandas as pd

        try:
            rows = pd.util.hash_pandas_object(value, index=True).to_numpy()
        except TypeError:  # e.g. unhashable cells
            return ("id", id(value))
        names = tuple(map(str, getattr(value, "columns", [getattr(value, "name", None)])))
        digest = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()
        return ("pandas", type(value).__name__, names, digest)
    if isinstance(value, constraints.Constraint):  # unhashable, but equal when their parameters are
        leaves, treedef = jax.tree.flatten(value)
        return ("constraint", treedef, tuple(_content_key(leaf) for leaf in leaves))
    if _try_hash(value):
        return ("value", type(value), value)
    return ("id", id(value))


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


# How a model's array arguments reach the compiled programs, tried in this order; the first mode
# in which the model traces is kept. "traced": every array is an input of the compiled programs,
# so new data of the same shapes reuse them. "floats": only floating arrays of rank >= 1 are,
# integer/bool arrays and scalars are constants (a plate size `K`, group indices used for
# shapes, a flag in an `if`). "closed": every argument is a constant the model sees exactly as
# given, as NumPyro's NUTS and SVI close over theirs (numpy on the data, `int(data["N"])`,
# Python control flow on data values); the programs are then reused for equal data only.
DATA_MODES = ("traced", "floats", "closed")


def _traced_in(mode: str, x: Any) -> bool:
    if not _is_array(x):
        return False
    if mode == "traced":
        return True
    if mode == "floats":
        return np.ndim(x) >= 1 and jnp.issubdtype(jnp.result_type(x), jnp.floating)
    return False


class _StaticData:
    """The static part of a model's arguments: their tree and the static leaves (None marks a
    traced leaf), hashed once (jit hashes a pytree's static metadata on every call)."""

    __slots__ = ("treedef", "leaves", "_hash")

    def __init__(self, treedef: Any, leaves: tuple):
        self.treedef, self.leaves = treedef, leaves
        self._hash = hash((treedef, leaves))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _StaticData)
            and self._hash == other._hash
            and self.treedef == other.treedef
            and self.leaves == other.leaves
        )


def _split_data(args: tuple, kwargs: dict, mode: str = "traced") -> tuple[tuple, _StaticData]:
    """The model's arguments as ``(traced arrays, static part)`` under a :data:`DATA_MODES` mode."""
    leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=lambda x: x is None)
    arrays = tuple(jnp.asarray(x) for x in leaves if _traced_in(mode, x))
    static = tuple(
        None if _traced_in(mode, x) else (x if _try_hash(x) and not _is_array(x) else _Static(x))
        for x in leaves
    )
    return arrays, _StaticData(treedef, static)


def _try_hash(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _join_data(arrays: tuple, static: _StaticData) -> tuple[tuple, dict]:
    it = iter(arrays)
    leaves = [next(it) if s is None else (s.value if isinstance(s, _Static) else s) for s in static.leaves]
    return jax.tree.unflatten(static.treedef, leaves)


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
        arrays, static, trace = _trace_in_first_mode(model, args, kwargs, seed)
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
        _check_no_subsampling(trace)
        # jit keys its cache on the static arguments; an unhashable callable is keyed by identity.
        init, model_params, ok = _initial_point(
            model if _try_hash(model) else _Hashable(model), static, seed, arrays
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
            (s["name"], _Static(s["kwargs"].get("constraint", constraints.real)))
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
        return _join_data(self.data, self.static_data)

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
        model = handlers.substitute(handlers.seed(self._model, 0), data=latent)  # draws nothing
        trace = handlers.trace(model).get_trace(*args, **kwargs)
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
def _initial_point(model: Callable, static: tuple, seed: int, arrays: tuple) -> tuple[dict, dict, jax.Array]:
    """NumPyro's ``find_valid_initial_params`` (init_to_median), compiled as one program:
    ``(latent values, unconstrained numpyro.param values, ok)``.

    Run eagerly it dispatches every op of the model on its own, and each new op compiles: 158
    small compilations, 2.9 s for a 10,000-row logistic regression, against one program here
    (measured). ``jax.jit`` keeps the program for the next call with the same model, static
    arguments, seed and data shapes.
    """
    model = model.value if isinstance(model, _Hashable) else model
    model_args, model_kwargs = _join_data(arrays, static)
    # Under jit NumPyro needs the unconstrained parameters' structure up front.
    trace = _trace_once(model, model_args, model_kwargs, seed)
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


def _check_no_subsampling(trace: dict) -> None:
    """Plates with ``subsample_size`` are refused with what to do (vitools fits the full-data
    posterior; NumPyro's own error would point at SVI or HMCECS)."""
    for site in trace.values():
        if site["type"] == "plate" and site["args"][1] is not None and site["args"][1] < site["args"][0]:
            size, subsample = site["args"]
            raise ValueError(
                f"plate {site['name']!r} subsamples {subsample} of {size} (subsample_size={subsample}); "
                "vitools does not subsample data yet: drop subsample_size to fit on all "
                f"{size} (every step then evaluates the whole likelihood)"
            )


def _trace_in_first_mode(model: Callable, args: tuple, kwargs: dict, seed: int) -> tuple[tuple, Any, dict]:
    """``(arrays, static, trace)`` in the first of :data:`DATA_MODES` in which the model traces.

    A mode fails when the model needs a concrete value of a traced argument (``np.asarray``,
    ``int(...)``, an ``if`` or a shape on the data); the closed mode runs the model on its
    arguments as given, so what still fails there fails under NUTS too, and its error is raised.
    """
    tried, error = set(), None
    for mode in DATA_MODES:
        arrays, static = _split_data(args, kwargs, mode)
        if (len(arrays), static) in tried:  # nothing changes from the mode before
            continue
        tried.add((len(arrays), static))
        try:
            return arrays, static, _trace_model(model, arrays, static, seed)
        except Exception as err:  # the last mode tried runs the model on its arguments as given
            error = err
    raise _call_error(error, args, kwargs) from error


def _call_error(err: Exception, args: tuple, kwargs: dict) -> Exception:
    """The model failed on its arguments as given: say so, with a hint for pandas inputs (their
    arithmetic with a JAX value converts it to NumPy, which a traced value refuses)."""
    leaves = jax.tree.leaves((args, kwargs))
    pandas = [type(x).__name__ for x in leaves if type(x).__module__.startswith("pandas")]
    hint = ""
    if pandas and isinstance(err, jax.errors.TracerArrayConversionError):
        hint = (
            f"; an argument is a pandas {pandas[0]}, whose arithmetic with JAX values fails (under "
            "NumPyro's NUTS too): pass its values, e.g. series.to_numpy()"
        )
    if not isinstance(err, TypeError) and not hint:
        return err
    return TypeError(f"calling the model with the given arguments failed: {err}{hint}")


def _trace_model(model: Callable, arrays: tuple, static: Any, seed: int) -> dict:
    """One abstract trace of the model, for its sites' names, kinds and distributions.

    Values come from NumPyro's ``init_to_uniform`` where it applies, so improper priors
    (``ImproperUniform``, which cannot be sampled) trace too. The model runs under
    ``jax.eval_shape`` with its data as abstract arrays, as it will run inside the compiled
    loop: no op is dispatched or compiled (eagerly, each new op compiles). The values in the
    returned trace are therefore abstract; only the sites' static parts are meant to be read.
    """
    captured = {}

    def run(arrays):
        model_args, model_kwargs = _join_data(arrays, static)
        captured["trace"] = _trace_once(model, model_args, model_kwargs, seed)
        return ()

    jax.eval_shape(run, arrays)
    return captured["trace"]


def _trace_once(model: Callable, args: tuple, kwargs: dict, seed: int) -> dict:
    seeded = handlers.seed(model, seed)
    try:
        with jax.numpy_rank_promotion("allow"):
            return handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform)).get_trace(
                *args, **kwargs
            )
    except Exception:  # e.g. a discrete site, which init_to_uniform cannot place: plain draws
        return handlers.trace(seeded).get_trace(*args, **kwargs)
