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
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vitools import validate

__all__ = [
    "CONTROL_VARIATE",
    "SNAPSHOT_NEWTON_STEPS",
    "ControlledDensity",
    "Snapshot",
    "snapshot_at",
    "take_snapshot",
]

# With CONTROL_VARIATE, subsampled fits of objectives that evaluate the density take the Taylor
# control variate of a snapshot (this module; issue 14), taken after
# SNAPSHOT_NEWTON_STEPS quasi-Newton steps on all rows from the start (the start's covariance as the
# inverse Hessian). Logistic regression, 3 coefficients, 10^6 rows, seeds 0-9
# (benchmarks/results/subsample_control.md): B = 4096, q's mean ended up to 1.01 posterior sds off
# the mode plain, 0.03 with the snapshot at the start, 0.00 after 2 steps (B = 256: 3.78, 0.08,
# 0.01), and the convergence rule then stopped at 900-1400 of 2000 steps; each step costs 1.04-1.67x
# (measured). vt.fit_many takes each fit's snapshot the same way (its fit i stays vt.fit's).
CONTROL_VARIATE = True
SNAPSHOT_NEWTON_STEPS = 2
SNAPSHOT_MOVES_START = False  # q then starts at the snapshot's point


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


def take_snapshot(
    target: Any, loc: jax.Array, scale_tril: jax.Array, num_density_evals: int
) -> tuple[Any, jax.Array, int]:
    """``(target, loc, evaluations)`` of a fit's loop, its start N(loc, scale_tril scale_trilᵀ) in
    the target's frame (a :class:`vitools.targets.Target`): with :data:`CONTROL_VARIATE`, a
    subsampling target of a model without ``numpyro.param`` sites, fitted by an objective that
    evaluates the density, gets a snapshot for its minibatches (``Target.with_snapshot``, after
    :data:`SNAPSHOT_NEWTON_STEPS` steps from the start), which costs ``evaluations`` gradient
    evaluations on all rows; else the target and loc as given and 0. ``vt.fit`` and
    ``vt.fit_many`` (each fit) take it here.

    Warns:
        UserWarning: the model has ``numpyro.param`` sites: the fit takes plain minibatches (a
            user's trial read only "no fall shown" and "bad", and not why).
    """
    if not (target.subsamples and CONTROL_VARIATE and num_density_evals > 0):
        return target, loc, 0
    if target.param_sites:
        names = [name for name, _ in target.param_sites]
        warnings.warn(
            f"numpyro.param site(s) {names} are optimised with q, so this subsampled fit takes plain "
            "minibatches, without the control variate that cancels their noise (its snapshot of the full "
            "data would go stale as they move): give it more steps or a larger subsample_size, or make "
            "them latent sample sites",
            UserWarning,
            skip_file_prefixes=validate.VITOOLS_FILES,  # the line of the caller outside vitools
        )
        return target, loc, 0
    covariance = target.frame.covariance_to_model(scale_tril @ scale_tril.T)
    target = target.with_snapshot(target.to_unconstrained(loc), covariance, SNAPSHOT_NEWTON_STEPS)
    moved = target.from_unconstrained(target.snapshot.point) if SNAPSHOT_MOVES_START else loc
    return target, moved, SNAPSHOT_NEWTON_STEPS + 1  # a value and gradient at each point tried
