r"""Targets: a NumPyro model (or a plain JAX log density) as a flat, unconstrained log density.

A :class:`Target` is what every objective sees: ``log_density(v)`` of one flat draw ``v`` of
shape ``(dim,)``. It holds a density over the model's flat unconstrained space ``u``
(:class:`~vitools.model.ModelDensity` for a NumPyro model, :class:`~vitools.model.LogDensityFn`
for a plain function) and the affine :class:`~vitools.frame.Frame` ``u = shift + scale v`` the
fit runs in (the identity until ``vt.fit`` picks one). Every method works on ``v``:
``log_density(v)`` includes the frame's ``log |det scale|`` and ``log_abs_det_jacobian(v)`` is that
of ``v → constrained``, so densities in the constrained space do not depend on the frame.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from numpyro.infer.util import log_density as numpyro_log_density

from vitools import validate
from vitools.arguments import Static
from vitools.frame import Frame
from vitools.model import LogDensityFn, ModelDensity, Site, model_density, unravel
from vitools.unread_rows import UnreadRows, unread_rows

__all__ = ["INIT_ROWS", "Site", "Target"]

# Rows of each subsampling plate that vt.fit's init (Laplace) runs on. Its program evaluates the
# model's gradient ~450 times: logistic regression with 3 coefficients at 10^6 rows, 22.3 s on all
# rows against 0.37 s on 10^4, while its 2000 steps of B = 4096 rows take 2-5 s (measured on a
# loaded 2-core CPU, benchmarks/results/subsample.md). The price: the subset's mode is off the
# full-data one by about sqrt(N / 10^4) posterior sds (its N/M-scaled likelihood is that much
# noisier; 7.1 and 12.8 sds there), which the fit moves across (its curvature, hence the frame's
# scales, is about right): q's mean ended within 1.01 sds of the mode over seeds 0-9.
INIT_ROWS = 10_000


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """A flat log density in a frame, with the maps of its draws back to named sites.

    Build it with :meth:`from_model` or :meth:`from_log_density`; it is usable at once.

    Attributes:
        density: the density over the model's flat unconstrained space (a pytree: data arrays
            and ``numpyro.param`` values are leaves, the model and site layout static).
        frame: the frame ``u = shift + scale v`` of this target's draws ``v``.
        initial_point: NumPyro's initial point (``init_to_median``), ``(dim,)``, in the frame.

    Examples:
        >>> target = vt.Target.from_model(model, x, y=y)  # model(x, y=None): alpha, beta, sigma
        >>> target.dim, target.initial_point.shape, target.log_density(target.initial_point).shape
        (3, (3,), ())
        >>> {name: value.shape for name, value in target.constrain(target.initial_point).items()}
        {'alpha': (), 'beta': (), 'sigma': ()}
    """

    density: ModelDensity | LogDensityFn
    frame: Frame
    initial_point: jax.Array

    # ----------------------------------------------------------------------------------------
    # construction
    @classmethod
    def from_model(cls, model: Callable, *args: Any, seed: int = 0, **kwargs: Any) -> Target:
        """Target of a NumPyro model's posterior given its arguments.

        The arguments are whatever NumPyro's NUTS takes: arrays, NumPy or pandas values, lists,
        dicts of data, Python numbers. They reach the compiled programs in the first of
        :data:`vitools.arguments.DATA_MODES` under which the model traces: as traced inputs where
        the model only computes with them in JAX (new data of the same shapes then reuse the
        programs), as constants where it needs their values (``np.asarray(data["y"])``,
        ``int(data["K"])``, an ``if`` on the data). ``numpyro.param`` sites are kept as point
        estimates (:attr:`model_params`, at their initial values here; ``vt.fit`` optimises them).

        A model with ``numpyro.plate(..., subsample_size=B)`` (and ``numpyro.subsample`` inside
        it) is evaluated on all rows by every method here; :meth:`minibatch` gives the
        N/B-scaled density of one minibatch, which ``vt.fit``'s loop draws afresh each step.

        Args:
            model: a NumPyro model (a Target is returned as it is).
            *args: the model's positional arguments.
            seed: seed of NumPyro's initial point (``init_to_median`` draws).
            **kwargs: the model's keyword arguments.

        Raises:
            TypeError: ``model`` is not callable, or calling it with the arguments fails.
            ValueError: the model has discrete latent sites, no latent sites, a latent site
                inside a plate with ``subsample_size``, a ``subsample_size`` that is not an
                integer from 1 to the plate's size, an array indexed out of its bounds when a
                subsampling model runs on all rows (data shorter than the plate), observations
                longer than the plate whose extra rows the plate's indices never read (named,
                with the fix; a covariate's such rows warn), or no initial point with a finite
                log density.

        Examples:
            >>> target = vt.Target.from_model(model, x, y=y)
            >>> target.site_names, target.dim
            (('alpha', 'beta', 'sigma'), 3)
        """
        if isinstance(model, Target):
            return model
        density, point = model_density(model, args, kwargs, seed)
        if density.subsamples:
            _check_rows(density, point)
        return cls(density, Frame.identity(point.shape[0], point.dtype), point)

    @classmethod
    def from_log_density(
        cls, log_density_fn: Callable[[jax.Array], jax.Array], dim: int, name: str = "x"
    ) -> Target:
        """Target of a plain JAX log density over R^dim (already unconstrained).

        Args:
            log_density_fn: maps one draw of shape ``(dim,)`` to a scalar, unnormalized log density.
            dim: the dimension, a positive integer.
            name: the site name under which draws are reported.

        Raises:
            TypeError: ``log_density_fn`` is not callable.
            ValueError: ``dim`` is not a positive integer, or the function is not a finite
                scalar at the initial point (zeros).

        Examples:
            >>> target = vt.Target.from_log_density(lambda z: -0.5 * jnp.sum(z**2), dim=2)
            >>> fit = vt.fit(target, seed=0)
            >>> fit.sample(1000, seed=1)["x"].shape  # one site "x" of shape (dim,)
            (1000, 2)
        """
        if not callable(log_density_fn):
            raise TypeError(f"log_density_fn must be callable, got {type(log_density_fn).__name__}")
        dim = validate.count(dim, "dim")
        point = jnp.zeros(dim)
        value = log_density_fn(point)
        if jnp.shape(value) != ():
            raise ValueError(f"log_density_fn must return a scalar, got shape {jnp.shape(value)}")
        if not jnp.isfinite(value):
            raise ValueError("log_density_fn is not finite at the initial point (zeros)")
        density = LogDensityFn(log_density_fn, (Site(name, (dim,), dim),))
        return cls(density, Frame.identity(dim, point.dtype), point)

    # ----------------------------------------------------------------------------------------
    # layout and frame
    @property
    def sites(self) -> tuple[Site, ...]:
        return self.density.sites

    @property
    def dim(self) -> int:
        return sum(s.size for s in self.sites)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    @property
    def model(self) -> Callable | None:
        """The NumPyro model, or None for a plain log density."""
        return self.density.model

    @property
    def model_params(self) -> dict:
        """The ``numpyro.param`` sites' unconstrained values (``{}`` if the model has none)."""
        return self.density.model_params

    @property
    def param_sites(self) -> tuple:
        return self.density.param_sites

    # ----------------------------------------------------------------------------------------
    # data subsampling
    @property
    def subsamples(self) -> bool:
        """Whether the model subsamples data (``numpyro.plate(..., subsample_size=B)``, B < N)."""
        return self.density.subsamples

    def minibatch(self, key: jax.Array) -> Target:
        r"""The same target on one minibatch: B of the N rows of each subsampling plate, drawn
        uniformly with replacement under ``key``, their log likelihood scaled by N / B (NumPyro's
        plate scaling). ``log_density`` is then unbiased for the full-data one at every draw,

        .. math:: E_{\text{batch}}\Big[\log p(z) + \tfrac{N}{B}\textstyle\sum_{j \in \text{batch}}
                  \log p(x_j \mid z)\Big] = \log p(z) + \sum_{j=1}^N \log p(x_j \mid z),

        so a gradient linear in it (the reverse-KL ELBO's) stays unbiased, as in doubly stochastic
        VI (Hoffman, Blei, Wang & Paisley 2013; Titsias & Lázaro-Gredilla 2014); an estimator that
        exponentiates it (importance weights) does not (``ObjectiveHooks.full_joint``). The
        target itself when the model does not subsample. Every map of one draw uses the same
        rows, so draws evaluated on one minibatch share it.
        """
        return dataclasses.replace(self, density=self.density.minibatch(key))

    def subset(self, key: jax.Array, num_rows: int) -> Target:
        """The same target on a fixed random subset of ``num_rows`` rows of each subsampling
        plate (without replacement, scaled by N / ``num_rows``); on all rows where a plate has
        no more. ``vt.fit`` runs a subsampling model's init on ``subset(key, INIT_ROWS)``."""
        return dataclasses.replace(self, density=self.density.subset(key, num_rows))

    def full_data(self) -> Target:
        """The same target on all rows (itself unless it holds a minibatch)."""
        return dataclasses.replace(self, density=self.density.full_data())

    def in_frame(self, frame: Frame) -> Target:
        """The same target with its draws in ``frame`` (``u = frame.forward(v)``)."""
        frame = frame.checked()
        if frame.shift.shape != (self.dim,):
            raise ValueError(f"the frame's dimension is {frame.shift.shape[0]}, the target's {self.dim}")
        point = frame.inverse(self.frame.forward(self.initial_point))
        return dataclasses.replace(self, frame=frame, initial_point=point)

    def to_unconstrained(self, v: jax.Array) -> jax.Array:
        """A flat draw of this target's frame → the model's flat unconstrained space."""
        return self.frame.forward(v)

    def from_unconstrained(self, u: jax.Array) -> jax.Array:
        """A flat draw of the model's unconstrained space → this target's frame."""
        return self.frame.inverse(u)

    def unravel(self, u: jax.Array) -> dict[str, jax.Array]:
        """Flat vector (of the model's unconstrained space) → dict of site values, in model order."""
        return unravel(self.sites, u)

    def constrained_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one draw of each latent site in the model's (constrained) space: ``(4,)`` for
        a Dirichlet over 4 categories, whose unconstrained :attr:`Site.shape` is ``(3,)``; ``(3, 3)``
        for an ``LKJCholesky(3)``, unconstrained ``(3,)``. Computed abstractly (nothing runs)."""
        shapes = jax.eval_shape(self.constrain, self.initial_point)
        return {s.name: tuple(shapes[s.name].shape) for s in self.sites}

    # ----------------------------------------------------------------------------------------
    # numpyro.param sites
    def with_model_params(self, model_params: dict) -> Target:
        """The same target with other (unconstrained) values of its ``numpyro.param`` sites."""
        return dataclasses.replace(self, density=self.density.with_model_params(model_params))

    def point_estimates(self) -> dict[str, jax.Array]:
        """The ``numpyro.param`` sites' values in the model's (constrained) space."""
        return self.density.point_estimates()

    # ----------------------------------------------------------------------------------------
    # densities and maps of one draw
    def log_density(self, v: jax.Array) -> jax.Array:
        """Unnormalized log density (nats, a scalar) of one flat draw ``(dim,)`` of this target's
        frame, the Jacobians of the frame and of the model's transforms included."""
        return self.density.log_density(self.frame.forward(v)) + self.frame.log_abs_det()

    def constrain(self, v: jax.Array, deterministic: bool = False) -> dict[str, jax.Array]:
        """Constrained site values of one flat draw ``(dim,)``: site name → one draw of the site,
        in the model's space (supports re-evaluated at this draw; ``deterministic=True`` adds the
        deterministic sites)."""
        return self.density.constrain(self.frame.forward(v), deterministic)

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        """Flat draw ``(dim,)`` in this target's frame given constrained latent values of one draw.

        Raises:
            ValueError: a latent site is missing from ``values``.
        """
        missing = [n for n in self.site_names if n not in values]
        if missing:
            raise ValueError(f"draws lack latent site(s) {missing}; expected {list(self.site_names)}")
        return self.frame.inverse(self.density.unconstrain(values))

    def in_support(self, values: dict[str, jax.Array]) -> jax.Array:
        """Whether one draw of constrained latent values lies in the model's support: each site's
        support evaluated at this draw (a dependent support with this draw's own values)."""
        return self.density.in_support(values)

    def log_joint(self, values: dict[str, jax.Array]) -> jax.Array:
        """Unnormalized log joint (nats, a scalar) at one draw's constrained values (no Jacobian)."""
        return self.density.log_joint(values)

    def log_abs_det_jacobian(self, v: jax.Array) -> jax.Array:
        """log |det| of the Jacobian of the map flat draw ``(dim,)`` → constrained values, for one
        draw (a scalar).

        It is the difference of the unconstrained and constrained log densities, so it is right
        for any transform NumPyro applies, dependent supports included.
        """
        return self.density.log_abs_det_jacobian(self.frame.forward(v)) + self.frame.log_abs_det()


