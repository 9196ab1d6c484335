"""The family protocol: a variational family over the flat unconstrained space of a target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpyro.distributions as dist

from vitools.targets import Target

__all__ = ["Family", "FamilyHooks", "draw_many", "family_hooks"]


@runtime_checkable
class Family(Protocol):
    """A variational family q_params over R^dim: the required members.

    A family is a small hashable object (configuration only); its parameters are a separate
    pytree. ``distribution(params)`` returns a NumPyro distribution with event shape ``(dim,)``
    whose ``sample`` is reparameterized, so one method gives both the draws and ``log_prob``.
    New families plug in by implementing these members, and any of :class:`FamilyHooks`;
    nothing checks for a class.
    """

    name: str

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> Any:
        """Parameters whose distribution is (close to) N(loc, scale_tril scale_trilᵀ); ``key``
        seeds whatever the family draws at random (e.g. a flow's hidden weights)."""
        ...

    def distribution(self, params: Any) -> dist.Distribution: ...


class FamilyHooks(NamedTuple):
    """A family's optional members, with the defaults a family that lacks one gets.

    Attributes:
        whiten: the frame ``vt.fit`` optimises in (:mod:`vitools.frame`): ``"diagonal"`` (the
            initial Gaussian's sds), ``"full"`` (its Cholesky factor; for families closed under
            affine maps) or False (the model's own space).
        structure: ``"diagonal"`` makes the Laplace start score diagonal candidates
            (mean-field), ``"full"`` full ones.
        widened: ``widened(params, factor) -> Distribution``, the same distribution with its
            scale times ``factor`` (ForwardKL's defensive component); None: ForwardKL uses q alone.
        sample_with_log_prob: ``(params, key) -> (draw, log q)`` from one forward pass; reverse
            KL and Rényi use it instead of ``log_prob`` at the draw (flows, whose inverse is
            costly); None: draw, then ``log_prob``.
    """

    whiten: str | bool = "diagonal"
    structure: str = "full"
    widened: Callable | None = None
    sample_with_log_prob: Callable | None = None


def family_hooks(family: Family) -> FamilyHooks:
    """The family's optional members (:class:`FamilyHooks`): its own where it has them, else the
    defaults. The one place vitools reads a family's optional members."""
    return FamilyHooks(
        **{name: getattr(family, name) for name in FamilyHooks._fields if hasattr(family, name)}
    )


def draw_many(distribution: dist.Distribution, key: jax.Array, num_draws: int) -> jax.Array:
    """``(num_draws, dim)`` reparameterized draws: one draw per key, then ``vmap``.

    NumPyro's batched ``sample(key, (n,))`` relies on implicit rank promotion; one draw per key
    keeps every shape explicit (our tests run with ``jax_numpy_rank_promotion="raise"``).
    """
    return jax.vmap(distribution.rsample)(jax.random.split(key, num_draws))
