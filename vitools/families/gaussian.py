r"""Gaussian families over the flat unconstrained space.

Positive quantities are parameterized through ``softplus`` (as NumPyro's ``AutoNormal`` does),
so every parameter lives in R and any optax optimizer applies.

The distributions are built with ``validate_args=False``: their parameters are valid by
construction, and NumPyro's default validation evaluates its constraint masks eagerly while the
loop is traced, 21 small XLA compilations (~0.4 s) in a process's first fit (measured).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from vitools import validate
from vitools.targets import Target

__all__ = ["MeanField", "FullRank", "LowRank"]


def _softplus_inverse(x: jax.Array) -> jax.Array:
    return x + jnp.log(-jnp.expm1(-x))


def _check_whiten(value, name: str) -> None:
    """The ``whiten`` hook's values (:class:`vitools.families.FamilyHooks`)."""
    if not (value is False or value in ("full", "diagonal")):
        raise validate.ArgumentValueError(f"{name} must be 'full', 'diagonal' or False, got {value!r}", name)


class MeanFieldParams(NamedTuple):
    loc: jax.Array
    raw_scale: jax.Array


class FullRankParams(NamedTuple):
    loc: jax.Array
    raw_tril: jax.Array  # strict lower part is sqrt(dim) x the Cholesky factor; diagonal through softplus


class LowRankParams(NamedTuple):
    loc: jax.Array
    raw_factor: jax.Array  # (dim, rank): sqrt(rank) x the covariance factor W
    raw_diag: jax.Array  # softplus(raw_diag) is the diagonal scale


def _location_scale_draws(
    loc: jax.Array, scale: jax.Array, key: jax.Array, num_draws: int, stop_gradient: bool
) -> tuple[jax.Array, jax.Array]:
    r"""Reparameterized draws :math:`z_i = \mu + L\epsilon_i` of N(μ, L Lᵀ) and log q at each, from
    the noise :math:`\epsilon_i` itself: ``(draws (num_draws, dim), log_q (num_draws,))``. ``scale``
    is L, ``(dim, dim)`` lower-triangular, or the sds ``(dim,)`` of a diagonal L. The draws are
    those of NumPyro's ``rsample`` with one key per draw (:func:`vitools.families.draw_many`).

    Why not ``log_prob`` at the draw: it solves :math:`L^{-1}(z - \mu)` back, and in float32 that
    loses ε to rounding where L is ill-conditioned or far below μ. On radon (a centred
    hierarchical model; float32, seed 3), a full-rank q in the funnel's neck (sds 5e-4-1.3 in the
    fit's frame, 300 steps) read log q -5e12 to -1.3e16 at its own draws, against log p -7e5 to
    -2e7: a loss of -1e15 that Adam followed further in (-1.2e21 after 2000 steps), and which won
    vt.fit's start race (pilot score -3e14 against the simple start's 175) (measured). From ε the
    value is exact: :math:`-\tfrac12\|\epsilon\|^2 - \sum_j \log L_{jj} - \tfrac d2\log 2\pi`.

    ``stop_gradient``: log q is :math:`\log q_{\bar\phi}(z_i)`, the parameters stop-gradiented
    and the draw not ("sticking the landing", Roeder et al. 2017; DReG). Its noise is written
    :math:`\epsilon + \bar L^{-1}[(\mu - \bar\mu) + (L - \bar L)\epsilon]`, where the
    bracket is exactly 0 in value (bars: stop-gradiented) and carries
    :math:`\partial\mu + \partial L\,\epsilon = \partial z`: the same value, and the same
    gradient as :math:`\bar L^{-1}(z - \bar\mu)`. Without it, the gradient is the plain
    reparameterized one: :math:`\epsilon` is constant and only :math:`\log\det L` moves.
    """
    from vitools.sharding import constrain_draws  # split over devices under a mesh (vitools.sharding)

    diagonal = scale.ndim == 1

    def apply(factor, eps):  # factor @ eps, one draw, as NumPyro's rsample writes it
        return eps * factor if diagonal else jnp.squeeze(jnp.matmul(factor, eps[..., None]), -1)

    keys = jax.random.split(key, num_draws)
    eps = constrain_draws(jax.vmap(lambda k: jax.random.normal(k, loc.shape, loc.dtype))(keys))
    draws = jax.vmap(lambda e: loc + apply(scale, e))(eps)
    fixed = jax.lax.stop_gradient(scale) if stop_gradient else scale
    noise = eps
    if stop_gradient:
        moved = jax.vmap(lambda e: (loc - jax.lax.stop_gradient(loc)) + apply(scale - fixed, e))(eps)
        if diagonal:
            back = moved / fixed[None, :]
        else:
            back = jax.scipy.linalg.solve_triangular(fixed, moved.T, lower=True).T
        noise = eps + back
    log_det = jnp.sum(jnp.log(fixed if diagonal else jnp.diagonal(fixed)))
    log_q = -0.5 * jnp.sum(noise**2, axis=-1) - log_det - 0.5 * loc.shape[0] * jnp.log(2.0 * jnp.pi)
    return draws, log_q