def _full_data_log_density(density: ModelDensity, u: jax.Array) -> jax.Array:
    return density.full_data().log_density(u)


# ``(error, log density)``; keyed by the density's static parts (the model), so compiled once a model
_full_data_out_of_bounds = jax.jit(checkify.checkify(_full_data_log_density, errors=checkify.index_checks))


def _check_rows(density: ModelDensity, u: jax.Array) -> None:
    """Run a subsampling model once on all rows and refuse data whose rows do not match its plates.

    A minibatch gathers ``y[index]`` with JAX, which clamps an index past an array's end: a ``y``
    shorter than the plate (``y[:100]`` with 50,000 rows of ``x``) fits without a word, every
    row past the 100th reading ``y[99]``. On all rows every index of the plate is gathered once,
    so JAX's index checks (``checkify.index_checks``) see any array that is shorter than its plate
    (``numpyro.subsample`` checks its own). One compiled full-data evaluation: 0.26 CPU s of
    ``from_model``'s 0.95 for a 50,000-row logistic regression, 0.31 of 1.48 at 10^6 rows, 0.02
    once compiled (the next target of the model; measured, loaded 2-core CPU).

    A ``y`` longer than the plate (1200 labels, ``plate("data", len(x), ...)`` over 1000 rows of
    ``x``) fits without a word too: ``y[index]`` never reads its last 200 rows. Its program, traced
    before it is compiled (the same trace: the call reuses it), shows every gather of a data
    array by the plate's indices, and :func:`vitools.unread_rows.unread_rows` reports an array whose
    rows some such gathers read and none reads the rest (``numpyro.subsample`` checks its own).
    Its walk, the plates' index arithmetic run in NumPy, adds 0.012-0.02 CPU s at 10^6 rows
    (``y[idx]`` logistic regression; 0.002 at 10^4; 0.035 to find a ``y`` of 1.2 x 10^6) and
    no trace: ``from_model``'s median over 6 calls, 1.25-1.29 CPU s against 1.23-1.27 without
    it in three runs (measured, loaded 2-core CPU).

    Raises:
        ValueError: naming the array, its rows, the plate and the fix (unread observations); or
            the array or plates and JAX's out-of-bounds message.

    Warns:
        UserWarning: a covariate's rows past the plate's are never read (held-out rows, say).
    """
    # An error where the unread rows are observations (the array reaches an observed site's value,
    # _reaches_observations): they reach nothing vitools computes (vt.fit, its draws and
    # predictions, and NUTS on full_data_model all run the plate's rows), and a warning in a
    # script's output would let the fit go on silently wrong. A warning where they are covariates
    # (an x holding held-out rows past the plate's, read as x[idx]: a fresh user's model, refused
    # before): the fit is right for the observations it has. Lagged reads (y[idx] with y[idx + 1]),
    # group-level covariates (z[group[idx]]), prediction grids and arrays used whole are neither
    # (tests/test_subsample.py).
    traced = _full_data_out_of_bounds.trace(density, u)  # its inputs: density.data's leaves first
    names, arrays = _data_arrays(density)
    constants = arrays[len(density.data) :]
    unread = unread_rows(traced.jaxpr, len(density.data), density.plates, constants)
    for found in unread:
        observed = _reaches_observations(density, u, found.position)
        message = _unread_rows_message(names[found.position], arrays[found.position].shape, found, observed)
        if observed:
            raise ValueError(message)
        warnings.warn(message, UserWarning, skip_file_prefixes=validate.VITOOLS_FILES)  # the user's line
    error, _ = _full_data_out_of_bounds(density, u)
    message = error.get()
    if message:
        plates = ", ".join(f"{p.name!r} ({p.size} rows)" for p in density.plates)
        found = message.splitlines()[0].strip().rstrip(".")
        shape = re.search(r"array of shape (\([^)]*\))", found)  # JAX names the shape, not the array
        named = [
            n for n, a in zip(names, arrays, strict=True) if shape and str(np.shape(a)) == shape.group(1)
        ]
        which = f"{' or '.join(named)} (shape {shape.group(1)})" if named else "an array"
        raise ValueError(
            f"{which} is shorter than the subsampling plate(s) {plates}: run on all of their rows, the "
            f"model indexes it out of its bounds ({found}), and in a minibatch JAX would clamp the index "
            "and fit wrong data silently; pass as many rows as the plate has (e.g. y as long as x), or "
            "size the plate by the shorter array"
        )


