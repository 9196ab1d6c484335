"""The family protocol: a variational family over the flat unconstrained space of a target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np
import numpyro.distributions as dist

from vitools.targets import Target

__all__ = ["Family", "FamilyHooks", "check_distribution", "draw_many", "family_hooks"]


@runtime_checkable
class Family(Protocol):
    """A variational family q_params over R^dim: the required members.

    A family is a small object of configuration, registered as a JAX pytree (it is an argument
    of the compiled programs): ``@jax.tree_util.register_dataclass`` over a frozen dataclass,
    every configuration field (``name`` included) marked static with
    ``dataclasses.field(metadata=dict(static=True))``. Its parameters are a separate pytree.
    ``distribution(params)`` returns a NumPyro distribution with event shape ``(dim,)`` and
    batch shape ``()`` whose ``sample`` is reparameterized, so one method gives both the draws and
    ``log_prob``. New families plug in by implementing these members, and any of
    :class:`FamilyHooks`; nothing checks for a class. ``vt.fit`` checks the pytree and the
    shapes before it starts (:func:`vitools.validate.static_pytree`, :func:`check_distribution`).

    Examples:
        >>> @jax.tree_util.register_dataclass
        ... @dataclasses.dataclass(frozen=True)
        ... class DiagonalStudentT:
        ...     name: str = dataclasses.field(default="student_t", metadata=dict(static=True))
        ...     def init(self, key, target, loc, scale_tril):
        ...         return (loc, jnp.log(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1))))
        ...     def distribution(self, params):
        ...         return dist.StudentT(5.0, params[0], jnp.exp(params[1])).to_event(1)
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
        rsample_with_log_prob: ``(params, key, num_draws, stop_gradient) -> (draws (S, dim),
            log_q (S,))``: the draws of :func:`draw_many` and log q at each computed from their
            noise, not by inverting them (exact where the inverse loses the noise to rounding:
            an ill-conditioned scale in float32); with ``stop_gradient`` log q is that of the
            stop-gradiented parameters at the (differentiable) draws, as sticking the landing
            and DReG need. Reverse KL, Rényi, DReG and the diagnostics' log q use it (the
            Gaussian families); None: ``draw_many``, then ``log_prob``.
        stratified_draws: ``(params, key, num_draws) -> (draws (S, dim), log_q (S,),
            log_draw_weights (S,))``: reparameterized draws of a family whose ``sample`` is not
            reparameterized (a mixture: the component is a discrete choice), with normalized log
            weights ω (``sum(exp(log_draw_weights)) == 1``, differentiable) such that
            ``sum_i ω_i f(z_i)`` is an unbiased estimate of E_q[f] with unbiased gradients; reverse
            KL and Rényi then use the weighted estimates (stratified sampling, Morningstar et al.
            2021; :mod:`vitools.objectives.reverse_kl`). None: ``draw_many``, ω_i = 1/S.
        search_start: ``(key, target, loc, scale_tril) -> (params, grad_evals)``: a start that
            searches the target beyond the initial Gaussian N(loc, scale_tril scale_trilᵀ) (a
            mixture: a component on each mode that Pathfinder paths from dispersed points find),
            with its cost in gradient evaluations; ``vt.fit`` calls it instead of ``init`` for
            the fit's start (``target`` and the parameters in the fit's frame) and adds the cost
            to ``Fit.num_grad_evals``. None: ``init``.
        learning_rate_scale: the factor ``vt.fit`` multiplies into the objective's default
            learning rate (``ObjectiveHooks.default_learning_rate(dim)``, or
            :func:`vitools.fitting.default_learning_rate`) when it is given none; a rate given
            to ``vt.fit`` is used as it is. Objectives set their rate for the noise of their
            gradient, a family for how far one Adam step moves its q: a flow's parameters
            (scale networks whose output is exponentiated) move q further per unit of step than
            a Gaussian's. 1.0: the objective's rate unchanged.
    """

    whiten: str | bool = "diagonal"
    structure: str = "full"
    widened: Callable | None = None
    sample_with_log_prob: Callable | None = None
    rsample_with_log_prob: Callable | None = None
    stratified_draws: Callable | None = None
    search_start: Callable | None = None
    learning_rate_scale: float = 1.0


def family_hooks(family: Family) -> FamilyHooks:
    """The family's optional members (:class:`FamilyHooks`): its own where it has them, else the
    defaults. The one place vitools reads a family's optional members."""
    return FamilyHooks(
        **{name: getattr(family, name) for name in FamilyHooks._fields if hasattr(family, name)}
    )


