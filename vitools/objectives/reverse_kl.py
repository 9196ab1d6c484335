r"""Reverse KL, KL(q‖p): the negative ELBO, and Rényi-α relatives."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vitools.families.base import Family, draw_many
from vitools.objectives.base import importance_info
from vitools.targets import Target

__all__ = ["ReverseKL", "RenyiAlpha"]


def _check_num_draws(num_draws: Any, who: str) -> None:
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"{who} num_draws must be a positive integer, got {num_draws!r}")


def _log_weights(
    key: jax.Array, params: Any, family: Family, target: Target, num_draws: int, stl: bool
) -> jax.Array:
    """log p(z_i) - log q(z_i) at reparameterized draws z_i = T_params(eps_i).

    With ``stl`` the parameters of the log q term are stop-gradiented ("sticking the landing"):
    the score-function term, whose expectation is zero, is dropped from the gradient.

    A family with ``sample_with_log_prob(params, key)`` (flows) gives each draw's log q from its
    own forward pass: no inverse, but no STL either (dropping the score term needs log q at a
    fixed draw, i.e. the inverse), so such families get the plain reparameterized gradient.
    """
    sample_with_log_prob = getattr(family, "sample_with_log_prob", None)
    if sample_with_log_prob is not None:
        keys = jax.random.split(key, num_draws)
        draws, log_q = jax.vmap(sample_with_log_prob, in_axes=(None, 0))(params, keys)
        return jax.vmap(target.log_density)(draws) - log_q
    q = family.distribution(params)
    q_score = family.distribution(jax.lax.stop_gradient(params)) if stl else q
    draws = draw_many(q, key, num_draws)
    return jax.vmap(target.log_density)(draws) - jax.vmap(q_score.log_prob)(draws)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReverseKL:
    r"""Reverse KL, KL(q‖p), through the negative ELBO (Kingma & Welling 2014; Titsias &
    Lázaro-Gredilla 2014).

    Estimator: :math:`-\frac1S\sum_{i} [\log p(x, z_i) - \log q_\phi(z_i)]` with
    reparameterized draws :math:`z_i = T_\phi(\epsilon_i)`, so gradients flow through the draws.
    With ``stick_the_landing`` (Roeder, Wu & Duvenaud 2017) the parameters inside
    :math:`\log q_\phi` are stop-gradiented; the gradient is then exactly zero when q = p.

    Args:
        num_draws: draws per step (S).
        stick_the_landing: drop the zero-mean score term from the gradient (ignored by families
            with ``sample_with_log_prob``, e.g. IAF, whose log q comes from the forward pass).
    """

    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    stick_the_landing: bool = dataclasses.field(default=True, metadata=dict(static=True))
    name: str = dataclasses.field(default="reverse_kl", metadata=dict(static=True))

    def __post_init__(self):
        _check_num_draws(self.num_draws, "ReverseKL")

    @property
    def num_density_evals(self) -> int:
        return self.num_draws

    def loss(self, key, params, family, target):
        log_weights = _log_weights(key, params, family, target, self.num_draws, self.stick_the_landing)
        return -jnp.mean(log_weights), importance_info(log_weights)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenyiAlpha:
    r"""Rényi α-divergence bound (Li & Turner 2016), reparameterized.

    Estimator: :math:`-\frac{1}{1-\alpha}\log\frac1S\sum_i w_i^{1-\alpha}`, :math:`\log w_i =
    \log p(x,z_i) - \log q_\phi(z_i)`. α → 1 is the negative ELBO (reverse KL); α = 0 is the
    importance-weighted bound (IWAE, Burda et al. 2016); α < 0 leans towards mass-covering.
    Gradients flow through the reparameterized draws and through log q (no stop-gradient).
    """

    alpha: float = dataclasses.field(default=0.5, metadata=dict(static=True))
    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    name: str = dataclasses.field(default="renyi", metadata=dict(static=True))

    def __post_init__(self):
        _check_num_draws(self.num_draws, "RenyiAlpha")
        if self.alpha == 1.0:
            raise ValueError("RenyiAlpha alpha=1 is the ELBO: use ReverseKL")

    @property
    def num_density_evals(self) -> int:
        return self.num_draws

    def loss(self, key, params, family, target):
        log_weights = _log_weights(key, params, family, target, self.num_draws, False)
        scaled = (1.0 - self.alpha) * log_weights
        bound = (jax.nn.logsumexp(scaled) - jnp.log(self.num_draws)) / (1.0 - self.alpha)
        return -bound, importance_info(log_weights)
