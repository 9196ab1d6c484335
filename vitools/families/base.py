"""The family protocol: a variational family over the flat unconstrained space of a target."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import numpyro.distributions as dist

from vitools.targets import Target

__all__ = ["Family", "draw_many"]


@runtime_checkable
class Family(Protocol):
    """A variational family q_params over R^dim.

    A family is a small hashable object (configuration only); its parameters are a separate
    pytree. ``distribution(params)`` returns a NumPyro distribution with event shape ``(dim,)``
    whose ``sample`` is reparameterized, so one method gives both the draws and ``log_prob``.
    New families plug in by implementing these methods; nothing checks for a class.

    Optional: ``sample_with_log_prob(params, key)`` (one draw and its log q from one forward
    pass; reverse KL and Rényi use it instead of ``log_prob`` at the draw, for flows whose inverse
    is costly), ``widened(params, factor)`` (the same distribution with its scale times
    ``factor``; ForwardKL's defensive component uses it) and ``whiten``: the frame vt.fit
    optimises in (see ``Target.whitened``): ``"diagonal"`` (the default: the initial Gaussian's
    scales), ``"full"`` (its Cholesky factor; for families closed under affine maps) or False;
    ``structure = "diagonal"`` makes vt.fit's Laplace init score diagonal candidates (MeanField).
    """

    name: str

    def init(self, target: Target, loc: jax.Array, scale_tril: jax.Array) -> Any:
        """Parameters whose distribution is (close to) N(loc, scale_tril scale_trilᵀ)."""
        ...

    def distribution(self, params: Any) -> dist.Distribution: ...


def draw_many(distribution: dist.Distribution, key: jax.Array, num_draws: int) -> jax.Array:
    """``(num_draws, dim)`` reparameterized draws: one draw per key, then ``vmap``.

    NumPyro's batched ``sample(key, (n,))`` relies on implicit rank promotion; one draw per key
    keeps every shape explicit (our tests run with ``jax_numpy_rank_promotion="raise"``).
    """
    return jax.vmap(distribution.rsample)(jax.random.split(key, num_draws))