def check_distribution(family: Family, key: jax.Array, target: Target) -> None:
    """Check that the family's q from ``init`` at the target's initial point is one distribution
    over R^dim: event shape ``(dim,)``, batch shape ``()``. ``init`` runs as it is (NumPyro's
    autoguides set themselves up on their first call, which must not happen under a trace);
    ``distribution`` runs abstractly.

    Raises:
        ValueError: another shape, naming the likely cause (a batch of univariate distributions
            without ``.to_event(1)``, or ``init`` giving parameters of another dimension).
    """
    shapes, dim = {}, target.dim

    def shape_of(params):
        q = family.distribution(params)
        shapes["event"], shapes["batch"] = tuple(q.event_shape), tuple(q.batch_shape)
        return ()

    loc = target.initial_point  # a host identity: jnp.eye, run eagerly, compiles 5 small programs
    jax.eval_shape(shape_of, family.init(key, target, loc, np.eye(dim, dtype=loc.dtype)))
    if shapes["event"] != (dim,) or shapes["batch"] != ():
        hint = (
            "a batch of univariate distributions: add .to_event(1)"
            if shapes["event"] == () and shapes["batch"] == (dim,)
            else f"does init give parameters of dimension {dim}?"
        )
        raise ValueError(
            f"family {family.name!r}: distribution(params) has event shape {shapes['event']} and batch "
            f"shape {shapes['batch']}; vitools needs event shape ({dim},) and batch shape () ({hint})"
        )


def draw_many(distribution: dist.Distribution, key: jax.Array, num_draws: int) -> jax.Array:
    """``(num_draws, dim)`` draws: one draw per key, then ``vmap``; reparameterized when the
    distribution's are (``has_rsample``: every Gaussian and flow family).

    A distribution without reparameterized draws (a mixture's ``MixtureSameFamily``: the component
    is a discrete choice) gives plain draws that must not be differentiated: fine wherever q's
    parameters are stop-gradiented or nothing is differentiated (ForwardKL's proposal,
    ``Fit.sample``, the diagnostics), while a gradient taken through them raises (it would
    silently miss the component choice's part). Objectives that differentiate through draws use
    the family's ``stratified_draws`` hook instead (:class:`FamilyHooks`).

    NumPyro's batched ``sample(key, (n,))`` relies on implicit rank promotion; one draw per key
    keeps every shape explicit (our tests run with ``jax_numpy_rank_promotion="raise"``).

    Under a mesh (:func:`vitools.sharding.active`) the draws are split over its ``"draws"`` axis;
    the numbers are the same as unsplit.

    Raises:
        TypeError: at trace time, a gradient is taken through draws that are not reparameterized.
    """
    from vitools.sharding import constrain_draws  # split over devices under a mesh (vitools.sharding)

    keys = jax.random.split(key, num_draws)
    if distribution.has_rsample:
        return constrain_draws(jax.vmap(distribution.rsample)(keys))
    return _not_differentiable(constrain_draws(jax.vmap(distribution.sample)(keys)))


@jax.custom_jvp
def _not_differentiable(draws: jax.Array) -> jax.Array:
    """The identity, whose derivative raises: JAX skips it when no tangent reaches the draws."""
    return draws


@_not_differentiable.defjvp
def _not_differentiable_jvp(primals, tangents):
    raise TypeError(
        "a gradient was taken through draws of a distribution whose draws are not reparameterized "
        "(e.g. a mixture's MixtureSameFamily: the component is a discrete choice), which would be "
        "biased; objectives that differentiate through q's draws need the family's stratified_draws "
        "hook (vitools.families.FamilyHooks), or use ForwardKL, whose draws carry no gradient"
    )
