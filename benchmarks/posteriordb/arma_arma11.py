"""posteriordb ``arma-arma11``: ARMA(1, 1) with the error recursion as a ``lax.scan``.

``err ~ normal(0, sigma)`` with ``err[t] = y[t] - nu[t]`` is written as ``y ~ normal(nu, sigma)``
(the same density, since err is y shifted by nu); the scan carries ``err[t - 1]``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


def model(data):
    y = np.asarray(data["y"], dtype=float)
    mu = numpyro.sample("mu", dist.Normal(0, 10))
    phi = numpyro.sample("phi", dist.Normal(0, 2))
    theta = numpyro.sample("theta", dist.Normal(0, 2))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))

    def step(err_prev, y_t):
        y_prev, y_now = y_t
        nu = mu + phi * y_prev + theta * err_prev
        return y_now - nu, nu

    nu_1 = mu + phi * mu  # assume err[0] == 0
    _, nu_rest = jax.lax.scan(step, y[0] - nu_1, (y[:-1], y[1:]))
    nu = jnp.concatenate([jnp.reshape(nu_1, (1,)), nu_rest])
    numpyro.sample("y", dist.Normal(nu, sigma), obs=y)
