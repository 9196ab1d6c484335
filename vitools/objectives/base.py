r"""The objective protocol and the one primitive both forward-KL estimators share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from vitools import validate
from vitools.families.base import Family
from vitools.targets import Target

__all__ = [
    "Objective",
    "ObjectiveHooks",
    "SNIS_ONE_DRAW",
    "at_least_two_draws",
    "check_subsampling",
    "importance_info",
    "objective_hooks",
    "weighted_cross_entropy",
]

# Why a self-normalized estimator needs two draws or more.
SNIS_ONE_DRAW = (
    "the self-normalized weight of a single draw is always 1, so the fit would learn nothing from the target"
)


@runtime_checkable
class Objective(Protocol):
    """A divergence estimator: ``loss(key, params, family, target) -> (loss, info)``; the
    required members (optional ones: :class:`ObjectiveHooks`).

    ``loss`` is a scalar whose gradient in ``params`` is the objective's gradient estimate;
    ``info`` is a dict of scalars traced per step (the same keys on every call).
    ``num_density_evals(dim)`` is the number of target log-density evaluations one step spends
    on a ``dim``-dimensional target. Objectives are usable as soon as they are built, and
    registered as JAX pytrees (they are arguments of the compiled programs):
    ``@jax.tree_util.register_dataclass`` over a frozen dataclass, hyperparameters (``name``
    included) static fields, arrays (given draws) leaves; ``vt.fit`` checks this before it starts.
    """

    name: str

    def num_density_evals(self, dim: int) -> int: ...

    def loss(
        self, key: jax.Array, params: Any, family: Family, target: Target
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


class ObjectiveHooks(NamedTuple):
    """An objective's optional members, with the defaults an objective that lacks one gets.

    Attributes:
        mass_covering: True for forward-KL objectives: a diagonal family then starts from the
            marginal sds (their projection) rather than the conditional ones, and ``vt.fit``
            does not race starts by their loss (a narrow q reads low on its own draws).
        full_joint: True for objectives whose estimate needs the full-data log joint: those that
            exponentiate it or compare it between draws (self-normalized importance weights,
            Metropolis-Hastings ratios, the log-mean-exp of IWAE and Rényi bounds, CUBO's moments,
            score covariances). A minibatch log
            density is unbiased for the full one (:meth:`vitools.targets.Target.minibatch`), so
            a gradient linear in it (the ELBO's) stays unbiased, but its exponential is not:
            :func:`check_subsampling` refuses these objectives on a subsampling model before
            anything compiles. False: the objective takes a minibatch log density.
        default_learning_rate: ``(dim) -> float``, the peak rate ``vt.fit`` uses when given
            none; None: :func:`vitools.fitting.default_learning_rate`.
        resolve: ``(target) -> Objective``, the same objective with whatever depends on the
            target worked out once (defaults that depend on the dimension, given draws mapped
            to the flat space), for speed and early errors; ``vt.fit`` calls it before
            compiling. None: nothing to resolve.
        check_family: ``(family) -> None``, raising :class:`vitools.validate.ArgumentError` for a
            family the objective cannot fit (batch-and-match: full-rank Gaussians only); ``vt.fit``
            calls it before anything is traced or compiled. None: every family.
        init_state: ``(key, params, family, target) -> state``, a pytree of arrays the objective
            carries from step to step in the loop's state (Markovian score climbing's retained
            draw). None: the objective keeps no state (``()``).
        stateful_loss: ``(key, params, family, target, state, progress) -> (loss, info, state)``,
            used by the loop instead of ``loss`` when present: ``state`` is the objective's own
            (from ``init_state``, then from the previous step; the loop keeps the old one when a
            step is not applied), ``progress`` the traced fraction of the budget done,
            ``step / num_steps`` in [0, 1] (annealed objectives). The new state must not carry
            a gradient (the loop differentiates ``loss`` only).
        update: ``(key, params, family, target, state, progress) -> (params, loss, info,
            state)``: an objective that moves q itself, in closed form, instead of handing a
            gradient to the optimizer (score-based VI). The loop then takes no gradient and
            the optimizer's state stays as it was; ``loss`` is reported and checked as usual.
        stopping_rule: ``(tol) -> StoppingRule``, the rule ``vt.fit`` stops on (or, with
            ``converge=False``, reports) unless given one, ``tol`` being ``vt.fit``'s (None: the
            rule's default). None: :class:`vitools.convergence.ConvergenceRule`, built for
            Adam's steps (batch-and-match's closed-form steps bring their own).
        races_start: False: ``vt.fit`` fits from its Laplace start without racing NumPyro's
            simple start for 2 x 100 pilot steps (batch-and-match: the pilots would cost more
            than its fit).
    """

    mass_covering: bool = False
    full_joint: bool = False
    default_learning_rate: Callable[[int], float] | None = None
    resolve: Callable[[Target], Objective] | None = None
    check_family: Callable[[Family], None] | None = None
    init_state: Callable[..., Any] | None = None
    stateful_loss: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]] | None = None
    update: Callable[..., tuple[Any, jax.Array, dict[str, jax.Array], Any]] | None = None
    stopping_rule: Callable[[float | None], Any] | None = None
    races_start: bool = True


def objective_hooks(objective: Objective) -> ObjectiveHooks:
    """The objective's optional members (:class:`ObjectiveHooks`): its own where it has them,
    else the defaults. The one place vitools reads an objective's optional members."""
    fields = ObjectiveHooks._fields
    return ObjectiveHooks(**{name: getattr(objective, name) for name in fields if hasattr(objective, name)})


