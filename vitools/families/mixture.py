r"""A mixture of K Gaussians over the flat unconstrained space, for multimodal posteriors.

q(z) = Σ_k π_k N(z; μ_k, L_k L_kᵀ), π = softmax(logits). Forward KL is its natural objective:
ForwardKL's draws carry no gradient and only log q at the draws is differentiated, which the
mixture's density gives directly. Reverse KL and Rényi need reparameterized draws, which a
mixture's sampling is not (the component is a discrete choice); the family's
``stratified_draws`` hook gives them instead S/K reparameterized draws of each component, each
weighted by π_k·K/S (Morningstar, Vikram, Ham, Gallagher & Dillon 2021, "Automatic
differentiation variational inference with mixtures"), which :mod:`vitools.objectives.reverse_kl`
uses.

Where the mixture starts decides which modes it fits: both objectives only see the modes q covers
(forward KL's proposal is q). ``vt.fit`` therefore starts it from a search
(:meth:`GaussianMixture.searched_init`): Pathfinder paths from dispersed points, one component per
mode found (:func:`vitools.mode_search.search_modes`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from vitools import validate
from vitools.families.gaussian import FullRank, FullRankParams, _full_rank_params, _softplus_inverse
from vitools.mode_search import search_modes
from vitools.targets import Target

__all__ = ["GaussianMixture", "MixtureParams"]

# init: the components' centres are the initial Gaussian's plus offsets of about this many of its
# sds (a random direction per component, centred over the components). 2-component forward KL on
# the zoo's bimodal from vt.fit's Laplace start (one mode), 5 seeds: spread 0 found both modes 0/5
# (identical components get identical gradients and never part); 0.1, 0.3, 1 and 3 each 5/5,
# weights within 0.012 of 0.5 and centres within 0.03 (benchmarks/bench_mixture.py spread;
# measured). From the "median" start (scale 0.1) none found both within 2000 steps, whatever the
# spread. 1 sd keeps the components distinct but inside the initial Gaussian.
SPREAD = 1.0
# search_start: Pathfinder paths from dispersed points, PATHS_PER_COMPONENT per component and at
# least MIN_PATHS. Each path lands on one mode's basin; on a target whose K modes have basins of
# equal share, all paths and the initial Gaussian miss a given mode with probability
# (1 - 1/K)^(paths + 1): 2^-9 for K = 2 (8 paths), (2/3)^13 ~ 0.005 for K = 3 (12 paths).
PATHS_PER_COMPONENT, MIN_PATHS = 4, 8


class MixtureParams(NamedTuple):
    logits: jax.Array  # (K,): π = softmax(logits)
    loc: jax.Array  # (K, dim): the components' centres
    raw_tril: jax.Array  # (K, dim, dim): each as FullRankParams.raw_tril (diagonal family: its diagonal)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _mixture_params(
    key: jax.Array, loc: jax.Array, scale_tril: jax.Array, num_components: int, diagonal: bool
) -> MixtureParams:
    """One program (as gaussian.py's inits): the components' start, see :meth:`GaussianMixture.init`."""
    dim = loc.shape[0]
    directions = jax.random.normal(key, (num_components, dim), loc.dtype)
    directions = directions - jnp.mean(directions, axis=0, keepdims=True)  # K = 1: no offset
    offsets = SPREAD / math.sqrt(dim) * directions  # |offset| ~ SPREAD, whatever the dimension
    locs = loc[None, :] + offsets @ scale_tril.T
    if diagonal:  # the marginal sds, as MeanField's init
        raw = jnp.diag(_softplus_inverse(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1))))
    else:
        raw = _full_rank_params(loc, scale_tril).raw_tril
    raw_trils = jnp.broadcast_to(raw, (num_components, dim, dim))
    return MixtureParams(jnp.zeros(num_components, loc.dtype), locs, raw_trils)


def _covariances(scale_trils: np.ndarray) -> np.ndarray:
    return np.einsum("kij,klj->kil", scale_trils, scale_trils)


def _reduce(
    weights: np.ndarray, locs: np.ndarray, covs: np.ndarray, num_components: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runnalls' greedy reduction of a Gaussian mixture to ``num_components`` components (see
    :meth:`GaussianMixture.searched_init`), on the host. A mixture with fewer components gives
    its extra slots one by one to the component of largest weight per copy, and each copy an equal
    share of its weight (one Gaussian, K = 3: three copies of weight 1/3); :func:`_separate` then
    moves the copies apart."""
    weights, locs, covs = list(weights), list(locs), list(covs)

    def merged(i, j):
        w = weights[i] + weights[j]
        a, b = weights[i] / w, weights[j] / w
        diff = locs[i] - locs[j]
        loc = a * locs[i] + b * locs[j]
        cov = a * covs[i] + b * covs[j] + a * b * np.outer(diff, diff)
        return w, loc, cov

    def logdet(cov):
        return np.linalg.slogdet(cov)[1]

    while len(weights) > num_components:
        best, best_cost = None, np.inf
        for i in range(len(weights)):
            for j in range(i + 1, len(weights)):
                w, _, cov = merged(i, j)
                cost = 0.5 * (w * logdet(cov) - weights[i] * logdet(covs[i]) - weights[j] * logdet(covs[j]))
                if cost < best_cost:
                    best, best_cost = (i, j), cost
        i, j = best if best is not None else (0, 1)  # every cost NaN: merge any pair
        w, loc, cov = merged(i, j)
        for index in (j, i):
            del weights[index], locs[index], covs[index]
        weights.append(w), locs.append(loc), covs.append(cov)
    copies = np.ones(len(weights), int)
    for _ in range(num_components - len(weights)):  # fewer: copies of the heaviest per copy
        copies[int(np.argmax(np.asarray(weights) / copies))] += 1
    weights = np.repeat(np.asarray(weights) / copies, copies)
    locs, covs = np.repeat(np.stack(locs), copies, axis=0), np.repeat(np.stack(covs), copies, axis=0)
    return weights / weights.sum(), locs, covs


def _separate(directions: np.ndarray, locs: np.ndarray, trils: np.ndarray) -> np.ndarray:
    """The centres, each moved by ``SPREAD / sqrt(dim) · L_k ε_k`` (``directions`` ε, ``(K, dim)``)
    where it lies within 1 sd of another centre in that one's metric (|L_j⁻¹(μ_k - μ_j)| < 1)."""
    num, dim = locs.shape
    overlaps = np.zeros(num, bool)
    for k in range(num):
        for j in range(num):
            if j != k:
                whitened = np.linalg.solve(trils[j], locs[k] - locs[j])
                overlaps[k] |= bool(np.linalg.norm(whitened) < 1.0)
    offsets = SPREAD / math.sqrt(dim) * np.einsum("kij,kj->ki", trils, directions)
    return locs + np.where(overlaps[:, None], offsets, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    r"""q(z) = Σ_k π_k N(z; μ_k, L_k L_kᵀ): K·(1 + dim + dim(dim+1)/2) parameters
    (K·(1 + 2 dim) with ``diagonal``).

    Parameters (:class:`MixtureParams`): ``logits`` ``(K,)``, π = softmax(logits); ``loc``
    ``(K, dim)``; ``raw_tril`` ``(K, dim, dim)``, component k's Cholesky factor being
    ``FullRank.scale_tril(FullRankParams(loc[k], raw_tril[k]))`` (strict lower part stored times
    sqrt(dim), diagonal through softplus). With ``diagonal`` only the diagonal of each
    ``raw_tril[k]`` is used (the off-diagonal entries get no gradient and stay 0).

    Objectives: ``ForwardKL`` and ``ForwardKLFromDraws`` use ``distribution(params).log_prob``
    (and ``widened``, every component widened, for ForwardKL's defensive draws). ``ReverseKL`` and
    ``RenyiAlpha`` use :meth:`stratified_draws`: a mixture's draws are not reparameterized (the
    component is a discrete choice), so those objectives draw from each component and weight by
    π (Morningstar, Vikram, Ham, Gallagher & Dillon 2021, "Automatic differentiation variational
    inference with mixtures", AISTATS). ``distribution(params).sample`` (``Fit.sample``, the
    diagnostics) draws the component at random; a gradient through those draws raises
    (:func:`vitools.families.base.draw_many`).

    ``Fit.mean_and_covariance`` gives q's exact mean and covariance (the law of total covariance).

    Start: ``vt.fit`` starts the mixture from :meth:`searched_init` (a component on each mode that
    ``num_paths`` Pathfinder paths from dispersed points find, its cost in ``Fit.num_grad_evals``);
    :meth:`init` (copies of the initial Gaussian, moved apart) is the start without a search.

    Args:
        num_components: K, a positive integer (K = 1 is :class:`FullRank`, or :class:`MeanField`
            with ``diagonal``, with the same parameters).
        diagonal: each component a diagonal Gaussian (mean-field) instead of a full-rank one.
        num_paths: paths of the mode search that starts a ``vt.fit`` (:meth:`searched_init`,
            the ``search_start`` hook), an integer >= 0; 0: no search, the start is :meth:`init`'s.
            None: ``max(MIN_PATHS, PATHS_PER_COMPONENT · K)`` (8 for K = 2). K = 1 never searches.

    Raises:
        vitools.validate.ArgumentValueError: ``num_components`` is not a positive integer,
            ``num_paths`` not an integer >= 0 (a ``ValueError``).
        vitools.validate.ArgumentTypeError: ``diagonal`` is not a bool (a ``TypeError``).

    Examples:
        >>> fit = vt.fit(model, x, y=y, family=vt.GaussianMixture(2), objective="forward_kl")
        >>> fit.params.logits.shape, fit.params.loc.shape, fit.params.raw_tril.shape
        ((2,), (2, 3), (2, 3, 3))
        >>> fit.mean_and_covariance()[0].shape  # q's exact mean, in the model's space
        (3,)
    """

    num_components: int = dataclasses.field(default=2, metadata=dict(static=True))
    diagonal: bool = dataclasses.field(default=False, metadata=dict(static=True))
    num_paths: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    name: str = dataclasses.field(default="mixture", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(
            self, "num_components", validate.count(self.num_components, "GaussianMixture num_components")
        )
        if self.num_paths is not None:
            paths = validate.count(self.num_paths, "GaussianMixture num_paths", minimum=0)
            object.__setattr__(self, "num_paths", paths)
        if not isinstance(self.diagonal, (bool, np.bool_)):  # "no" would read as True
            raise validate.ArgumentTypeError(
                f"GaussianMixture diagonal must be True or False, got {self.diagonal!r}",
                "GaussianMixture diagonal",
            )
        object.__setattr__(self, "diagonal", bool(self.diagonal))

    # FamilyHooks. A mixture of full-rank Gaussians is closed under affine maps, so vt.fit may fit
    # it in the frame of the initial Gaussian's full factor, as FullRank; a diagonal one keeps its
    # structure only in the frame of the sds.
    @property
    def whiten(self) -> str:
        return "diagonal" if self.diagonal else "full"

    @property
    def structure(self) -> str:
        return "diagonal" if self.diagonal else "full"

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> MixtureParams:
        """K copies of N(loc, scale_tril scale_trilᵀ) (marginal sds for ``diagonal``), equal
        weights, centres moved apart: μ_k = loc + scale_tril δ_k, δ_k = ``SPREAD`` / sqrt(dim) ·
        (ε_k - mean_j ε_j), ε_k ~ N(0, I) drawn with ``key``. Centring keeps the mixture's mean at
        ``loc`` and makes K = 1 start where :class:`FullRank` starts.

        Identical components would stay identical: every component gets the same gradient, so the
        offsets are what lets them separate onto different modes.
        """
        return _mixture_params(key, loc, scale_tril, self.num_components, self.diagonal)

    @property
    def search_start(self) -> Callable | None:
        """The :class:`~vitools.families.FamilyHooks` ``search_start`` hook: :meth:`searched_init`,
        or None for one component (K = 1 is :class:`FullRank`'s start) or ``num_paths=0``."""
        if self.num_components == 1 or self._num_paths == 0:
            return None
        return self.searched_init

    @property
    def _num_paths(self) -> int:
        if self.num_paths is not None:
            return self.num_paths
        return max(MIN_PATHS, PATHS_PER_COMPONENT * self.num_components)

    def searched_init(
        self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array
    ) -> tuple[MixtureParams, int]:
        r"""A start with a component on each mode the search finds: the ``search_start`` hook.

        :func:`vitools.mode_search.search_modes` runs ``num_paths`` Pathfinder paths (Zhang et al.
        2022) from points drawn uniformly in (-2, 2) of the model's unconstrained space, pools
        their Gaussians with the initial one N(loc, scale_tril scale_trilᵀ) and weights them by
        one importance-weighted EM step (Gaussians on the same mode share its mass). The pool is
        reduced to K components by Runnalls' greedy merge (Runnalls 2007, "Kullback-Leibler
        approach to Gaussian mixture reduction", IEEE TAES): the pair whose moment-matched merge
        loses least, :math:`B_{ij} = \tfrac12[(w_i + w_j)\log|Σ_{ij}| - w_i \log|Σ_i| - w_j
        \log|Σ_j|]`, is merged until K remain, so Gaussians on one mode merge first and
        distinct modes stay apart. Components that still overlap (fewer modes found than K: a
        centre within 1 sd, in the other's metric, of another's) are moved apart as
        :meth:`init` moves its copies (``SPREAD`` sds in a random direction), since identical
        components never part.

        Why: ForwardKL with q as its proposal (and reverse KL, which is mode-seeking) only sees
        the modes q already covers, so a mixture started around one Gaussian fits one mode when
        the others are far: on two unit Gaussians at ±(5, 5), 3 seeds of 3 put both components
        on one mode from :meth:`init`'s start (measured; see ``tests/test_mixture.py``).

        Args:
            key: PRNG key (the search and the offsets).
            target: the target in the frame the fit runs in; the parameters are in that frame.
            loc: the initial Gaussian's mean, ``(dim,)``.
            scale_tril: the initial Gaussian's Cholesky factor, ``(dim, dim)``.

        Returns:
            ``(params, grad_evals)``, the parameters and the search's
                cost in gradient evaluations (``vt.fit`` adds it to ``Fit.num_grad_evals``).

        Raises:
            FloatingPointError: from the search, no Gaussian with a finite importance weight.
        """
        search_key, offset_key = jax.random.split(key)
        modes = search_modes(target, search_key, self._num_paths, loc, scale_tril)
        keep = modes.weights > 0
        weights, locs, covs = _reduce(
            modes.weights[keep], modes.loc[keep], _covariances(modes.scale_tril[keep]), self.num_components
        )
        trils = np.linalg.cholesky(covs)
        locs = _separate(np.asarray(jax.random.normal(offset_key, locs.shape, locs.dtype)), locs, trils)
        dtype = jnp.asarray(loc).dtype
        locs, trils = jnp.asarray(locs, dtype), jnp.asarray(trils, dtype)
        if self.diagonal:  # the marginal sds, as init
            sds = jnp.sqrt(jnp.sum(trils**2, axis=-1))
            raw = jax.vmap(jnp.diag)(_softplus_inverse(sds))
        else:
            raw = jax.vmap(lambda m, t: _full_rank_params(m, t).raw_tril)(locs, trils)
        params = MixtureParams(jnp.asarray(np.log(weights), dtype), locs, raw)
        return params, modes.grad_evals

    def scale_trils(self, params: MixtureParams) -> jax.Array:
        """The components' Cholesky factors ``(K, dim, dim)`` (diagonal matrices with ``diagonal``)."""
        if self.diagonal:
            return jax.vmap(jnp.diag)(self._sds(params))
        return jax.vmap(FullRank.scale_tril)(FullRankParams(params.loc, params.raw_tril))

    @staticmethod
    def _sds(params: MixtureParams) -> jax.Array:
        return jax.nn.softplus(jnp.diagonal(params.raw_tril, axis1=-2, axis2=-1))

    def _components(self, params: MixtureParams, factor: float = 1.0) -> dist.Distribution:
        """The K components, batch shape ``(K,)``, event shape ``(dim,)``; scales times ``factor``."""
        if self.diagonal:
            return dist.Normal(params.loc, factor * self._sds(params), validate_args=False).to_event(1)
        return dist.MultivariateNormal(
            params.loc, scale_tril=factor * self.scale_trils(params), validate_args=False
        )

    def _mixture(self, params: MixtureParams, factor: float = 1.0) -> dist.Distribution:
        mixing = dist.Categorical(logits=params.logits, validate_args=False)
        return dist.MixtureSameFamily(mixing, self._components(params, factor), validate_args=False)

    def distribution(self, params: MixtureParams) -> dist.Distribution:
        """NumPyro's ``MixtureSameFamily``: event shape ``(dim,)``, batch shape ``()``."""
        return self._mixture(params)

    def widened(self, params: MixtureParams, factor: float) -> dist.Distribution:
        """The same mixture with every component's scale times ``factor`` (ForwardKL's defensive
        component)."""
        return self._mixture(params, factor)

    def stratified_draws(
        self, params: MixtureParams, key: jax.Array, num_draws: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        r"""Stratified reparameterized draws (Morningstar et al. 2021): draw i comes from component
        k(i) = i mod K, as ``z_i = μ_k + L_k ε_i`` with ``ε_i`` drawn from key i of
        ``split(key, num_draws)``, and gets the weight ω_i = π_k / n_k, n_k the number of draws of
        component k (π_k·K/S when K divides S). The weights sum to 1 and

        .. math:: \sum_i ω_i f(z_i) = \sum_k π_k \frac{1}{n_k}\sum_{i: k(i) = k} f(z_i)

        is an unbiased estimate of E_q[f] = Σ_k π_k E_{q_k}[f] whose gradient in (μ, L, logits)
        is unbiased too: through the draws for μ_k, L_k, through ω for the logits. With K = 1 the
        draws are :class:`FullRank`'s ``draw_many`` draws from the same key.

        Args:
            params: the mixture's parameters; gradients flow through all three outputs.
            key: PRNG key.
            num_draws: S, at least K (one draw per component).

        Returns:
            ``(draws (S, dim), log_q (S,),
                log_draw_weights (S,))``: log q is the mixture's density at each draw,
                ``log_draw_weights`` = log ω.

        Raises:
            ValueError: ``num_draws`` < K.
        """
        num_components = self.num_components
        if num_draws < num_components:
            raise ValueError(
                f"a stratified estimate needs a draw from each of the mixture's {num_components} "
                f"components, got num_draws={num_draws}: use num_draws >= {num_components}"
            )
        component = np.arange(num_draws) % num_components  # static: which component draws each
        counts = np.bincount(component, minlength=num_components)
        loc, scale = params.loc, (self._sds(params) if self.diagonal else self.scale_trils(params))

        def one(key_i, k):
            if self.diagonal:
                return dist.Normal(loc[k], scale[k], validate_args=False).to_event(1).rsample(key_i)
            return dist.MultivariateNormal(loc[k], scale_tril=scale[k], validate_args=False).rsample(key_i)

        from vitools.sharding import constrain_draws  # split over devices under a mesh (vitools.sharding)

        draws = constrain_draws(jax.vmap(one)(jax.random.split(key, num_draws), jnp.asarray(component)))
        log_q = jax.vmap(self.distribution(params).log_prob)(draws)
        log_pi = jax.nn.log_softmax(params.logits)
        log_draw_weights = log_pi[component] - jnp.log(jnp.asarray(counts[component], log_pi.dtype))
        return draws, log_q, log_draw_weights
