"""posteriordb ``kidiq-kidscore_momiq``: kid's score on mother's IQ (raw, uncentred: the intercept
and slope are strongly correlated); flat prior on beta, half-Cauchy on sigma."""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    kid_score = np.asarray(data["kid_score"], dtype=float)
    mom_iq = np.asarray(data["mom_iq"], dtype=float)
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)
