"""posteriordb ``earnings-earn_height``: earnings in dollars on height, flat priors.

Coefficients and sigma sit on wildly different scales (intercept ~ -60000, sigma ~ 19000).
"""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    earn = np.asarray(data["earn"], dtype=float)
    height = np.asarray(data["height"], dtype=float)
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    numpyro.sample("earn", dist.Normal(beta[0] + beta[1] * height, sigma), obs=earn)
