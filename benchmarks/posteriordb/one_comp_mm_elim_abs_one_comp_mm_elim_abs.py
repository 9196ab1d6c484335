"""posteriordb ``one_comp_mm_elim_abs-one_comp_mm_elim_abs``: one-compartment pharmacokinetics with
first-order absorption and Michaelis-Menten elimination, lognormal measurement error.

Stan integrates with ``integrate_ode_bdf`` (default tolerances 1e-6); here diffrax's adaptive
explicit ``Dopri5`` at rtol = atol = 1e-6 (the system is not stiff over the posterior, and an
explicit solver is much cheaper). A solve that runs out of steps returns ``inf`` (``throw=False``):
no density, as Stan rejects the draw. ``cauchy(0, 1)`` on ``<lower=0>`` is ``HalfCauchy(1)``.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

MAX_STEPS = 4096  # of the whole solve; the posterior needs a few dozen


def one_comp_mm_elim_abs(t, y, args):
    k_a, K_m, V_m, D, V = args
    dose = jnp.where(t > 0, jnp.exp(-k_a * t) * D * k_a / V, 0.0)
    elim = (V_m / V) * y / (K_m + y)
    return dose - elim


def model(data):
    import diffrax  # optional (vitools[ode]): imported here so the corpus loads without it

    t0, D, V = float(data["t0"]), float(data["D"]), float(data["V"])
    times = np.asarray(data["times"], dtype=float)
    C_hat = np.asarray(data["C_hat"], dtype=float)
    k_a = numpyro.sample("k_a", dist.HalfCauchy(1))
    K_m = numpyro.sample("K_m", dist.HalfCauchy(1))
    V_m = numpyro.sample("V_m", dist.HalfCauchy(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(1))
    C0 = jnp.zeros(1)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(one_comp_mm_elim_abs),
        diffrax.Dopri5(),
        t0=t0,
        t1=times[-1],
        dt0=None,
        y0=C0,
        args=(k_a, K_m, V_m, D, V),
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        max_steps=MAX_STEPS,
        throw=False,
    )
    C = solution.ys[:, 0]
    numpyro.sample("C_hat", dist.LogNormal(jnp.log(C), sigma), obs=C_hat)
