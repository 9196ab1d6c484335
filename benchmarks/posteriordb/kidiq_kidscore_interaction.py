"""posteriordb ``kidiq-kidscore_interaction``: kid's score on mother's high-school degree, IQ and
their (uncentred) interaction: strongly collinear coefficients. Flat prior on beta, half-Cauchy
on sigma."""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    kid_score = np.asarray(data["kid_score"], dtype=float)
    mom_iq = np.asarray(data["mom_iq"], dtype=float)
    mom_hs = np.asarray(data["mom_hs"], dtype=float)
    inter = mom_hs * mom_iq
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * inter
    numpyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)
