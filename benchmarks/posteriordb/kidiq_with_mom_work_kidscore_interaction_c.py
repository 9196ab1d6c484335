"""posteriordb ``kidiq_with_mom_work-kidscore_interaction_c``: the interaction model with centred
predictors (centred in NumPy, as Stan's transformed data); flat priors on beta and sigma."""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    kid_score = np.asarray(data["kid_score"], dtype=float)
    mom_hs = np.asarray(data["mom_hs"], dtype=float)
    mom_iq = np.asarray(data["mom_iq"], dtype=float)
    c_mom_hs = mom_hs - mom_hs.mean()
    c_mom_iq = mom_iq - mom_iq.mean()
    inter = c_mom_hs * c_mom_iq
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    mean = beta[0] + beta[1] * c_mom_hs + beta[2] * c_mom_iq + beta[3] * inter
    numpyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)
