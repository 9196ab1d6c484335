"""posteriordb ``bball_drive_event_0-hmm_drive_0``: a 2-state HMM on basketball tracking data
(exponential emissions for 1/speed and hoop distance), marginalized by the forward algorithm
(a ``lax.scan`` of log-sum-exps).

Transition rows ``theta1``, ``theta2`` get Dirichlet priors with the rows of ``alpha``;
``positive_ordered`` phi and lambda are improper flat ``positive_ordered_vector`` sites plus the
normal ``target +=`` terms as ``factor``s. The Viterbi generated quantities are left out.
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
    u = np.asarray(data["u"], dtype=float)
    v = np.asarray(data["v"], dtype=float)
    alpha = np.asarray(data["alpha"], dtype=float)
    theta1 = numpyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(alpha[1]))
    phi = numpyro.sample("phi", dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,)))
    lam = numpyro.sample("lambda", dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,)))
    numpyro.factor("phi_prior", dist.Normal(0, 1).log_prob(phi[0]) + dist.Normal(3, 1).log_prob(phi[1]))
    numpyro.factor("lambda_prior", dist.Normal(0, 1).log_prob(lam[0]) + dist.Normal(3, 1).log_prob(lam[1]))

    log_theta = jnp.log(jnp.stack([theta1, theta2]))  # [j, k]: from state j to state k
    log_emission = dist.Exponential(phi[None, :]).log_prob(u[:, None]) + dist.Exponential(
        lam[None, :]
    ).log_prob(v[:, None])  # (N, K)

    def forward(gamma, log_emission_t):
        return logsumexp(gamma[:, None] + log_theta, axis=0) + log_emission_t, None

    gamma, _ = jax.lax.scan(forward, log_emission[0], log_emission[1:])
    numpyro.factor("log_lik", logsumexp(gamma))
