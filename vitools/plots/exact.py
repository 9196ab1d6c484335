r"""Exact densities of a Gaussian fit in the coordinates a plot shows, instead of a KDE of its draws.

A Gaussian q = N(m, S) lives in the model's flat unconstrained space u (``Fit.mean_and_covariance``).
A scalar parameter x that is one coordinate u_k under an elementwise bijection x = T(u_k)
(identity, exp for a scale, sigmoid and affine for an interval, ...) has the marginal density

.. math:: q_x(x) = N(T^{-1}(x); m_k, S_{kk}) \, |d T^{-1}/dx|

and a pair (x_1, x_2) = (T_1(u_i), T_2(u_j)) has N_2((T_1^{-1}(x_1), T_2^{-1}(x_2)); m, S) times
the two Jacobians. Both are evaluated on grids that are uniform in u and mapped through T, so no
inverse is needed and the nodes are dense where q's mass is. Parameters of other transforms
(a simplex, a correlation Cholesky factor), supports that depend on other sites, and deterministic
sites are not one coordinate: the plots use a KDE of their draws.

On a log axis the plotted coordinate is y = log x, and densities are of log x: q_y(y) = x q_x(x).

HDR contours. The highest-density region of probability p is {q ≥ c_p}, where the level c_p is set
so that the region holds p. It depends on the coordinates the density is written in, through the
Jacobian: the image under T of Gaussian's HDR in u (the ellipse whose Mahalanobis distance² is the
chi-square(2) p-quantile) holds probability p in any coordinates, but it is the HDR of the plotted
density only where the map u → plotted coordinate has a constant Jacobian (an affine T on a linear
axis, exp on a log axis). A KDE contour of another fit's draws (``arviz_stats`` ``kde2d``) is the
HDR of that fit's density in the plotted coordinates, so the Gaussian contours are too. Where the
Jacobian is constant, c_p is the density at the chi-square ellipse (exact); where it varies, c_p
is set by quadrature of q over the grid (the cells of highest plotted density, summed in u with q's
own weights, until they hold p; on the 240² grid the region's probability is off by up to 2e-3,
measured against the chi-square levels where both apply).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import Transform, biject_to
from numpyro.infer.util import log_density

from vitools.model import ModelDensity
from vitools.result import Fit
from vitools.targets import Target

__all__ = ["Coordinate", "GaussianDensity", "coordinates", "is_gaussian"]

GRID_SDS = 7.0  # marginal grids span m ± 7 sd in u: every quantile from 1e-12 to 1 - 1e-12
MARGINAL_GRID = 561
PAIR_GRID = 241  # a 240² grid over ± 7 sd: nodes 0.06 sd apart
# A Jacobian (log |d plotted / du|) that varies less than this (relative) over the grid is constant:
# float32 rounding of exp on a log axis is ~1e-7, a varying one changes by O(1) over ± 7 sd.
CONSTANT = 1e-5


class Coordinate(NamedTuple):
    """How one scalar parameter (a label such as ``theta[3]``) is reached from u.

    Attributes:
        site, shape, position: the latent site, its shape and the element's C-order position in it.
        index: the element's coordinate in the flat unconstrained vector, or None where the
            parameter is not one coordinate under an elementwise bijection.
        transform: NumPyro's bijection of the site's support (None: not elementwise).
        positive: the support is (0, ∞) (or [0, ∞)): a scale, for which a log axis may suit.
    """

    site: str
    shape: tuple[int, ...]
    position: int
    index: int | None
    transform: Transform | None
    positive: bool

    def through(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x, log |dx/du|)`` at unconstrained values ``u`` ``(n,)`` of this coordinate."""
        shape = self.shape

        def one(value):
            full = jnp.zeros(math.prod(shape), jnp.result_type(value)).at[self.position].set(value)
            full = full.reshape(shape)
            x = self.transform(full)
            log_det = jnp.broadcast_to(self.transform.log_abs_det_jacobian(full, x), shape)
            return jnp.ravel(x)[self.position], jnp.ravel(log_det)[self.position]

        x, log_det = jax.vmap(one)(jnp.asarray(u))
        return np.asarray(x, dtype=float), np.asarray(log_det, dtype=float)