# The two inits below are jitted: one program each, not 5-8 op-by-op compilations (~15 ms each)
# in a process's first fit.
@jax.jit
def _mean_field_params(loc: jax.Array, scale_tril: jax.Array) -> MeanFieldParams:
    scale = jnp.sqrt(jnp.sum(scale_tril**2, axis=-1))
    return MeanFieldParams(loc, _softplus_inverse(scale))


@jax.jit
def _full_rank_params(loc: jax.Array, scale_tril: jax.Array) -> FullRankParams:
    diag = jnp.diagonal(scale_tril)
    raw = jnp.sqrt(loc.shape[0]) * jnp.tril(scale_tril, -1) + jnp.diag(_softplus_inverse(diag))
    return FullRankParams(loc, raw)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MeanField:
    """Independent Gaussians, q = N(loc, diag(scale²)): 2·dim parameters (mean-field ADVI;
    Kucukelbir, Tran, Ranganath, Gelman & Blei 2017, "Automatic differentiation variational
    inference", JMLR).

    Parameters (:class:`MeanFieldParams`, in the frame ``vt.fit`` runs in): ``loc`` ``(dim,)`` and
    ``raw_scale`` ``(dim,)``, with ``scale = softplus(raw_scale)``. Fits in the frame of the
    initial Gaussian's standard deviations (``whiten="diagonal"``).

    Args:
        name: the name ``vt.fit(family=...)`` knows it by (``"meanfield"``).
        structure: the covariance the Laplace start scores its candidates with, ``"diagonal"``
            (default: as this family can hold) or ``"full"``.

    Raises:
        vitools.validate.ArgumentValueError: ``structure`` is not ``"diagonal"`` or ``"full"``.

    Examples:
        >>> fit = vt.fit(model, x, y=y, family=vt.MeanField())  # or family="meanfield"
        >>> fit.params.loc.shape, fit.params.raw_scale.shape
        ((3,), (3,))
    """

    name: str = dataclasses.field(default="meanfield", metadata=dict(static=True))
    # vt.fit's Laplace init scores its candidates as diagonal Gaussians (see vitools.laplace).
    structure: str = dataclasses.field(default="diagonal", metadata=dict(static=True))

    def __post_init__(self):
        validate.choice(self.structure, "MeanField structure", ("diagonal", "full"))

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> MeanFieldParams:
        return _mean_field_params(loc, scale_tril)

    def distribution(self, params: MeanFieldParams) -> dist.Distribution:
        return dist.Normal(params.loc, jax.nn.softplus(params.raw_scale), validate_args=False).to_event(1)

    def rsample_with_log_prob(
        self, params: MeanFieldParams, key: jax.Array, num_draws: int, stop_gradient: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Draws and log q from their noise (:class:`vitools.families.FamilyHooks`)."""
        scale = jax.nn.softplus(params.raw_scale)
        return _location_scale_draws(params.loc, scale, key, num_draws, stop_gradient)

    def widened(self, params: MeanFieldParams, factor: float) -> dist.Distribution:
        return dist.Normal(
            params.loc, factor * jax.nn.softplus(params.raw_scale), validate_args=False
        ).to_event(1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FullRank:
    """q = N(loc, L Lᵀ) with a Cholesky factor L: dim + dim(dim+1)/2 parameters.

    The strict lower triangle is stored times sqrt(dim). Adam moves every parameter by about the
    learning rate per step whatever its gradient's size, and a row of L has up to dim entries:
    unscaled, a row's variance would move dim times faster than a diagonal entry (in 100-D a
    rate of 0.1 then throws a perfect initial fit off by orders of magnitude; measured).

    Full-rank ADVI (Kucukelbir, Tran, Ranganath, Gelman & Blei 2017, "Automatic differentiation
    variational inference", JMLR). Parameters (:class:`FullRankParams`, in the frame ``vt.fit``
    runs in): ``loc`` ``(dim,)`` and ``raw_tril`` ``(dim, dim)`` (:meth:`scale_tril` gives L).

    Args:
        name: the name ``vt.fit(family=...)`` knows it by (``"fullrank"``).
        whiten: the frame ``vt.fit`` optimises in: ``"full"`` (default; the initial Gaussian's
            Cholesky factor, as the family is closed under affine maps), ``"diagonal"`` (its
            standard deviations) or False (the model's own unconstrained space).

    Raises:
        vitools.validate.ArgumentValueError: ``whiten`` is not ``"full"``, ``"diagonal"`` or
            False.

    Examples:
        >>> fit = vt.fit(model, x, y=y, family=vt.FullRank())  # or family="fullrank"
        >>> vt.FullRank.scale_tril(fit.params).shape
        (3, 3)
    """

    name: str = dataclasses.field(default="fullrank", metadata=dict(static=True))
    # The family is closed under affine maps, so vt.fit may undo the initial correlations too
    # (when its initial Gaussian sits at a mode; see vitools.start.starting_point).
    whiten: str | bool = dataclasses.field(default="full", metadata=dict(static=True))

    def __post_init__(self):
        _check_whiten(self.whiten, "FullRank whiten")

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> FullRankParams:
        return _full_rank_params(loc, scale_tril)

    @staticmethod
    def scale_tril(params: FullRankParams) -> jax.Array:
        """L, ``(dim, dim)`` lower-triangular with a positive diagonal, in the fit's frame."""
        raw = params.raw_tril
        offdiag = jnp.tril(raw, -1) / jnp.sqrt(raw.shape[0])
        return offdiag + jnp.diag(jax.nn.softplus(jnp.diagonal(raw)))

    def distribution(self, params: FullRankParams) -> dist.Distribution:
        return dist.MultivariateNormal(params.loc, scale_tril=self.scale_tril(params), validate_args=False)

    def rsample_with_log_prob(
        self, params: FullRankParams, key: jax.Array, num_draws: int, stop_gradient: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Draws and log q from their noise (:class:`vitools.families.FamilyHooks`)."""
        return _location_scale_draws(params.loc, self.scale_tril(params), key, num_draws, stop_gradient)

    def widened(self, params: FullRankParams, factor: float) -> dist.Distribution:
        return dist.MultivariateNormal(
            params.loc, scale_tril=factor * self.scale_tril(params), validate_args=False
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LowRank:
    """q = N(loc, W Wᵀ + diag(d²)), W of shape (dim, rank): dim·(rank + 2) parameters; the
    factor covariance of Ong, Nott & Smith 2018 ("Gaussian variational approximation with a
    factor covariance structure", JCGS), NumPyro's ``AutoLowRankMultivariateNormal``.

    Parameters (:class:`LowRankParams`, in the frame ``vt.fit`` runs in): ``loc`` ``(dim,)``,
    ``raw_factor`` ``(dim, min(rank, dim))`` (:meth:`cov_factor` gives W) and ``raw_diag``
    ``(dim,)`` with ``d = softplus(raw_diag)``. Fits in the frame of the initial Gaussian's
    standard deviations (``whiten="diagonal"``).

    Args:
        rank: columns of W, a positive integer (capped at the dimension).
        name: the name ``vt.fit(family=...)`` knows it by (``"lowrank"``).

    Raises:
        vitools.validate.ArgumentValueError: ``rank`` is not a positive integer.

    Examples:
        >>> fit = vt.fit(model, x, y=y, family=vt.LowRank(rank=2))
        >>> vt.LowRank.cov_factor(fit.params).shape  # (dim, rank)
        (3, 2)
    """

    rank: int = dataclasses.field(default=5, metadata=dict(static=True))
    name: str = dataclasses.field(default="lowrank", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "rank", validate.count(self.rank, "LowRank rank"))

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> LowRankParams:
        """Top ``rank`` principal directions of the initial covariance, the rest on the diagonal."""
        rank = min(self.rank, loc.shape[0])
        cov = scale_tril @ scale_tril.T
        eigvals, eigvecs = jnp.linalg.eigh(cov)  # ascending
        factor = eigvecs[:, -rank:] * jnp.sqrt(jnp.clip(eigvals[-rank:], 0.0))[None, :]
        # Keep at least a tenth of each variance on the diagonal so no direction starts degenerate.
        residual = jnp.diagonal(cov) - jnp.sum(factor**2, axis=-1)
        diag_var = jnp.maximum(residual, 0.1 * jnp.diagonal(cov))
        factor = factor * jnp.sqrt(0.9)
        return LowRankParams(loc, jnp.sqrt(rank) * factor, _softplus_inverse(jnp.sqrt(diag_var)))

    @staticmethod
    def cov_factor(params: LowRankParams) -> jax.Array:
        """W, ``(dim, rank)``; stored times sqrt(rank) for the reason given in :class:`FullRank`."""
        return params.raw_factor / jnp.sqrt(params.raw_factor.shape[1])

    def distribution(self, params: LowRankParams) -> dist.Distribution:
        diag = jax.nn.softplus(params.raw_diag) ** 2
        return dist.LowRankMultivariateNormal(params.loc, self.cov_factor(params), diag, validate_args=False)

    def widened(self, params: LowRankParams, factor: float) -> dist.Distribution:
        diag = (factor * jax.nn.softplus(params.raw_diag)) ** 2
        return dist.LowRankMultivariateNormal(
            params.loc, factor * self.cov_factor(params), diag, validate_args=False
        )