def _unread_rows_message(name: str, shape: tuple, found: UnreadRows, observed: bool) -> str:
    """``y (shape (1200,)) has 1200 rows, gathered by ... plate 'data' (1000 rows): rows past 1000
    ... are never read ...; pass y[:1000] or size the plate by len(y)``; for a covariate
    (``observed`` False), that this is as meant for held-out rows."""
    shape = tuple(shape)
    rows, unread = shape[found.axis], found.unread
    plate = " and ".join(f"{p.name!r} ({p.size} rows)" for p in found.plates)
    along = "" if found.axis == 0 else f" along axis {found.axis}"
    what = f"{name} (shape {shape}) has {rows} rows{along}, gathered by the indices of subsampling plate"
    what = f"{what} {plate}"
    if np.array_equal(unread, np.arange(unread[0], rows)):  # a tail: the plate is sized by a shorter array
        head = f"{name}[:{unread[0]}]" if found.axis == 0 else f"its first {unread[0]} rows{along}"
        length = f"len({name})" if found.axis == 0 else f"{name}.shape[{found.axis}]"
        which, fix = f"rows past {unread[0]}", f"pass {head} or size the plate by {length}"
    else:
        listed = ", ".join(map(str, unread[:5])) + (", ..." if unread.size > 5 else "")
        which, fix = f"rows {listed}", "pass only the rows the model reads, or read every row"
    never = f"{what}: {which} ({unread.size} of {rows}) are never read"
    if observed:
        return f"{never}: observations the fit would ignore without a word; {fix}"
    return (
        f"{never} (they reach no observed site): if they are rows left out on purpose (held-out rows), "
        f"this is as meant; else {fix}"
    )


