"""posteriordb ``nes1996-nes``: party identification on nine predictors (age as three dummies
made in NumPy from ``age_discrete``), flat priors on beta and sigma."""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def model(data):
    age = np.asarray(data["age_discrete"])
    columns = [np.ones(len(age))]
    columns += [np.asarray(data[k], dtype=float) for k in ("real_ideo", "race_adj")]
    columns += [(age == level).astype(float) for level in (2, 3, 4)]  # 30-44, 45-64, 65+
    columns += [np.asarray(data[k], dtype=float) for k in ("educ1", "gender", "income")]
    X = np.stack(columns, axis=1)
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (9,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    partyid7 = np.asarray(data["partyid7"], dtype=float)
    numpyro.sample("partyid7", dist.Normal(X @ beta, sigma), obs=partyid7)