def _labels(site: str, shape: tuple[int, ...]) -> list[str]:
    """The labels :func:`vitools.trees.flatten_draws` gives the site's elements, in C order."""
    if not shape:
        return [site]
    return [f"{site}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _positive(support: Any) -> bool:
    """Whether a NumPyro support is (0, ∞) or [0, ∞): ``positive``, ``softplus_positive``,
    ``greater_than(0)``, ``nonnegative`` (their ``lower_bound`` is 0 and they have no upper one)."""
    lower = getattr(support, "lower_bound", None)
    upper = getattr(support, "upper_bound", None)
    return lower is not None and upper is None and bool(np.all(np.asarray(lower) == 0))


def _elementwise(support: Any) -> Any:
    """The support without ``to_event``'s reinterpretation (``IndependentConstraint``): a vector
    site ``Normal(0, 1).expand([3]).to_event(1)`` is real in each coordinate, and read as not
    elementwise its marginals were drawn as smoothed densities, captioned "not one coordinate
    of q" (a user's report)."""
    while isinstance(support, dist.constraints._IndependentConstraint):
        support = support.base_constraint
    return support


def _supports(target: Target, u: jax.Array) -> dict[str, Any]:
    """Each latent site's support, read from a trace of the model at the flat unconstrained ``u``."""
    density = target.density
    args, kwargs = density.arguments()
    model = density.model
    if density.param_sites:  # as ModelDensity runs it: numpyro.param sites at their fitted values
        model = handlers.substitute(model, data=density.point_estimates())
    trace = log_density(model, args, kwargs, density.constrain(u))[1]
    return {s.name: trace[s.name]["fn"].support for s in target.sites}


def coordinates(target: Target) -> dict[str, Coordinate]:
    """Label → :class:`Coordinate` for every element of the target's latent sites.

    A site is elementwise where its support's bijection maps scalars to scalars (NumPyro's
    ``event_dim`` 0) and does not depend on other sites: the model is traced at two points (the
    initial point and one 0.5 further on every coordinate) and the bijection must map a probe to
    the same values at both (``Uniform(0, a)`` with a latent ``a`` does not).
    """
    if not isinstance(target.density, ModelDensity):  # a plain log density: one real site
        (site,) = target.sites
        identity = biject_to(dist.constraints.real)
        labels = _labels(site.name, site.shape)
        return {
            label: Coordinate(site.name, site.shape, k, k, identity, False) for k, label in enumerate(labels)
        }
    u_a = target.to_unconstrained(target.initial_point)
    supports_a, supports_b = _supports(target, u_a), _supports(target, u_a + 0.5)
    shapes = target.constrained_shapes()
    out: dict[str, Coordinate] = {}
    offset = 0
    for site in target.sites:
        support = _elementwise(supports_a[site.name])
        transform = biject_to(support)
        elementwise = (
            transform.domain.event_dim == 0
            and transform.codomain.event_dim == 0
            and shapes[site.name] == site.shape
        )
        if elementwise:
            probe = jnp.linspace(-1.3, 1.7, site.size).reshape(site.shape)
            other = biject_to(_elementwise(supports_b[site.name]))
            elementwise = bool(jnp.allclose(transform(probe), other(probe), rtol=1e-9, atol=0.0))
        for k, label in enumerate(_labels(site.name, shapes[site.name])):
            index = offset + k if elementwise else None
            kept = transform if elementwise else None
            out[label] = Coordinate(site.name, site.shape, k, index, kept, _positive(support))
        offset += site.size
    return out


def is_gaussian(q: dist.Distribution) -> bool:
    """Whether q (a family's distribution) is a Gaussian: NumPyro's ``MultivariateNormal``,
    ``LowRankMultivariateNormal`` or independent ``Normal``\\ s (``Normal(...).to_event(1)``)."""
    if isinstance(q, dist.Independent):
        q = q.base_dist
    return isinstance(q, dist.MultivariateNormal | dist.LowRankMultivariateNormal | dist.Normal)


def _constant(log_det: np.ndarray) -> bool:
    return bool(np.ptp(log_det) < CONSTANT * max(1.0, float(np.max(np.abs(log_det)))))


def _plotted(coordinate: Coordinate, u: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(x, log |d plotted / du|)``: the plotted coordinate is x, or log x on a log axis."""
    x, log_det = coordinate.through(u)
    if log:
        with np.errstate(divide="ignore"):
            log_det = log_det - np.log(x)
    return x, log_det


@dataclasses.dataclass(frozen=True)
class GaussianDensity:
    """A Gaussian fit's exact marginal densities, in the coordinates a plot shows.

    Build it with :meth:`from_fit`. ``mean`` ``(dim,)`` and ``cov`` ``(dim, dim)`` are q's over the
    model's flat unconstrained space; ``coordinates`` from :func:`coordinates`.
    """

    mean: np.ndarray
    cov: np.ndarray
    coordinates: dict[str, Coordinate]

    @classmethod
    def from_fit(cls, fit: Fit, coords: dict[str, Coordinate] | None = None) -> GaussianDensity | None:
        """The fit's exact density, or None where q is not Gaussian (IAF, a flow guide)."""
        if not is_gaussian(fit.family.distribution(fit.params)):
            return None
        mean, cov = fit.mean_and_covariance()
        return cls(mean, cov, coordinates(fit.target) if coords is None else coords)

    def has(self, label: str) -> bool:
        """Whether ``label`` has an exact density (one coordinate under an elementwise bijection)."""
        coordinate = self.coordinates.get(label)
        return coordinate is not None and coordinate.index is not None

    def marginal(self, label: str, log: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(x, density)`` of q's marginal of ``label`` (of log x where ``log``), along a grid
        of m ± 7 sd in u mapped to x (x decreases along it for a decreasing bijection)."""
        coordinate = self.coordinates[label]
        mean, sd = self.mean[coordinate.index], math.sqrt(self.cov[coordinate.index, coordinate.index])
        z = np.linspace(-GRID_SDS, GRID_SDS, MARGINAL_GRID)
        x, log_det = _plotted(coordinate, mean + sd * z, log)
        return x, np.exp(-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - math.log(sd) - log_det)

    def pair(
        self, labels: tuple[str, str], logs: tuple[bool, bool], probs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, log_density, log_levels)``: q's joint log density of the two labels in the
        plotted coordinates on the grid ``x (n,)`` × ``y (n,)`` (``log_density[j, i]`` at
        ``(x[i], y[j])``, both increasing), and the levels of its HDRs of probability ``probs``
        (see the module docstring), as ``matplotlib``'s ``contour`` takes them."""
        coords = [self.coordinates[label] for label in labels]
        index = [c.index for c in coords]
        mean, cov = self.mean[index], self.cov[np.ix_(index, index)]
        sds = np.sqrt(np.diag(cov))
        z = np.linspace(-GRID_SDS, GRID_SDS, PAIR_GRID)
        (x, log_det_x), (y, log_det_y) = (
            _plotted(c, m + s * z, log) for c, m, s, log in zip(coords, mean, sds, logs, strict=True)
        )
        u = np.stack(np.meshgrid(mean[0] + sds[0] * z, mean[1] + sds[1] * z), axis=-1)  # [j, i] = (u_i, u_j)
        delta = u - mean
        mahalanobis = np.einsum("...i,ij,...j->...", delta, np.linalg.inv(cov), delta)
        log_q_u = -0.5 * mahalanobis - math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(cov)[1]
        log_density = log_q_u - log_det_x[None, :] - log_det_y[:, None]
        probs = np.asarray(probs, dtype=float)
        if _constant(log_det_x) and _constant(log_det_y):
            # The HDR is the chi-square(2) ellipse, mapped: its Mahalanobis distance² is
            # -2 log(1 - p), the chi-square(2) p-quantile, and the Jacobian only shifts the level.
            log_levels = (
                np.log1p(-probs) - math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(cov)[1]
                - log_det_x[0] - log_det_y[0]
            )  # fmt: skip
        else:  # q's mass by quadrature in u (cells of equal area there), highest plotted density first
            order = np.argsort(log_density, axis=None)[::-1]
            mass = np.cumsum(np.exp(log_q_u.ravel()[order]))
            mass /= mass[-1]
            log_levels = log_density.ravel()[order][np.searchsorted(mass, probs)]
        if x[-1] < x[0]:  # a decreasing bijection: contour wants increasing coordinates
            x, log_density = x[::-1], log_density[:, ::-1]
        if y[-1] < y[0]:
            y, log_density = y[::-1], log_density[::-1, :]
        return x, y, log_density, log_levels