def _reaches_observations(density: ModelDensity, u: jax.Array, position: int) -> bool:
    """Whether data array ``position`` reaches an observed site's value: the observed values of an
    eager full-data run of the model at ``u`` change when its values change (each row plus 1 to
    7 by its position, negated for booleans: not an affine map, which a standardised ``y`` of
    0/1 labels would hide). An array the model closes
    over, or a run that fails on the changed values, counts as reaching them (the error stands).
    Two eager runs, only for an array with unread rows."""
    if position >= len(density.data):
        return True
    full = density.full_data()

    def observations(data: tuple) -> list[np.ndarray]:
        model = dataclasses.replace(full, data=data)
        args, kwargs = model.arguments()
        with warnings.catch_warnings():  # NumPyro warns of the changed values outside a support
            warnings.simplefilter("ignore")
            trace = numpyro_log_density(model._model(), args, kwargs, model.constrain(u))[1]
        return [np.asarray(s["value"]) for s in trace.values() if s["type"] == "sample" and s["is_observed"]]

    array = np.asarray(full.data[position])
    pattern = (np.arange(array.shape[0]) % 7 + 1).reshape((-1,) + (1,) * (array.ndim - 1))
    changed = ~array if array.dtype == bool else (array + pattern).astype(array.dtype)
    try:
        before = observations(full.data)
        after = observations(full.data[:position] + (jnp.asarray(changed),) + full.data[position + 1 :])
    except Exception:  # the user's model on other values: whatever it raises, the error stands
        return True
    return any(
        a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        for a, b in zip(before, after, strict=True)
    )


