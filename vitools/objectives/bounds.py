r"""Bounds of the log evidence as objectives: the importance-weighted lower bound (IWAE, with the
doubly-reparameterized gradient) and the χ upper bound (CUBO).

With :math:`\log w_i = \log p(x, z_i) - \log q_\phi(z_i)` at S reparameterized draws
:math:`z_i = T_\phi(\epsilon_i)` and :math:`Z = p(x)`,

.. math:: \mathrm{ELBO} \le \mathrm{IWAE}_S = E\Big[\log \tfrac1S \textstyle\sum_i w_i\Big]
          \le \log Z \le \mathrm{CUBO}_n = \tfrac1n \log E_q[w^n] \quad (n \ge 1).

:class:`IWAE` maximises the lower bound (its loss is the negative bound), :class:`ChiSquare`
minimises the upper one. The two meet at q = p, where w is constant.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitools import validate
from vitools.families.base import draw_many, family_hooks
from vitools.objectives.base import at_least_two_draws, importance_info, weighted_cross_entropy
from vitools.objectives.forward_kl import ForwardKL
from vitools.objectives.reverse_kl import _log_weights

__all__ = ["ChiSquare", "IWAE"]


def _log_mean_exp(values: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(values) - jnp.log(values.shape[0])


def _dreg_log_weights(key, params, family, target, num_draws: int) -> jax.Array:
    r"""log p(z_i) - log q_{stop_gradient(φ)}(z_i) at z_i = T_φ(ε_i): gradient through the draws only.

    This is ``_log_weights(..., stl=True)`` for every family: that helper gives families with
    ``sample_with_log_prob`` (flows) log q from the forward pass, which carries φ's score term;
    DReG must drop it, so log q is evaluated at the fixed draw with ``log_prob`` (for an IAF that
    inverts the flow, d sequential network passes per draw).
    """
    rsample_with_log_prob = family_hooks(family).rsample_with_log_prob
    if rsample_with_log_prob is not None:  # the Gaussians: the same, from the draws' noise
        draws, log_q = rsample_with_log_prob(params, key, num_draws, True)
        return jax.vmap(target.log_density)(draws) - log_q
    q = family.distribution(params)
    q_stopped = family.distribution(jax.lax.stop_gradient(params))
    draws = draw_many(q, key, num_draws)
    return jax.vmap(target.log_density)(draws) - jax.vmap(q_stopped.log_prob)(draws)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):  # "no" would read as True
        raise validate.ArgumentTypeError(f"{name} must be True or False, got {value!r}", name)
    return bool(value)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IWAE:
    r"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016), maximised.

    Estimator of the loss: :math:`-\log \frac1S \sum_{i=1}^S w_i`, :math:`\log w_i = \log p(x, z_i) -
    \log q_\phi(z_i)`, :math:`z_i = T_\phi(\epsilon_i)` reparameterized. Its expectation is
    :math:`-\mathrm{IWAE}_S`, a lower bound of log Z that rises with S (S = 1: the ELBO) and is
    itself a biased-low estimate of log Z (bias :math:`\approx \mathrm{Var}(w)/(2 S Z^2)`). It is
    ``RenyiAlpha(alpha=0)``, value and gradient. Its gradient in q's parameters has a
    signal-to-noise ratio that falls like :math:`S^{-1/2}` (Rainforth, Kosiorek, Le, Maddison,
    Igl, Wood & Teh 2018): near q = p the bound is :math:`\log Z - \chi^2(p\|q)/2S` to second
    order, S times flatter than the ELBO, while the noise of the plain gradient (its score term)
    is not. Full-rank fits of a correlated 3-D Gaussian from N(0, I), 1000 steps, seeds 0-2:
    plain IWAE left the mean off by 0.23-0.27 (S = 4) and 0.15-0.45 (S = 16) and the covariance
    by up to 0.42 and 1.65; with ``dreg``, 0.006 and 0.011-0.025; ``ReverseKL`` without STL
    (S = 16) 0.016-0.036 (measured, benchmarks/bench_bounds.py). Hence ``dreg=True`` by default.

    With ``dreg`` the gradient in q's parameters φ is the doubly-reparameterized one (Tucker,
    Lawson, Gu & Maddison 2019):

    .. math:: \nabla_\phi \approx \sum_i \bar w_i^2\, \nabla_z \log w(z_i)\,
              \frac{\partial z_i}{\partial \phi}, \qquad \bar w = \mathrm{softmax}(\log w),

    unbiased for the same expectation as the plain gradient, from the surrogate
    :math:`\sum_i \mathrm{sg}(\bar w_i^2) \log w_i` whose :math:`\log q` has its parameters under
    ``stop_gradient`` (sg). The loss *value* is still the negative bound (the surrogate enters as
    ``s - sg(s)``, of value 0). The gradient in the model's ``numpyro.param`` sites θ (if any) is
    the plain one, :math:`\sum_i \bar w_i \nabla_\theta \log p(x, z_i; \theta)`, from a second
    evaluation of log p at the stopped draws (only for models with such sites). At q = p the
    DReG gradient is exactly zero, as sticking-the-landing's is.

    Refused under data subsampling (``ObjectiveHooks.full_joint``): the bound takes a log-mean-exp
    of the log weights, and a minibatch log density (unbiased, shared by the step's draws) carries
    an error that differs from draw to draw by about sqrt(N / B) nats per posterior sd between
    them, so the weights follow the minibatch's noise and the bound rewards a wide q. Logistic
    regression, N = 10^6, B = 4096, ``IWAE(num_draws=4)``, seeds 0-4: q's sds 7.9-11.2 times the
    posterior's, against 0.8-1.3 for ``ReverseKL`` (measured, benchmarks/bench_subsample.py).

    Flows (families with ``sample_with_log_prob``, e.g. IAF): plain IWAE takes log q from the
    forward pass; DReG is allowed but evaluates log q at each draw with ``log_prob``, which for
    an IAF inverts the flow (d sequential network passes per draw; a reverse-KL step on a
    103-parameter model took 25 ms that way, measured for ``ReverseKL``): correct, slower in
    high dimension. We allow it rather than refuse, because nothing else gives DReG for a flow
    and the cost is small for the low-dimensional curved posteriors flows are chosen for.

    Args:
        num_draws: draws per step (S), a positive integer (NumPy integers too).
        dreg: use the doubly-reparameterized gradient (default), True or False. A mixture family
            (draws that are not reparameterized, stratified instead) needs ``dreg=False``: plain
            IWAE on its stratified draws is SIWAE (Morningstar et al. 2021).

    Raises:
        ValueError: ``num_draws`` is not a positive integer.
        TypeError: ``dreg`` is not a bool.

    Examples:
        >>> fit = vt.fit(model, x, y=y, objective=vt.IWAE(num_draws=32), seed=0)
        >>> fit.objective.name, fit.objective.dreg
        ('iwae', True)
    """

    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    dreg: bool = dataclasses.field(default=True, metadata=dict(static=True))
    name: str = dataclasses.field(default="iwae", metadata=dict(static=True))
    full_joint: ClassVar[bool] = True  # its log-mean-exp of minibatch weights is biased (measured above)

    def __post_init__(self):
        object.__setattr__(self, "num_draws", validate.count(self.num_draws, "IWAE num_draws"))
        object.__setattr__(self, "dreg", _check_bool(self.dreg, "IWAE dreg"))

    def num_density_evals(self, dim: int) -> int:
        return self.num_draws

    def loss(self, key, params, family, target):
        if not self.dreg:
            log_weights = _log_weights(key, params, family, target, self.num_draws, False)
            return -_log_mean_exp(log_weights), importance_info(log_weights)
        if family_hooks(family).stratified_draws is not None:
            raise validate.ArgumentValueError(
                f"IWAE(dreg=True) differentiates through q's draws, which family {family.name!r} draws "
                "by component (stratified), not by reparameterization: use IWAE(dreg=False), the "
                "stratified bound (SIWAE), or ForwardKL",
                "objective",
            )
        has_model_params = bool(target.param_sites)
        # q's path: θ stopped, so the θ-gradient comes only from the term below, with weights w̄.
        path_target = jax.lax.stop_gradient(target) if has_model_params else target
        log_weights = _dreg_log_weights(key, params, family, path_target, self.num_draws)
        weights = jax.nn.softmax(jax.lax.stop_gradient(log_weights))
        surrogate = jnp.sum(weights**2 * log_weights)
        bound = jax.lax.stop_gradient(_log_mean_exp(log_weights)) + (
            surrogate - jax.lax.stop_gradient(surrogate)
        )
        if has_model_params:  # Σ w̄ᵢ ∇θ log p(x, zᵢ; θ), the plain IWAE gradient in θ; value 0
            draws = draw_many(family.distribution(jax.lax.stop_gradient(params)), key, self.num_draws)
            log_p = jax.vmap(target.log_density)(draws)
            bound = bound + jnp.sum(weights * (log_p - jax.lax.stop_gradient(log_p)))
        return -bound, importance_info(log_weights)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChiSquare:
    r"""The χ upper bound CUBO_n, minimised: CHIVI (Dieng, Tran, Ranganath, Paisley & Blei 2017,
    "Variational inference via χ upper bound minimization").

    :math:`\mathrm{CUBO}_n = \frac1n \log E_q[w^n] = \log Z + \frac1n \log(1 + D_{\chi^n}(p\|q))
    \ge \log Z` for n ≥ 1, so minimising it minimises the χⁿ divergence, which is mass-covering:
    it is infinite wherever q has lighter tails than p, so q widens to cover p.

    Loss value: :math:`\frac1n \log \frac1S \sum_i w_i^n` (logsumexp of :math:`n \log w_i`) at
    draws :math:`z_i \sim q`. Gradient: the score-function form of the paper's gradient,
    :math:`\nabla_\phi E_q[w^n] = (1 - n)\, E_q[w^n \nabla_\phi \log q_\phi(z)]`, self-normalized:

    .. math:: \nabla_\phi \approx -\frac{n-1}{n} \sum_i \tilde w_i \nabla_\phi \log q_\phi(z_i),
              \qquad \tilde w = \mathrm{softmax}(n \log w),

    i.e. :func:`~vitools.objectives.base.weighted_cross_entropy` with log weights
    :math:`n \log w`, times :math:`(n-1)/n`: draws and weights carry no gradient (stop_gradient),
    as in ``ForwardKL``, which is this with n = 1 weights. On the same draws it is the paper's
    unbiased estimate :math:`\frac{1-n}{S}\sum_i w_i^n \nabla \log q(z_i)` of
    :math:`\nabla \exp(n\,\mathrm{CUBO}_n)` divided by :math:`n \cdot \frac1S \sum_i w_i^n > 0`:
    the same direction, and finite where :math:`w^n` itself under- or overflows (past
    :math:`|n \log w| \approx 700`; the paper rescales by the largest weight, a factor that also
    changes from step to step).

    Bias: the loss is biased *low* for CUBO_n (Jensen, :math:`E \log \hat L \le \log E \hat L`;
    with heavy-tailed weights a small S can read below log Z), and the gradient is a ratio
    estimate, consistent as S → ∞ with bias O(1/S) that pulls q towards forward KL's answer (the
    weights' tail is under-sampled): a mean-field q on a 2-D Gaussian of correlation 0.9 got sds
    0.94-1.02 at S = 16 and 1.15-1.16 at S = 64, against the marginal sd 1 and the exact χ²
    optimum 1.39 (reverse KL: 0.43; measured, benchmarks/bench_bounds.py).

    Why not the reparameterized gradient :math:`\sum_i \tilde w_i \nabla_\phi \log w(T_\phi(\epsilon_i))`
    (the paper's other form)? Where q is narrower than half p's variance in some direction,
    :math:`E_q[w^2]` is infinite, the finite-S estimate reads low, and its reparameterized
    gradient shrinks q further: on that 2-D Gaussian it collapsed q to sd 0 (loss down to -5e5)
    in 8 of 16 runs from the Laplace start (mean-field and full-rank, S = 16 and 64, rates 0.1
    and 0.01, two seeds) and in 4 of 4 mean-field runs from sd 0.1, while the score form converged
    in 32 of 32 (the same 16, and 16 from sd 0.1; measured): a weighted maximum-likelihood step
    moves q towards its heaviest-weighted draws, i.e. outwards.

    The model's ``numpyro.param`` sites θ (if any) get the self-normalized estimate of
    :math:`\nabla_\theta \log p(x; \theta)` (weights softmax(log w), as ``ForwardKL``'s
    wake-phase term), not CUBO's gradient: minimising an upper bound of the evidence in θ would
    lower the evidence.

    Args:
        num_draws: draws per step (S), an integer >= 2 (NumPy integers too).
        n: the order, a finite number > 1 (2: the χ² divergence).

    Raises:
        TypeError: ``n`` is not a number.
        ValueError: ``num_draws`` is not an integer >= 2 (one draw's self-normalized weight is
            always 1: the gradient would be the draw's own log-likelihood), or ``n`` is NaN,
            infinite or at most 1 (n = 1 is log Z itself, which does not depend on q).

    Examples:
        >>> fit = vt.fit(model, x, y=y, objective=vt.ChiSquare(num_draws=64), family="meanfield")
        >>> fit.objective.name, fit.objective.n
        ('chi2', 2.0)
    """

    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    n: float = dataclasses.field(default=2.0, metadata=dict(static=True))
    name: str = dataclasses.field(default="chi2", metadata=dict(static=True))
    mass_covering: ClassVar[bool] = True  # read by vt.fit's choice of initial Gaussian (measured above)
    full_joint: ClassVar[bool] = True  # E_q[w^n] of a minibatch log p is biased up: no minibatches

    def __post_init__(self):
        object.__setattr__(self, "num_draws", at_least_two_draws(self.num_draws, "ChiSquare num_draws"))
        n = validate.finite(self.n, "ChiSquare n")
        if not n > 1.0:
            raise validate.ArgumentValueError(
                f"ChiSquare n must be greater than 1, got {n}: n = 1 is log Z itself, which does not "
                "depend on q; n = 2 is the χ² divergence",
                "ChiSquare n",
            )
        object.__setattr__(self, "n", n)

    @staticmethod
    def default_learning_rate(dim: int) -> float:
        """Forward KL's rule, ``0.5 / dim`` clipped to [0.005, 0.1]: the gradient is also a
        self-normalized weighted score, noisy at the optimum, and Adam turns that noise into drift.
        Full-rank fits of 2000 steps, S = 16, two seeds (measured, benchmarks/bench_bounds.py):
        gaussian_100 at vt.fit's default rate 0.02 drifted to w1 0.050-0.059, k̂ 0.55-0.65, not
        converged; at 0.005, w1 0.030-0.033, k̂ 0.09-0.12, converged (S = 200: w1 0.029 either
        way); eight_schools_noncentered (d = 10) w1 0.074-0.103 at 0.063 against 0.075-0.096 at
        0.05; radon (d = 14) 0.077-0.104 against 0.071-0.104; banana (d = 2) gets 0.1 either way."""
        return ForwardKL.default_learning_rate(dim)

    def num_density_evals(self, dim: int) -> int:
        return self.num_draws

    def loss(self, key, params, family, target):
        q_stopped = family.distribution(jax.lax.stop_gradient(params))
        draws = jax.lax.stop_gradient(draw_many(q_stopped, key, self.num_draws))
        log_p = jax.vmap(target.log_density)(draws)
        log_weights = log_p - jax.vmap(q_stopped.log_prob)(draws)
        log_q = jax.vmap(family.distribution(params).log_prob)(draws)
        cubo = _log_mean_exp(self.n * jax.lax.stop_gradient(log_weights)) / self.n
        surrogate = (self.n - 1.0) / self.n * weighted_cross_entropy(log_q, self.n * log_weights)
        # θ (numpyro.param sites): Σ w̄ᵢ ∇θ log p(x, zᵢ; θ), w̄ = softmax(log w); a term of value 0.
        weights = jax.nn.softmax(jax.lax.stop_gradient(log_weights))
        model_term = -jnp.sum(weights * (log_p - jax.lax.stop_gradient(log_p)))
        loss = cubo + (surrogate - jax.lax.stop_gradient(surrogate)) + model_term
        return loss, importance_info(log_weights)
