"""Targets: model → flat unconstrained log density, and back to named constrained sites."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

from vitools import Target


def dependent_support_model():
    a = numpyro.sample("a", dist.Uniform(0.0, 1.0))
    numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))


def regression(x, y=None):
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    coef = numpyro.sample("coef", dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    numpyro.deterministic("coef_sum", jnp.sum(coef))
    numpyro.sample("y", dist.Normal(jnp.sum(coef) * x, scale), obs=y)


def test_sites_follow_model_order_and_shapes():
    x = jnp.linspace(0, 1, 5)
    target = Target.from_model(regression, x, y=2 * x)
    assert target.site_names == ("scale", "coef")
    assert target.dim == 7 and target.initial_point.shape == (7,)
    values = target.constrain(target.initial_point, deterministic=True)
    assert values["coef"].shape == (2, 3) and values["scale"].shape == ()
    assert values["coef_sum"] == pytest.approx(float(jnp.sum(values["coef"])))
    assert "coef_sum" not in target.constrain(target.initial_point)


def test_from_model_compiles_its_initial_point_once_per_shapes():
    """A second model with new data of the same shapes reuses the compiled init program (a
    fresh program per call cost 0.7 s on every warm vt.fit; measured)."""
    from vitools.model import initial_point_program

    x = jnp.linspace(0, 1, 5)
    program = initial_point_program((x, 2 * x))  # the one Target.from_model runs for these data
    Target.from_model(regression, x, y=2 * x)
    compiled = program._cache_size()
    again = Target.from_model(regression, x + 1.0, y=3 * x)
    assert program._cache_size() == compiled
    assert np.all(np.isfinite(np.asarray(again.initial_point)))
    Target.from_model(regression, jnp.linspace(0, 1, 7), y=jnp.ones(7))  # new shapes: compiles
    assert program._cache_size() == compiled + 1


def test_log_density_is_numpyro_potential():
    x = jnp.linspace(0, 1, 5)
    target = Target.from_model(regression, x, y=2 * x)
    u = jax.random.normal(jax.random.PRNGKey(0), (7,))
    expected = -potential_energy(regression, (x,), {"y": 2 * x}, target.unravel(u))
    assert target.log_density(u) == pytest.approx(float(expected), rel=1e-12)


def test_round_trip_and_jacobian():
    x = jnp.linspace(0, 1, 5)
    target = Target.from_model(regression, x, y=2 * x)
    u = jax.random.normal(jax.random.PRNGKey(1), (7,))
    values = target.constrain(u)
    np.testing.assert_allclose(target.unconstrain(values), u, atol=1e-12)
    # scale = exp(u_0) (HalfNormal's support is positive): log|det J| = u_0.
    assert target.log_abs_det_jacobian(u) == pytest.approx(float(u[0]), abs=1e-10)


def test_dependent_support_maps_back_per_draw():
    """0 < b < 1 - a must hold for every draw, with each draw's own a (not the initial one)."""
    target = Target.from_model(dependent_support_model)
    flat = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (2000, 2))
    values = jax.vmap(target.constrain)(flat)
    a, b = np.asarray(values["a"]), np.asarray(values["b"])
    assert np.all((0 < a) & (a < 1)) and np.all((0 < b) & (b < 1 - a))
    # b spans its whole interval: a bound frozen at the init point (a = 0.5, the median) would
    # cap every b at 0.5.
    assert np.max(b / (1 - a)) > 0.99 and np.max(b) > 0.9
    back = jax.vmap(target.unconstrain)(values)
    np.testing.assert_allclose(back, flat, atol=1e-8)


def test_from_log_density():
    target = Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 3, name="theta")
    assert target.dim == 3 and target.site_names == ("theta",)
    assert target.log_density(jnp.ones(3)) == pytest.approx(-1.5)
    assert target.log_abs_det_jacobian(jnp.ones(3)) == 0.0


def discrete_model():
    numpyro.sample("k", dist.Poisson(3.0))
    numpyro.sample("x", dist.Normal(0.0, 1.0))


def no_latent_model(y=1.0):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def bernoulli_model(y):
    p = numpyro.sample("p", dist.Beta(1.0, 1.0))
    numpyro.sample("y", dist.Bernoulli(p), obs=y)


def nan_data_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: Target.from_model(discrete_model), ValueError, "latent site 'k' is discrete"),
        (lambda: Target.from_model(no_latent_model), ValueError, "no latent sample sites"),
        (
            lambda: Target.from_model(nan_data_model, jnp.array([1.0, jnp.nan])),
            ValueError,
            r"finite log density.*observed site 'y' has 1 value\(s\) outside its distribution's support.*nan",
        ),
        (
            lambda: Target.from_model(bernoulli_model, np.array([0, 2, 1])),
            ValueError,
            r"observed site 'y' has 1 value\(s\) outside its distribution's support \(BernoulliProbs.*e.g. 2",
        ),
        (lambda: Target.from_model("not a model"), TypeError, "callable NumPyro model, got str"),
        (lambda: Target.from_model(nan_data_model, 1.0, 2.0, 3.0), TypeError, "calling the model"),
        (lambda: Target.from_log_density(lambda x: x, 3), ValueError, "must return a scalar"),
        (lambda: Target.from_log_density(lambda x: -jnp.sum(x**2), 0), ValueError, "dim must be a positive"),
        (
            lambda: Target.from_log_density(lambda x: -jnp.sum(x**2), 2.5),
            ValueError,
            "dim must be a positive",
        ),
        (lambda: Target.from_log_density(3.0, 2), TypeError, "must be callable"),
    ],
)
def test_bad_input(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_unconstrain_names_missing_sites():
    target = Target.from_model(dependent_support_model)
    with pytest.raises(ValueError, match=r"lack latent site\(s\) \['b'\]"):
        target.unconstrain({"a": 0.5})


def test_an_unhashable_callable_model_works():
    """jit keys its cache on static arguments; an unhashable model object is keyed by identity."""

    class Model:
        __hash__ = None

        def __call__(self):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    target = Target.from_model(Model())
    assert target.dim == 1 and np.isfinite(float(target.log_density(target.initial_point)))