def _data_arrays(density: ModelDensity) -> tuple[list[str], tuple]:
    """``(names, arrays)`` of the model's data arrays: the traced ones (``density.data``), then the
    JAX arrays it closes over (static arguments). A name is the parameter's (``y``, ``x``) with
    the path inside it (``data['y']``); ``argument 0`` where the model's signature does not say."""
    static = density.static_data
    positions = jax.tree.unflatten(static.treedef, list(range(len(static.leaves))))
    model = density.model
    while hasattr(model, "fn"):  # the user's model inside NumPyro's handlers and SubsampledModel
        model = model.fn
    try:
        parameters = [
            p.name
            for p in inspect.signature(model).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # a callable without a signature Python can read
        parameters = []
    traced, closed = [], []
    for (kind, first, *rest), leaf in jax.tree_util.tree_flatten_with_path(positions)[0]:
        if kind.idx == 1:  # a keyword argument
            name = str(first.key) + jax.tree_util.keystr(tuple(rest))
        elif first.idx < len(parameters):
            name = parameters[first.idx] + jax.tree_util.keystr(tuple(rest))
        else:
            name = f"argument {first.idx}" + jax.tree_util.keystr(tuple(rest))
        value = static.leaves[leaf]
        if value is None:
            traced.append(name)
        elif isinstance(value, Static) and isinstance(value.value, jax.Array):
            closed.append((name, value.value))
    names = traced + [name for name, _ in closed]
    return names, tuple(density.data) + tuple(array for _, array in closed)
