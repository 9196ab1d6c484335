"""The family's learning-rate scale (FamilyHooks.learning_rate_scale): read with a default of 1."""

import dataclasses

from vitools import FullRank
from vitools.families.base import FamilyHooks, family_hooks


def test_a_family_without_the_attribute_keeps_the_objectives_rate():
    assert FamilyHooks().learning_rate_scale == 1.0
    assert family_hooks(FullRank()).learning_rate_scale == 1.0


def test_a_familys_own_scale_is_read():
    @dataclasses.dataclass(frozen=True)
    class Slow:
        name: str = "slow"
        learning_rate_scale: float = 0.5

    assert family_hooks(Slow()).learning_rate_scale == 0.5


def test_vt_fit_runs_the_coupling_flow_at_half_the_objectives_rate():
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    import vitools as vt
    from vitools.fitting import default_learning_rate, default_rate

    def model():
        numpyro.sample("z", dist.Normal(jnp.zeros(2), jnp.array([1.0, 3.0])).to_event(1))

    family = vt.Coupling(num_layers=2, hidden_dims=(8,))
    assert default_rate(vt.ReverseKL(), family, 2) == 0.5 * default_learning_rate(2)
    assert default_rate(vt.ReverseKL(), vt.FullRank(), 2) == default_learning_rate(2)
    options = dict(family=family, num_steps=30, init="median", seed=0, progress=False, converge=False)
    default, half, full = (
        vt.fit(model, **options, **rate)
        for rate in (
            {},
            {"learning_rate": 0.5 * default_learning_rate(2)},
            {"learning_rate": default_learning_rate(2)},
        )
    )
    np.testing.assert_array_equal(default.losses, half.losses)  # same seed, same rate: one computation
    assert not np.array_equal(default.losses, full.losses)
