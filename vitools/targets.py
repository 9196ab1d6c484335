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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vitools import validate
from vitools.control_variate import ControlledDensity, Snapshot, snapshot_at
from vitools.data_rows import check_rows
from vitools.frame import Frame
from vitools.model import LogDensityFn, ModelDensity, Site, model_density, unravel

__all__ = ["INIT_ROWS", "Site", "Target"]

# Rows of each subsampling plate that vt.fit's init (Laplace) runs on. Its program evaluates the
# model's gradient ~450 times: logistic regression with 3 coefficients at 10^6 rows, 22.3 s on all
# rows against 0.37 s on 10^4, while its 2000 steps of B = 4096 rows take 2-5 s (measured on a
# loaded 2-core CPU, benchmarks/results/subsample.md). The price: the subset's mode is off the
# full-data one by about sqrt(N / 10^4) posterior sds (its N/M-scaled likelihood is that much
# noisier; 7.1 and 12.8 sds there), which the fit moves across (its curvature, hence the frame's
# scales, is about right): q's mean ended within 1.01 sds of the mode over seeds 0-9 on plain
# minibatches, within 0.01 with vt.fit's snapshot, taken after two full-data steps from this start
# (vitools.control_variate.take_snapshot; benchmarks/results/subsample_control.md).
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
        snapshot: the full data's log density and gradient at one point (a
            :class:`~vitools.control_variate.Snapshot`, in the model's unconstrained space), which
            :meth:`minibatch` uses as a control variate; None (the default): plain minibatches.

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
    snapshot: Snapshot | None = None

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
            check_rows(density, point)
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

        With a :attr:`snapshot` (:meth:`with_snapshot`), ``log_density`` is the minibatch's with
        the Taylor control variate (:mod:`vitools.control_variate`): unbiased likewise, with far
        less noise near the snapshot's point; it costs one value and gradient of the minibatch at
        that point.
        """
        batch = self.density.minibatch(key)
        if self.snapshot is None or not self.subsamples:
            return dataclasses.replace(self, density=batch)
        return dataclasses.replace(self, density=ControlledDensity.of(batch, self.snapshot))

    def with_snapshot(
        self, u: jax.Array | None, covariance: jax.Array | None = None, num_newton_steps: int = 0
    ) -> Target:
        """The same target with a :attr:`snapshot` at ``u`` (``(dim,)``, the model's flat
        unconstrained space; one value and gradient over all rows), or at the point that
        ``num_newton_steps`` quasi-Newton steps with ``covariance`` ``(dim, dim)`` reach from it
        (:func:`~vitools.control_variate.snapshot_at`); without one where ``u`` is None. The target
        itself when it does not subsample.

        Raises:
            ValueError: the model has ``numpyro.param`` sites (optimised with q, they would move
                the full-data log density away from the snapshot's, biasing the estimate).
        """
        if u is None or not self.subsamples:
            return dataclasses.replace(self, snapshot=None)
        if self.param_sites:
            raise ValueError(
                "a snapshot (control variate) needs a model without numpyro.param sites: "
                f"{[name for name, _ in self.param_sites]} are optimised with q"
            )
        snapshot = snapshot_at(self.density, jnp.asarray(u), covariance, num_newton_steps)
        return dataclasses.replace(self, snapshot=snapshot)

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
