"""NumPyro's own inference as the benchmarks run it: NUTS, and SVI with an autoguide whose q is read
back as a vitools :class:`~vitools.result.Fit` (``vt.Fit.from_gaussian``), so that SVI is drawn from,
diagnosed and scored exactly as vitools' fits are.

The scripts run as ``python benchmarks/<script>.py``, so this module is importable as ``baselines``
(and as ``benchmarks.baselines`` from the repository root).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import vitools as vt

SVI_PARTICLES = 16  # = ReverseKL's default draws per step: the same gradient evaluations per step
SVI_GUIDES = {"meanfield": AutoNormal, "fullrank": AutoMultivariateNormal}


class NutsRun(NamedTuple):
    """A finished NUTS run: the MCMC object, the seconds of ``mcmc.run`` until its draws were ready
    (compilation included), and the number of divergent transitions among the kept draws."""

    mcmc: MCMC
    seconds: float
    divergences: int


def run_nuts(
    key: jax.Array,
    model: Callable,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    num_warmup: int,
    num_draws: int,
    num_chains: int = 1,
    extra_fields: tuple[str, ...] = (),
    **nuts_options: Any,
) -> NutsRun:
    """NumPyro NUTS on ``model(*args, **kwargs)``: chains one after another, no progress bar.

    Args:
        key: the PRNG key of ``mcmc.run`` (an old-style ``PRNGKey`` or a typed ``key``; each
            caller keeps its own, so that its draws stay those of its earlier runs).
        num_warmup, num_draws: per chain.
        extra_fields: fields recorded beside the draws (``"diverging"`` always is).
        **nuts_options: the ``NUTS`` kernel's options (``init_strategy``, ``target_accept_prob``,
            ``dense_mass``, ...).
    """
    kernel = NUTS(model, **nuts_options)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_draws,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(key, *args, extra_fields=extra_fields, **(kwargs or {}))
    jax.block_until_ready(mcmc.get_samples())
    seconds = time.perf_counter() - start
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return NutsRun(mcmc, seconds, divergences)


def make_svi(model: Callable, guide: Any, learning_rate: float) -> SVI:
    """SVI with ``Trace_ELBO(num_particles=SVI_PARTICLES)`` (vectorized) and ``optax.adam`` at a
    constant ``learning_rate``."""
    return SVI(model, guide, optax.adam(learning_rate), Trace_ELBO(num_particles=SVI_PARTICLES))


def compile_svi_loop(
    svi: SVI, state: Any, num_steps: int, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
) -> Callable:
    """``num_steps`` of ``svi.update`` under one ``lax.scan``, compiled for states shaped like
    ``state``: ``state -> (state, losses)``. With a constant learning rate, k chained calls give
    the state of a ``k * num_steps``-step ``SVI.run``."""
    kwargs = kwargs or {}

    def loop(state):
        return jax.lax.scan(lambda s, _: svi.update(s, *args, **kwargs), state, None, length=num_steps)

    return jax.jit(loop).lower(state).compile()


def guide_gaussian(guide: Any, params: dict, target: vt.Target) -> tuple[jax.Array, jax.Array]:
    """(loc, scale_tril) of an AutoNormal/AutoMultivariateNormal in the target's flat layout.

    Both guides live in NumPyro's unconstrained space (``biject_to(support)``), the same as
    ``Target``'s; only the order of the flat vector differs for AutoMultivariateNormal.
    """
    if isinstance(guide, AutoNormal):
        loc = jnp.concatenate([jnp.ravel(params[f"{s.name}_auto_loc"]) for s in target.sites])
        scale = jnp.concatenate([jnp.ravel(params[f"{s.name}_auto_scale"]) for s in target.sites])
        return loc, jnp.diag(scale)
    index = guide._unpack_latent(jnp.arange(target.dim, dtype=jnp.float32))
    perm = np.rint(np.concatenate([np.ravel(index[s.name]) for s in target.sites])).astype(int)
    tril = params["auto_scale_tril"]
    cov = (tril @ tril.T)[perm][:, perm]
    return params["auto_loc"][perm], jnp.linalg.cholesky(cov)


def svi_fit(guide: Any, params: dict, target: vt.Target, **record: Any) -> vt.Fit:
    """The autoguide's q as a vitools Fit: family "meanfield" for AutoNormal, "fullrank" for
    AutoMultivariateNormal, objective "svi".

    Args:
        guide: the (initialised) autoguide; params: ``svi.get_params(state)``.
        target: the model's target (``vt.Target.from_model`` on the same arguments).
        **record: ``num_steps``, ``num_grad_evals``, ``elapsed``, ``compile_time``, ``status``,
            ``seed`` (see :meth:`vitools.Fit.from_gaussian`).
    """
    loc, scale_tril = guide_gaussian(guide, params, target)
    family = vt.MeanField() if isinstance(guide, AutoNormal) else vt.FullRank()
    return vt.Fit.from_gaussian(target, loc, scale_tril, family=family, source="svi", **record)