def check_subsampling(objective: Objective, target: Target) -> None:
    """Refuse an objective that needs the full joint (``ObjectiveHooks.full_joint``) on a target
    whose model subsamples data; nothing is traced.

    Raises:
        ValueError (:class:`vitools.validate.ArgumentValueError`, argument ``objective``): the
            target subsamples and the objective needs the full-data log joint.
    """
    if not target.subsamples or not objective_hooks(objective).full_joint:
        return
    plate = target.density.plates[0]
    raise validate.ArgumentValueError(
        f"objective {objective.name!r} needs the full-data log joint, but the model subsamples plate "
        f"{plate.name!r} ({plate.subsample_size} of {plate.size} rows a step): a minibatch estimate of "
        "log p(x, z) is unbiased, but its exponential in importance weights, acceptance ratios or "
        "moments is not, so the fit would follow the minibatches' noise. Under subsampling use "
        "reverse_kl (unbiased minibatch gradients) or forward KL from posterior draws "
        "(ForwardKLFromDraws, 'forward_kl_draws'); or drop subsample_size to fit on all rows",
        "objective",
    )


def weighted_cross_entropy(log_q: jax.Array, log_weights: jax.Array) -> jax.Array:
    r"""Weighted cross-entropy :math:`-\sum_i \bar w_i \log q(z_i)` with softmax weights :math:`\bar w`.

    No gradient flows through the weights. This is the single primitive behind both forward-KL
    estimators: with ``log_weights = log p(x, z) - log q(z)`` on draws from q it is the
    self-normalized importance-sampling estimate of the cross-entropy :math:`H(p, q)`, whose
    gradient is that of KL(p‖q) since H(p) does not depend on q; with uniform (e.g. zero)
    ``log_weights`` on posterior draws it is the average negative log-likelihood of q on those
    draws (maximum likelihood). The caller stops the gradient on the draws themselves.

    Args:
        log_q: ``(num_draws,)`` log q at each draw, differentiable in q's parameters.
        log_weights: ``(num_draws,)`` unnormalized log weights.

    Returns:
        ``()``: the weighted cross-entropy, in nats.

    Examples:
        >>> vt.weighted_cross_entropy(jnp.log(jnp.array([0.5, 0.25])), jnp.zeros(2))  # uniform weights
        Array(1.0397208, dtype=float32)
    """
    weights = jax.nn.softmax(jax.lax.stop_gradient(log_weights))
    return -jnp.sum(weights * log_q)


def importance_info(log_weights: jax.Array) -> dict[str, jax.Array]:
    r"""Per-step diagnostics of log weights: importance ESS :math:`1/\sum \bar w_i^2` and
    the log-evidence estimate :math:`\log \frac1S \sum_i w_i`."""
    log_weights = jax.lax.stop_gradient(log_weights)
    weights = jax.nn.softmax(log_weights)
    num_draws = log_weights.shape[0]
    return {
        "ess": 1.0 / jnp.sum(weights**2),
        "log_evidence": jax.nn.logsumexp(log_weights) - jnp.log(num_draws),
    }


def at_least_two_draws(value: Any, name: str, why: str = SNIS_ONE_DRAW) -> int:
    """A number of draws per step, an integer >= 2 (NumPy integers too); ``why`` says what a
    single draw would do.

    Raises:
        ValueError (:class:`vitools.validate.ArgumentValueError`): not an integer, or below 2.
    """
    count = validate.count(value, name)
    if count < 2:
        raise validate.ArgumentValueError(f"{name} must be at least 2: {why}", name)
    return count
