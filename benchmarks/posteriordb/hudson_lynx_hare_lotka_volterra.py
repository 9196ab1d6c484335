"""posteriordb ``hudson_lynx_hare-lotka_volterra``: Lotka-Volterra predator-prey ODE fitted to the
Hudson's Bay lynx and hare pelts, lognormal measurement error.

The ODE is solved by diffrax's ``Dopri5`` (adaptive Dormand-Prince RK45, as Stan's
``integrate_ode_rk45``) at rtol = atol = 1e-6, tighter than the Stan program's (1e-5, 1e-3). A
solve that runs out of steps returns ``inf`` (``throw=False``), so the draw has no density, as
Stan rejects it; ``jax.experimental.ode.odeint`` has no such failure: past ``mxstep`` it returns
an extrapolation, and without it a wild proposal hung NUTS' first iteration for minutes
(measured). ``theta ~ normal`` on ``<lower=0>`` is a normal truncated at 0 (the same density up
to a constant), one site of shape (4,).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

MAX_STEPS = 4096  # of the whole solve; the posterior needs ~100


def dz_dt(t, z, theta):
    u, v = z[0], z[1]
    alpha, beta, gamma, delta = theta[0], theta[1], theta[2], theta[3]
    return jnp.stack([(alpha - beta * v) * u, (-gamma + delta * u) * v])


def model(data):
    import diffrax  # optional (vitools[ode]): imported here so the corpus loads without it

    ts = np.asarray(data["ts"], dtype=float)
    y_init = np.asarray(data["y_init"], dtype=float)
    y = np.asarray(data["y"], dtype=float)  # (N, 2)
    theta = numpyro.sample(
        "theta",
        dist.TruncatedNormal(np.array([1.0, 0.05, 1.0, 0.05]), np.array([0.5, 0.05, 0.5, 0.05]), low=0.0),
    )
    z_init = numpyro.sample("z_init", dist.LogNormal(np.log(10.0), 1).expand([2]))
    sigma = numpyro.sample("sigma", dist.LogNormal(-1, 1).expand([2]))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(dz_dt),
        diffrax.Dopri5(),
        t0=0.0,
        t1=ts[-1],
        dt0=None,
        y0=z_init,
        args=theta,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        max_steps=MAX_STEPS,
        throw=False,
    )
    z = solution.ys  # (N, 2)
    numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma), obs=y_init)
    numpyro.sample("y", dist.LogNormal(jnp.log(z), sigma[None, :]), obs=y)
