"""posteriordb ``earnings-logearn_interaction_z``: log earnings on standardized height, sex and
their interaction, flat priors. The transformed data is computed in NumPy (``sd`` is Stan's sample
sd, ``ddof=1``)."""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    earn = np.asarray(data["earn"], dtype=float)
    height = np.asarray(data["height"], dtype=float)
    male = np.asarray(data["male"], dtype=float)
    log_earn = np.log(earn)
    z_height = (height - height.mean()) / height.std(ddof=1)
    inter = z_height * male
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    mean = beta[0] + beta[1] * z_height + beta[2] * male + beta[3] * inter
    numpyro.sample("log_earn", dist.Normal(mean, sigma), obs=log_earn)
