r"""Reverse KL, KL(q‖p): the negative ELBO, and Rényi-α relatives."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitools import validate
from vitools.families.base import Family, draw_many, family_hooks
from vitools.objectives.base import importance_info
from vitools.targets import Target

__all__ = ["ReverseKL", "RenyiAlpha"]


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
    sample_with_log_prob = family_hooks(family).sample_with_log_prob
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
        num_draws: draws per step (S), a positive integer (NumPy integers too).
        stick_the_landing: drop the zero-mean score term from the gradient (ignored by families
            with ``sample_with_log_prob``, e.g. IAF, whose log q comes from the forward pass).

    Raises:
        ValueError: ``num_draws`` is not a positive integer.
        TypeError: ``stick_the_landing`` is not a bool.
    """

    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    stick_the_landing: bool = dataclasses.field(default=True, metadata=dict(static=True))
    name: str = dataclasses.field(default="reverse_kl", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "num_draws", validate.count(self.num_draws, "ReverseKL num_draws"))
        if not isinstance(self.stick_the_landing, (bool, np.bool_)):  # "no" would read as True
            raise validate.ArgumentTypeError(
                f"ReverseKL stick_the_landing must be True or False, got {self.stick_the_landing!r}",
                "ReverseKL stick_the_landing",
            )
        object.__setattr__(self, "stick_the_landing", bool(self.stick_the_landing))

    def num_density_evals(self, dim: int) -> int:
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
    importance-weighted bound (IWAE, Burda et al. 2016); α > 1 is more mode-seeking than the ELBO.
    α < 0 is refused: the bound is then an *upper* bound of log p(x), and maximising it does not
    fit q (α = -0.5 on a 4-D N(0, I), 2000 steps: variances 2.0-10.5 against 1, over 3 seeds;
    measured); for a mass-covering fit use ``ForwardKL``.
    Gradients flow through the reparameterized draws and through log q (no stop-gradient).

    Args:
        alpha: the order α, a finite number other than 1.
        num_draws: draws per step (S), a positive integer (S = 1 gives the ELBO's estimate).

    Raises:
        TypeError: ``alpha`` is not a number.
        ValueError: ``alpha`` is NaN, infinite, negative or 1, or ``num_draws`` is not a positive
            integer.
    """

    alpha: float = dataclasses.field(default=0.5, metadata=dict(static=True))
    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    name: str = dataclasses.field(default="renyi", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "num_draws", validate.count(self.num_draws, "RenyiAlpha num_draws"))
        object.__setattr__(self, "alpha", validate.finite(self.alpha, "RenyiAlpha alpha"))
        if self.alpha == 1.0:
            raise validate.ArgumentValueError(
                "RenyiAlpha alpha=1 is the ELBO: use ReverseKL", "RenyiAlpha alpha"
            )
        if self.alpha < 0.0:
            raise validate.ArgumentValueError(
                f"RenyiAlpha alpha={self.alpha} < 0 makes the bound an upper bound of log p(x), which "
                "maximising does not fit q (its variances drift); use alpha in [0, 1) or > 1, or "
                "ForwardKL for a mass-covering fit",
                "RenyiAlpha alpha",
            )

    def num_density_evals(self, dim: int) -> int:
        return self.num_draws

    def loss(self, key, params, family, target):
        log_weights = _log_weights(key, params, family, target, self.num_draws, False)
        scaled = (1.0 - self.alpha) * log_weights
        bound = (jax.nn.logsumexp(scaled) - jnp.log(self.num_draws)) / (1.0 - self.alpha)
        return -bound, importance_info(log_weights)
