r"""Markovian score climbing: forward KL with a conditional importance sampling kernel.

Self-normalized importance sampling (:class:`~vitools.objectives.ForwardKL`) estimates the
forward-KL gradient with a bias of order 1/S that does not vanish as the fit runs: with few draws
its fixed point is narrower than the forward-KL optimum. Markovian score climbing (Naesseth,
Lindsten & Blei 2020, "Markovian score climbing: variational inference with KL(p‖q)", NeurIPS)
keeps one draw from step to step and moves it with a Markov kernel that leaves the posterior
invariant; the draws then follow p in the limit and the gradient steps are asymptotically
unbiased (stochastic approximation with Markovian noise).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitools import validate
from vitools.families.base import draw_many
from vitools.objectives.base import at_least_two_draws, importance_info, weighted_cross_entropy
from vitools.objectives.forward_kl import ForwardKL
from vitools.targets import Target

__all__ = ["MarkovianScoreClimbing"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MarkovianScoreClimbing:
    r"""Forward KL by Markovian score climbing with the conditional importance sampling (CIS)
    kernel (Naesseth, Lindsten & Blei 2020, Algorithm 1 with the kernel of their section 3).

    Each step, given the retained draw :math:`z^{(1)} = z_{k-1}` carried in the loop's state:
    draw :math:`z^{(2)},\dots,z^{(S)} \sim q` at the current parameters (no gradient), weight all
    S draws by :math:`w_i = p(x, z^{(i)}) / q(z^{(i)})`, pick :math:`J \sim \mathrm{Cat}(\bar w)`
    and retain :math:`z_k = z^{(J)}`. The CIS kernel leaves p invariant whatever q is, so the
    retained draws form a Markov chain targeting p. The loss is the Rao-Blackwellized
    :math:`-\sum_i \bar w_i \log q_\phi(z^{(i)})` (the expectation of :math:`-\log q_\phi(z_k)`
    over J; Naesseth et al. section 3.1), or with ``rao_blackwell=False`` the single-draw
    :math:`-\log q_\phi(z_k)` of Algorithm 1. Draws and weights carry no gradient: the gradient is
    the score of q at draws that follow p in the limit, so unlike SNIS the fixed point is the
    forward-KL optimum whatever S (the retained draw is what removes the 1/S bias).

    The first retained draw is a draw of the initial q. A model's ``numpyro.param`` sites get the
    same weighted wake-phase gradient as in :class:`ForwardKL`.

    Args:
        num_draws: draws per step (S, the retained one included), an integer >= 2 (NumPy
            integers too); None: ``max(64, 2 d)`` as :class:`ForwardKL`.
        rao_blackwell: average the score over the kernel's weights (True) or use the selected
            draw only (False, the paper's Algorithm 1: noisier, same fixed point).

    Raises:
        ValueError: ``num_draws`` is not an integer >= 2 (with one draw the kernel never moves).
        TypeError: ``rao_blackwell`` is not a bool.

    Examples:
        >>> fit = vt.fit(model, x, y=y, objective=vt.MarkovianScoreClimbing(num_draws=64), seed=0)
        >>> fit.objective.name
        'msc'
    """

    num_draws: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    rao_blackwell: bool = dataclasses.field(default=True, metadata=dict(static=True))
    name: str = dataclasses.field(default="msc", metadata=dict(static=True))
    mass_covering: ClassVar[bool] = True
    full_joint: ClassVar[bool] = True  # the CIS kernel keeps p invariant with exact weights only

    def __post_init__(self):
        if self.num_draws is not None:
            why = "the retained draw and at least one new draw, or the kernel never moves"
            num_draws = at_least_two_draws(self.num_draws, "MarkovianScoreClimbing num_draws", why)
            object.__setattr__(self, "num_draws", num_draws)
        if not isinstance(self.rao_blackwell, (bool, np.bool_)):
            raise validate.ArgumentTypeError(
                f"MarkovianScoreClimbing rao_blackwell must be True or False, got {self.rao_blackwell!r}",
                "MarkovianScoreClimbing rao_blackwell",
            )
        object.__setattr__(self, "rao_blackwell", bool(self.rao_blackwell))

    default_learning_rate = staticmethod(ForwardKL.default_learning_rate)  # the same noisy score

    def resolve(self, target: Target) -> MarkovianScoreClimbing:
        """The same objective with the dimension-dependent default filled in."""
        return dataclasses.replace(self, num_draws=self._num_draws(target.dim))

    def _num_draws(self, dim: int) -> int:
        return self.num_draws if self.num_draws is not None else max(64, 2 * dim)

    def num_density_evals(self, dim: int) -> int:
        return self._num_draws(dim)  # S - 1 new draws and the retained one (p may have param sites)

    def init_state(self, key, params, family, target) -> jax.Array:
        """The first retained draw: one draw of the initial q, ``(dim,)``."""
        return jax.lax.stop_gradient(family.distribution(params).sample(key))

    def loss(self, key, params, family, target):
        """The loss from a fresh draw of q as the retained one (for callers without the loop's
        state, e.g. a one-off evaluation); the fit itself uses :meth:`stateful_loss`."""
        key_init, key_step = jax.random.split(key)
        loss, info, _ = self.stateful_loss(
            key_step, params, family, target, self.init_state(key_init, params, family, target), 0.0
        )
        return loss, info

    def stateful_loss(self, key, params, family, target, retained, progress):
        key_new, key_pick = jax.random.split(key)
        q_fixed = family.distribution(jax.lax.stop_gradient(params))
        num_draws = self._num_draws(target.dim)
        new = draw_many(q_fixed, key_new, num_draws - 1)
        draws = jax.lax.stop_gradient(jnp.concatenate([retained[None, :], new]))
        log_p = jax.vmap(target.log_density)(draws)
        log_weights = log_p - jax.vmap(q_fixed.log_prob)(draws)
        pick = jax.random.categorical(key_pick, jax.lax.stop_gradient(log_weights))
        log_q = jax.vmap(family.distribution(params).log_prob)(draws)
        if self.rao_blackwell:
            loss = weighted_cross_entropy(log_q, log_weights)
        else:
            loss = -log_q[pick]
        weights = jax.nn.softmax(jax.lax.stop_gradient(log_weights))
        model_term = -jnp.sum(weights * (log_p - jax.lax.stop_gradient(log_p)))  # as ForwardKL's
        info = importance_info(log_weights)
        info["moved"] = (pick != 0).astype(log_weights.dtype)  # the kernel's acceptance rate
        return loss + model_term, info, draws[pick]
