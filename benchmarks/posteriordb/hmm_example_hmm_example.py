"""posteriordb ``hmm_example-hmm_example``: a 2-state Gaussian HMM, discrete states marginalized
by the forward algorithm (a ``lax.scan`` of log-sum-exps).

Stan's ``simplex[K]`` rows with no prior statement are uniform on the simplex: ``Dirichlet(1)``.
``positive_ordered[K] mu`` is an improper flat ``positive_ordered_vector`` plus the two normal
``target +=`` terms as a ``factor``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints


def model(data):
    K = int(data["K"])
    y = np.asarray(data["y"], dtype=float)
    theta1 = numpyro.sample("theta1", dist.Dirichlet(jnp.ones(K)))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(jnp.ones(K)))
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,)))
    numpyro.factor("mu_prior", dist.Normal(3, 1).log_prob(mu[0]) + dist.Normal(10, 1).log_prob(mu[1]))

    log_theta = jnp.log(jnp.stack([theta1, theta2]))  # [j, k]: from state j to state k
    log_emission = dist.Normal(mu[None, :], 1).log_prob(y[:, None])  # (N, K)

    def forward(gamma, log_emission_t):
        return logsumexp(gamma[:, None] + log_theta, axis=0) + log_emission_t, None

    gamma, _ = jax.lax.scan(forward, log_emission[0], log_emission[1:])
    numpyro.factor("log_lik", logsumexp(gamma))
