r"""The Taylor control variate of a subsampled log density (issue 14): a snapshot of the full data's
log density and gradient at one point, and the minibatch density it corrects.

With data subsampling (``numpyro.plate(..., subsample_size=B)``) each step's log density is one
minibatch's, its likelihood scaled by N / B: unbiased, but with noise that grows like N / sqrt(B).
With a fixed point :math:`u_0` of the model's flat unconstrained space, the full-data
:math:`L_0 = \log \pi(u_0)` and :math:`g_0 = \nabla \log \pi(u_0)` (one pass over all rows, a
:class:`Snapshot`), a minibatch :math:`b` estimates :math:`\log \pi(u)` by

.. math:: \hat L(u) = L_0 + g_0^\top (u - u_0)
          + \big[\ell_b(u) - \ell_b(u_0) - \nabla \ell_b(u_0)^\top (u - u_0)\big],

:math:`\ell_b` the minibatch's N/B-scaled log density (:meth:`vitools.targets.Target.minibatch`).
The bracket has expectation :math:`\log\pi(u) - L_0 - g_0^\top(u - u_0)` over the batch, so
:math:`E_b[\hat L(u)] = \log \pi(u)` at every u, and it is second order in :math:`u - u_0`, so its
noise is far below :math:`\ell_b`'s where q sits near :math:`u_0`. The gradient of :math:`\hat L`
is the SVRG gradient (Johnson & Zhang 2013). References: Bardenet, Doucet & Holmes (2017, JMLR, "On
Markov chain Monte Carlo methods for tall data", control variates); Baker, Fearnhead, Fox & Nemeth
(2019, "Control variates for stochastic gradient MCMC").

A step pays one value and gradient of its minibatch at :math:`u_0`, shared by all of q's draws.
The identity holds for estimators linear in log p (reverse KL's ELBO and its gradient); one that
exponentiates log p (importance weights) stays biased, less so as the noise shrinks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ControlledDensity", "Snapshot", "snapshot_at"]


class Snapshot(NamedTuple):
    """The full data's log density at one point of the model's flat unconstrained space."""

    point: jax.Array  # u0, (dim,)
    log_density: jax.Array  # log π(u0), nats, ()
    grad: jax.Array  # ∇ log π(u0), (dim,)


@functools.partial(jax.jit, static_argnums=(3,))  # one program: op by op, each op compiles
def snapshot_at(
    density: Any, point: jax.Array, covariance: jax.Array | None = None, num_newton_steps: int = 0
) -> Snapshot:
    r""":class:`Snapshot` of a density (a ``ModelDensity``, evaluated on all rows) at ``point``,
    ``(dim,)`` in the model's flat unconstrained space, or at the point that ``num_newton_steps``
    guarded quasi-Newton steps reach from it.

    A step is :math:`u \leftarrow u + \Sigma \nabla \log \pi(u)`, ``covariance`` :math:`\Sigma`
    ``(dim, dim)`` standing for the inverse negative Hessian (``vt.fit`` gives the start's, from a
    subset of rows: about the full data's where the likelihood dominates); a step that does not
    raise :math:`\log \pi` is not taken, so the point never ends below the start. Each step, and
    the snapshot itself, is one value and gradient over all rows.
    """
    value_and_grad = jax.value_and_grad(density.full_data().log_density)
    value, grad = value_and_grad(point)
    if num_newton_steps == 0:
        return Snapshot(point, value, grad)

    def step(_, snapshot):
        candidate = snapshot.point + covariance @ snapshot.grad
        new = Snapshot(candidate, *value_and_grad(candidate))
        better = jnp.isfinite(new.log_density) & (new.log_density > snapshot.log_density)
        return jax.tree.map(lambda a, b: jnp.where(better, a, b), new, snapshot)

    return jax.lax.fori_loop(0, num_newton_steps, step, Snapshot(point, value, grad))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ControlledDensity:
    r"""A minibatch density with the Taylor control variate of a :class:`Snapshot`:
    ``log_density(u)`` is :math:`\hat L(u)` (module docstring), every other map the minibatch's.

    Attributes:
        batch: the density on one minibatch (``ModelDensity.minibatch``).
        snapshot: the full data's log density and gradient at :math:`u_0`.
        offset: :math:`L_0 - \ell_b(u_0)`, nats, ``()``.
        slope: :math:`g_0 - \nabla\ell_b(u_0)`, ``(dim,)``.
    """

    batch: Any
    snapshot: Snapshot
    offset: jax.Array
    slope: jax.Array

    @classmethod
    def of(cls, batch: Any, snapshot: Snapshot) -> ControlledDensity:
        """The controlled density of a minibatch: one value and gradient of it at the snapshot's point."""
        value, grad = jax.value_and_grad(batch.log_density)(snapshot.point)
        return cls(batch, snapshot, snapshot.log_density - value, snapshot.grad - grad)

    def log_density(self, u: jax.Array) -> jax.Array:
        return self.batch.log_density(u) + self.offset + jnp.dot(self.slope, u - self.snapshot.point)

    # everything else is the minibatch's
    sites = property(lambda self: self.batch.sites)
    model = property(lambda self: self.batch.model)
    model_params = property(lambda self: self.batch.model_params)
    param_sites = property(lambda self: self.batch.param_sites)
    plates = property(lambda self: self.batch.plates)
    subsamples = property(lambda self: self.batch.subsamples)

    def full_data(self) -> Any:
        return self.batch.full_data()

    def minibatch(self, key: jax.Array) -> Any:
        return self.batch.minibatch(key)

    def subset(self, key: jax.Array, num_rows: int) -> Any:
        return self.batch.subset(key, num_rows)

    def with_model_params(self, model_params: dict) -> ControlledDensity:
        if self.param_sites:  # L0 and g0 were taken at the snapshot's parameter values
            raise ValueError("a controlled minibatch cannot change its numpyro.param values")
        return self

    def point_estimates(self) -> dict[str, jax.Array]:
        return self.batch.point_estimates()

    def constrain(self, u: jax.Array, deterministic: bool = False) -> dict[str, jax.Array]:
        return self.batch.constrain(u, deterministic)

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        return self.batch.unconstrain(values)

    def log_joint(self, values: dict[str, jax.Array]) -> jax.Array:
        return self.batch.log_joint(values)

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        return self.batch.log_abs_det_jacobian(u)

    def in_support(self, values: dict[str, jax.Array]) -> jax.Array:
        return self.batch.in_support(values)
