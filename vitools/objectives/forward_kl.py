r"""Forward KL, KL(p‖q): mass-covering, by weighted cross-entropy.

H(p) does not depend on q, so minimizing KL(p‖q) is minimizing the cross-entropy
:math:`H(p, q) = -E_p[\log q]`. Both estimators here are :func:`weighted_cross_entropy` on draws
that carry no gradient: draws of q weighted by self-normalized importance weights
(:class:`ForwardKL`), or posterior draws given up front with uniform weights
(:class:`ForwardKLFromDraws`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitools import validate
from vitools.draws import draws_dict, is_draws_container
from vitools.families.base import draw_many, family_hooks
from vitools.importance import MIN_PSIS_DRAWS
from vitools.objectives.base import at_least_two_draws, importance_info, weighted_cross_entropy
from vitools.objectives.psis import psis_smooth
from vitools.targets import Target

__all__ = ["ForwardKL", "ForwardKLFromDraws", "draws_to_flat"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardKL:
    r"""Forward KL by self-normalized importance sampling with q as proposal.

    Estimator (Bornschein & Bengio 2015; Jerfel et al. 2021):

    .. math:: L(\phi) = -\sum_i \bar w_i \log q_\phi(z_i), \quad
              \bar w = \mathrm{softmax}(\log p(x, z_i) - \log r(z_i)),\ z_i \sim r

    where the proposal r is q at the current parameters under ``stop_gradient``. Draws and
    weights carry no gradient, so :math:`\nabla L` is the SNIS estimate of
    :math:`\nabla \mathrm{KL}(p\|q)`.

    Forward KL's weak spot is a proposal narrower than p: the weights collapse onto one draw and
    the fit shrinks further. By default a ``defensive`` fraction of the draws (Hesterberg 1995)
    comes from q widened by ``widen`` (same centre, scale times ``widen``); r is then the
    mixture, stratified, and the weights use the mixture density, so they stay bounded where
    q is too narrow. Families without a ``widened`` method use q alone. Each step reports the
    importance ESS and the log-evidence estimate :math:`\log\frac1S\sum_i w_i` (of the raw weights).

    With ``pareto_smooth`` the softmax weights :math:`\bar w` (in the cross-entropy and in the model
    parameters' term) are replaced by PSIS-smoothed ones (Vehtari, Simpson, Gelman, Yao & Gabry
    2024; :func:`vitools.objectives.psis.psis_smooth`, traced into the step): the largest M =
    min(S/5, 3√S) weights become quantiles of a generalized Pareto fit, truncated at the largest raw
    weight. This bounds the variance a few huge weights give the gradient, at the price of a bias
    that vanishes as S grows (the smoothed tail is a fitted expectation, not the draws' own
    weights); the gradient still stops at the weights. Each step then also reports the Pareto k̂ of
    its weights (``"khat"``), a per-step tail diagnostic (NaN where PSIS cannot fit the tail, -inf
    where the tail weights are equal, see :func:`~vitools.objectives.psis.psis_smooth`).

    Defaults that depend on the dimension d (worked out at trace time; :meth:`resolve` fills
    them in for a given target):
    ``num_draws = max(64, 2 d)``: each step's gradient is a weighted maximum-likelihood fit of q
    on the draws, and a d x d covariance fitted on fewer than d draws is singular (in 100-D, 64
    draws walked a perfect initial fit off to k̂ = 19; measured). ``widen = 1 + sqrt(2 / d)``:
    the two components' densities differ by about d (widen - 1)² nats at typical draws, so a
    fixed factor 2 would put the defensive draws where q has no mass in high dimension.

    Args:
        num_draws: draws per step (S), an integer >= 2 (NumPy integers too); None: max(64, 2 d).
        defensive: fraction of the draws from the widened component, in [0, 1) (0 disables it).
        widen: scale factor of the widened component, a finite number >= 1; None: 1 + sqrt(2 / d).
        pareto_smooth: True: PSIS-smoothed weights and a per-step ``"khat"`` (needs S >= 25);
            False: the raw self-normalized weights. False by default: no clear gain. 2000-step
            fullrank fits, seeds 0/1, W1 to the reference (k̂ of the fitted q), raw vs smoothed:
            banana 0.157/0.152 (1.57/1.30) vs 0.203/0.172 (0.57/0.79); funnel 0.486/0.233
            (1.00/0.89) vs 0.602/0.236 (1.00/0.93); bimodal 0.261/0.262 vs 0.262/0.261; a 10-D
            AR(1) Gaussian 0.020/0.023 vs 0.020/0.023 (measured, benchmarks/bench_psis_forward_kl.py):
            a lower k̂ on banana, a larger W1 on banana and funnel, the same elsewhere.

    Raises:
        TypeError: ``defensive`` or ``widen`` is not a number; ``pareto_smooth`` is not a bool.
        ValueError: ``num_draws`` is not an integer >= 2 (one draw's self-normalized weight is
            always 1), or below 25 with ``pareto_smooth`` (PSIS fits a tail of at least 5 draws),
            ``defensive`` is outside [0, 1), or ``widen`` is NaN, infinite or below 1.

    Examples:
        >>> fit = vt.fit(model, x, y=y, objective=vt.ForwardKL(num_draws=128), seed=0)
        >>> sorted(fit.trace)  # per step, (num_steps,) each
        ['ess', 'log_evidence', 'loss']
        >>> objective = vt.ForwardKL().resolve(fit.target)  # the defaults for dim = 3
        >>> objective.num_draws, round(objective.widen, 3)
        (64, 1.816)
        >>> loss, info = objective.loss(jax.random.key(0), fit.params, fit.family, fit.target)
        >>> loss.shape  # one step's estimate, nats
        ()
    """

    num_draws: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    defensive: float = dataclasses.field(default=0.25, metadata=dict(static=True))
    widen: float | None = dataclasses.field(default=None, metadata=dict(static=True))
    pareto_smooth: bool = dataclasses.field(default=False, metadata=dict(static=True))
    name: str = dataclasses.field(default="forward_kl", metadata=dict(static=True))
    mass_covering: ClassVar[bool] = True  # read by vt.fit's choice of initial Gaussian
    full_joint: ClassVar[bool] = True  # its weights are ratios of full-data joints: no minibatches

    def __post_init__(self):
        if not isinstance(self.pareto_smooth, (bool, np.bool_)):  # "no" would read as True
            raise validate.ArgumentTypeError(
                f"ForwardKL pareto_smooth must be True or False, got {self.pareto_smooth!r}",
                "ForwardKL pareto_smooth",
            )
        object.__setattr__(self, "pareto_smooth", bool(self.pareto_smooth))
        if self.num_draws is not None:
            num_draws = at_least_two_draws(self.num_draws, "ForwardKL num_draws")
            if self.pareto_smooth and num_draws < MIN_PSIS_DRAWS:
                raise validate.ArgumentValueError(
                    f"ForwardKL num_draws={num_draws} is too few for pareto_smooth=True: PSIS fits a "
                    "tail of min(S/5, 3 sqrt(S)) >= 5 draws, so it needs num_draws >= 25",
                    "ForwardKL num_draws",
                )
            object.__setattr__(self, "num_draws", num_draws)
        object.__setattr__(self, "defensive", validate.in_range(self.defensive, "ForwardKL defensive", 0, 1))
        if self.widen is not None:
            object.__setattr__(self, "widen", validate.at_least(self.widen, "ForwardKL widen", 1))

    def resolve(self, target: Target) -> ForwardKL:
        """The same objective with the dimension-dependent defaults filled in."""
        return dataclasses.replace(self, num_draws=self._num_draws(target.dim), widen=self._widen(target.dim))

    def _num_draws(self, dim: int) -> int:
        return self.num_draws if self.num_draws is not None else max(64, 2 * dim)

    def _widen(self, dim: int) -> float:
        return self.widen if self.widen is not None else 1.0 + math.sqrt(2.0 / dim)

    @staticmethod
    def default_learning_rate(dim: int) -> float:
        """``0.5 / dim`` clipped to [0.005, 0.1]: SNIS gradients stay noisy at the optimum (the
        score term does not vanish there, unlike sticking-the-landing reverse KL), and Adam turns
        that noise into steps of about the rate on every coordinate. On the 100-D Gaussian
        starting from the exact answer, a rate of 0.02 drifted to w1 = 0.63 (k̂ = 19) while 0.005
        stayed at w1 = 0.08 (k̂ = 0.17); in 2-D a rate of 0.1 is needed to grow q 4x over a
        mixture in a few thousand steps (measured)."""
        return min(0.1, max(0.005, 0.5 / dim))

    def num_density_evals(self, dim: int) -> int:
        return self._num_draws(dim)

    def proposal_draws(self, key, params, family):
        """Stratified draws of the proposal r and log r at each; no gradient flows."""
        params = jax.lax.stop_gradient(params)
        q = family.distribution(params)
        dim = q.event_shape[-1]
        num_draws = self._num_draws(dim)
        widened = family_hooks(family).widened
        num_wide = int(round(self.defensive * num_draws)) if widened is not None else 0
        if num_wide == 0:
            draws = draw_many(q, key, num_draws)
            return draws, jax.vmap(q.log_prob)(draws)
        wide = widened(params, self._widen(dim))
        key_q, key_wide = jax.random.split(key)
        draws = jnp.concatenate(
            [draw_many(q, key_q, num_draws - num_wide), draw_many(wide, key_wide, num_wide)]
        )
        share = num_wide / num_draws
        log_r = jnp.logaddexp(
            jnp.log1p(-share) + jax.vmap(q.log_prob)(draws),
            jnp.log(share) + jax.vmap(wide.log_prob)(draws),
        )
        return draws, log_r

    def loss(self, key, params, family, target: Target):
        draws, log_r = self.proposal_draws(key, params, family)
        draws = jax.lax.stop_gradient(draws)
        log_p = jax.vmap(target.log_density)(draws)
        log_weights = log_p - log_r
        info = importance_info(log_weights)
        if self.pareto_smooth:  # normalized smoothed log weights: their softmax is exp(smoothed)
            smoothed, info["khat"] = psis_smooth(jax.lax.stop_gradient(log_weights))
        else:
            smoothed = log_weights
        log_q = jax.vmap(family.distribution(params).log_prob)(draws)
        # The model's numpyro.param sites θ (if any): a term of value 0 whose gradient is the SNIS
        # estimate of ∇θ log p(x; θ) = E_p[∇θ log p(x, z; θ)], the wake-phase update of
        # reweighted wake-sleep (Bornschein & Bengio 2015). No gradient reaches q through it.
        weights = jax.nn.softmax(jax.lax.stop_gradient(smoothed))
        model_term = -jnp.sum(weights * (log_p - jax.lax.stop_gradient(log_p)))
        return weighted_cross_entropy(log_q, smoothed) + model_term, info


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardKLFromDraws:
    r"""Forward KL from given posterior draws (e.g. NUTS): maximum likelihood of q on them.

    Estimator: :math:`L(\phi) = -\frac1B\sum_{i \in \text{batch}} \log q_\phi(u_i)`, the
    :func:`weighted_cross_entropy` with uniform weights on a minibatch of B draws picked at
    random each step (all of them when there are at most B). The draws are data (no gradient)
    mapped into the target's frame; the target's density is never evaluated (0 density
    evaluations per step).

    Args:
        draws: a NumPyro ``MCMC`` (after ``run``) or an ArviZ DataTree with a ``posterior``
            group (both read into a dict of arrays at construction, :func:`vitools.draws.draws_dict`),
            a dict of constrained draws (site → array with a leading draw axis), or an array
            ``(num_draws, dim)`` already in the model's flat unconstrained space. They are held as
            pytree leaves; a dict is unconstrained in each step's minibatch, or once for all by
            :meth:`resolve` (``vt.fit`` calls it), which also checks them against the target.
        batch_size: draws per step, a positive integer (NumPy integers too).

    Raises:
        ValueError: ``batch_size`` is not a positive integer; an MCMC that has not run, or dict
            entries without a common draw axis; from :meth:`resolve`, the draws do not fit the
            target (see :func:`draws_to_flat`) or number at most its dimension.
        TypeError: ``draws`` is none of the kinds above.

    Examples:
        >>> objective = vt.ForwardKLFromDraws(mcmc, batch_size=128)  # mcmc: NUTS on the model
        >>> fit = vt.fit(model, x, y=y, objective=objective, family="fullrank", seed=0)
        >>> fit.objective.name
        'forward_kl_draws'
    """

    draws: Any
    batch_size: int = dataclasses.field(default=256, metadata=dict(static=True))
    name: str = dataclasses.field(default="forward_kl_draws", metadata=dict(static=True))
    mass_covering: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(
            self, "batch_size", validate.count(self.batch_size, "ForwardKLFromDraws batch_size")
        )
        if isinstance(self.draws, (list, tuple)):  # nested lists of numbers: a flat array
            object.__setattr__(self, "draws", np.asarray(self.draws, dtype=float))
        # JAX rebuilds the object with placeholder or traced leaves (pytree unflatten): only
        # containers and host data given by a user are read and checked.
        if is_draws_container(self.draws) or _is_host_data(self.draws):
            draws = self.draws
            if is_draws_container(draws) or isinstance(draws, dict):
                draws = {k: np.asarray(v) for k, v in draws_dict(draws).items()}
            elif np.ndim(draws) != 2:
                raise ValueError(f"flat draws must have shape (num_draws, dim), got {np.shape(draws)}")
            object.__setattr__(self, "draws", draws)
        elif isinstance(self.draws, (str, bytes, int, float)):
            draws_dict(self.draws)  # raises the TypeError that lists the accepted kinds

    def num_density_evals(self, dim: int) -> int:
        return 0

    def resolve(self, target: Target) -> ForwardKLFromDraws:
        """The same objective with its draws checked against the target and held as flat draws of
        the model's unconstrained space (unconstrained once, not in every step).

        Raises:
            ValueError: as :func:`draws_to_flat`, or there are at most ``target.dim`` draws.
            TypeError: as :func:`draws_to_flat`.
        """
        flat = draws_to_flat(self.draws, target)
        # The maximum-likelihood covariance of N draws, (1/N) sum (u_i - mean)(u_i - mean)^T, has
        # rank at most N - 1 (centring removes one direction): a full-rank d x d covariance needs
        # N >= d + 1, so N = d draws already let q collapse onto their affine hull.
        if flat.shape[0] <= target.dim:
            raise ValueError(
                f"ForwardKLFromDraws got {flat.shape[0]} draws of a {target.dim}-dimensional target: "
                f"a Gaussian fitted by maximum likelihood to at most {target.dim} draws has a singular "
                f"covariance and collapses onto them; pass at least {target.dim + 1} draws (more for a "
                "useful fit, e.g. a longer MCMC run)"
            )
        return dataclasses.replace(self, draws=flat)

    def loss(self, key, params, family, target):
        draws = self.draws
        num_draws = jax.tree.leaves(draws)[0].shape[0]
        if self.batch_size < num_draws:
            index = jax.random.randint(key, (self.batch_size,), 0, num_draws)
            draws = jax.tree.map(lambda x: x[index], draws)
        draws = jax.lax.stop_gradient(draws)
        if isinstance(draws, dict):  # constrained draws, not resolved: unconstrain this minibatch
            batch = jax.vmap(target.unconstrain)({n: draws[n] for n in target.site_names})
        else:
            batch = jax.vmap(target.from_unconstrained)(draws)
        log_q = jax.vmap(family.distribution(params).log_prob)(batch)
        return weighted_cross_entropy(log_q, jnp.zeros(batch.shape[0])), {}


def _is_host_data(draws: Any) -> bool:
    """Draws given by a user: a dict or array of NumPy / concrete JAX values (not tracers)."""
    leaves = jax.tree.leaves(draws)
    return bool(leaves) and all(
        isinstance(x, (np.ndarray, np.generic))
        or (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer))
        for x in leaves
    )


def draws_to_flat(draws: Any, target: Target) -> jax.Array:
    """Posterior draws in any accepted form → ``(num_draws, dim)`` flat draws of the model's
    unconstrained space (the target's frame is not applied).

    Arrays are taken as draws in the model's flat unconstrained space; dicts, MCMC runs and
    DataTrees hold constrained values (a Dirichlet(4) site's draws have shape ``(4,)``, an
    ``LKJCholesky(3)`` site's ``(3, 3)``: :meth:`Target.constrained_shapes`) and go through the
    model's unconstraining map.

    Raises:
        TypeError: ``draws`` is none of the accepted kinds.
        ValueError: a site is missing or has the wrong shape per draw, a flat array is not
            ``(num_draws, dim)``, an MCMC has not run, or a draw lies outside the support.
    """
    if isinstance(draws, (jax.Array, np.ndarray)):
        flat = jnp.asarray(draws)
        if flat.ndim != 2 or flat.shape[1] != target.dim:
            raise ValueError(f"flat draws must have shape (num_draws, {target.dim}), got {flat.shape}")
        return flat
    values = draws_dict(draws)
    missing = [n for n in target.site_names if n not in values]
    if missing:
        raise ValueError(f"draws lack latent site(s) {missing}; expected {list(target.site_names)}")
    values = {n: jnp.asarray(values[n]) for n in target.site_names}
    for name, shape in target.constrained_shapes().items():
        if values[name].shape[1:] != shape:
            raise ValueError(
                f"draws of site {name!r} have shape {values[name].shape[1:]} per draw, "
                f"the model's (constrained) shape is {shape}"
            )
    flat = jax.jit(jax.vmap(target.density.unconstrain))(values)
    if not bool(jnp.all(jnp.isfinite(flat))):
        raise ValueError("some draws lie outside the model's support (non-finite once unconstrained)")
    return flat
