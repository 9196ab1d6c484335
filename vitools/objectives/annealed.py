r"""Annealing from reverse to forward KL over the run ("hybrid").

Forward KL by importance sampling (:class:`~vitools.objectives.ForwardKL`) needs a proposal that
already overlaps p: from a q far from p its weights collapse onto one draw and the gradient says
little. Reverse KL moves a far-off q onto p's mass cheaply but stops at a mode-seeking fit. The
hybrid starts with reverse KL and hands over to forward KL as the run goes on, so the forward
phase starts from a q that overlaps p, and the fit ends mass-covering.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from vitools import validate
from vitools.objectives.forward_kl import ForwardKL
from vitools.objectives.reverse_kl import ReverseKL
from vitools.targets import Target

__all__ = ["Hybrid"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Hybrid:
    r"""Reverse KL annealed into forward KL: :math:`L = (1 - \beta)\, L_{\text{reverse}} +
    \beta\, L_{\text{forward}}` with :math:`\beta` rising linearly from 0 to 1 between the
    fractions ``start`` and ``end`` of the budget (``num_steps``), 0 before and 1 after.

    Both losses are in nats and estimate their divergence up to a constant (the negative ELBO is
    KL(q‖p) − log p(x); the cross-entropy is KL(p‖q) + H(p)), so the blend's gradient is
    that of :math:`(1-\beta)\,\mathrm{KL}(q\|p) + \beta\,\mathrm{KL}(p\|q)`, each with its own
    estimator's bias and gradient stops (see :class:`ReverseKL`, :class:`ForwardKL`); both are
    evaluated every step, so a step costs the sum of both density evaluations. The idea of
    passing from the mode-seeking to the mass-covering divergence along the run is that of
    annealed / α-interpolated VI (e.g. Li & Turner 2016 for Rényi-α; Jerfel et al. 2021 who
    start forward KL from a reverse-KL fit). The reported ``info`` is the forward estimator's
    (importance ESS, log-evidence estimate) with ``"beta"``.

    Args:
        reverse: the reverse-KL objective of the first phase (a :class:`ReverseKL`).
        forward: the forward-KL objective of the last phase (a :class:`ForwardKL`).
        start: fraction of the budget at which the hand-over begins, in [0, 1).
        end: fraction at which it is complete, in (start, 1].

    Raises:
        TypeError: ``reverse`` or ``forward`` is not of its kind.
        ValueError: ``start``/``end`` outside their ranges.

    Examples:
        >>> objective = vt.Hybrid(start=0.2, end=0.6)
        >>> [round(float(objective.beta(p)), 6) for p in (0.1, 0.4, 0.8)]  # forward KL's share
        [0.0, 0.5, 1.0]
        >>> fit = vt.fit(model, x, y=y, objective=objective, num_steps=1000, seed=0)
    """

    reverse: ReverseKL = dataclasses.field(default_factory=ReverseKL, metadata=dict(static=True))
    forward: ForwardKL = dataclasses.field(default_factory=ForwardKL, metadata=dict(static=True))
    start: float = dataclasses.field(default=0.1, metadata=dict(static=True))
    end: float = dataclasses.field(default=0.5, metadata=dict(static=True))
    name: str = dataclasses.field(default="hybrid", metadata=dict(static=True))
    mass_covering: ClassVar[bool] = True  # it ends forward: start from the marginal sds, no race
    full_joint: ClassVar[bool] = True  # its forward phase is ForwardKL's SNIS: no minibatches

    def __post_init__(self):
        for field, kind in (("reverse", ReverseKL), ("forward", ForwardKL)):
            if not isinstance(getattr(self, field), kind):
                raise validate.ArgumentTypeError(
                    f"Hybrid {field} must be a {kind.__name__}, got {type(getattr(self, field)).__name__}",
                    f"Hybrid {field}",
                )
        object.__setattr__(self, "start", validate.in_range(self.start, "Hybrid start", 0, 1))
        end = validate.finite(self.end, "Hybrid end")
        if not self.start < end <= 1.0:
            raise validate.ArgumentValueError(
                f"Hybrid end must lie in (start, 1] = ({self.start}, 1], got {end}", "Hybrid end"
            )
        object.__setattr__(self, "end", end)

    def resolve(self, target: Target) -> Hybrid:
        """The same objective with the forward part's dimension-dependent defaults filled in."""
        return dataclasses.replace(self, forward=self.forward.resolve(target))

    def default_learning_rate(self, dim: int) -> float:
        """Forward KL's rate: it ends in the forward phase, whose gradients stay noisy at the optimum."""
        return ForwardKL.default_learning_rate(dim)

    def num_density_evals(self, dim: int) -> int:
        return self.reverse.num_density_evals(dim) + self.forward.num_density_evals(dim)

    def beta(self, progress: Any) -> jax.Array:
        """The forward share at ``progress`` (fraction of the budget done)."""
        return jnp.clip((progress - self.start) / (self.end - self.start), 0.0, 1.0)

    def loss(self, key, params, family, target):
        """The loss at the end of the hand-over (pure forward KL), for callers without the loop."""
        loss, info, _ = self.stateful_loss(key, params, family, target, (), 1.0)
        return loss, info

    def stateful_loss(self, key, params, family, target, state, progress):
        key_reverse, key_forward = jax.random.split(key)
        reverse, _ = self.reverse.loss(key_reverse, params, family, target)
        forward, info = self.forward.loss(key_forward, params, family, target)
        beta = self.beta(progress).astype(reverse.dtype)
        return (1.0 - beta) * reverse + beta * forward, {**info, "beta": beta}, state
