"""The extension contracts: optional hooks read in one place with declared defaults, objectives
usable as soon as they are built, keys that belong to the caller, a bounded program cache."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

import vitools as vt
from vitools import engine
from vitools.families import Family, FamilyHooks, family_hooks
from vitools.objectives import ObjectiveHooks, objective_hooks

MEAN = jnp.array([1.0, -2.0])


def gaussian_log_density(x):
    return -0.5 * jnp.sum((x - MEAN) ** 2)


# One target for the module: fits of the same family and objective on it reuse their compiled
# programs (the Laplace start, the loop), where a fresh lambda per fit was traced and compiled again.
TARGET = vt.Target.from_log_density(gaussian_log_density, 2)


def gaussian_target():
    return TARGET


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PlainFamily:
    """A family with the required members only: no hooks, no inheritance."""

    name: str = dataclasses.field(default="plain", metadata=dict(static=True))

    def init(self, key, target, loc, scale_tril):
        return {"loc": loc, "log_scale": jnp.log(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1)))}

    def distribution(self, params):
        return dist.Normal(params["loc"], jnp.exp(params["log_scale"])).to_event(1)


def test_a_family_without_hooks_gets_the_declared_defaults_and_fits():
    family = PlainFamily()
    assert isinstance(family, Family)
    assert family_hooks(family) == FamilyHooks()
    for objective in ("reverse_kl", "forward_kl"):  # forward KL: no `widened`, so q alone proposes
        fit = vt.fit(gaussian_target(), objective=objective, family=family, num_steps=400, progress=False)
        # exact target N(MEAN, I), started from its Laplace approximation: stays within MC noise
        np.testing.assert_allclose(fit.sample_flat(4000, seed=1).mean(0), MEAN, atol=0.15)


def test_hooks_read_what_families_and_objectives_declare():
    assert family_hooks(vt.MeanField()).structure == "diagonal"
    assert family_hooks(vt.FullRank()).whiten == "full" and family_hooks(vt.FullRank()).widened is not None
    assert family_hooks(vt.IAF()).sample_with_log_prob is not None
    assert objective_hooks(vt.ReverseKL()) == ObjectiveHooks()
    hooks = objective_hooks(vt.ForwardKL())
    assert hooks.mass_covering and hooks.default_learning_rate(100) == 0.005 and hooks.resolve is not None


def test_forward_kl_is_usable_as_built():
    objective = vt.ForwardKL()
    assert objective.num_density_evals(10) == 64 and objective.num_density_evals(50) == 100
    target, family = gaussian_target(), vt.FullRank()
    params = family.init(None, target, MEAN, jnp.eye(2))
    key = jax.random.PRNGKey(0)
    loss, info = objective.loss(key, params, family, target)
    resolved = objective.resolve(target)
    assert (resolved.num_draws, resolved.widen) == (64, 2.0)
    np.testing.assert_allclose(resolved.loss(key, params, family, target)[0], loss, rtol=1e-12)


def _normal_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", 8):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_forward_kl_from_draws_is_usable_as_built_and_resolve_only_saves_work():
    y = np.random.default_rng(0).normal(1.0, 0.5, size=8)
    mcmc = MCMC(NUTS(_normal_model), num_warmup=200, num_samples=300, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), y=y)
    objective = vt.ForwardKLFromDraws(mcmc, batch_size=1000)  # read into arrays at construction
    assert isinstance(objective.draws, dict) and objective.draws["sigma"].shape == (300,)
    target = vt.Target.from_model(_normal_model, y=y)
    family = vt.FullRank()
    params = family.init(None, target, target.initial_point, 0.5 * jnp.eye(2))
    key = jax.random.PRNGKey(1)
    loss = objective.loss(key, params, family, target)[0]  # unconstrains the minibatch itself
    resolved = objective.resolve(target)  # unconstrained once
    assert resolved.draws.shape == (300, 2)
    np.testing.assert_allclose(resolved.loss(key, params, family, target)[0], loss, rtol=1e-6)
    assert objective.num_density_evals(target.dim) == 0
    with pytest.raises(ValueError, match="no draws"):
        vt.ForwardKLFromDraws(MCMC(NUTS(_normal_model), num_warmup=1, num_samples=1))
    with pytest.raises(TypeError, match="must be a numpyro MCMC"):
        vt.ForwardKLFromDraws("draws")


def test_a_key_replaces_the_seed():
    target = gaussian_target()
    by_seed = vt.fit(target, num_steps=200, seed=3, progress=False)
    by_key = vt.fit(target, num_steps=200, key=jax.random.PRNGKey(3), progress=False)
    np.testing.assert_array_equal(by_seed.losses, by_key.losses)
    assert by_seed.seed == 3 and by_key.seed is None
    typed = vt.fit(target, num_steps=50, key=jax.random.key(3), progress=False)
    assert typed.num_steps == 50
    np.testing.assert_array_equal(
        by_seed.sample(10, seed=4)["x"], by_seed.sample(10, key=jax.random.PRNGKey(4))["x"]
    )
    with pytest.raises(TypeError, match="must be a JAX PRNG key"):
        vt.fit(target, num_steps=10, key=3, progress=False)


def test_the_program_cache_is_bounded_and_counts_compilations():
    programs = engine.ProgramCache(max_size=1)
    target, family, optimizer = gaussian_target(), vt.MeanField(), engine.default_optimizer()
    state = engine.init_state(
        jax.random.PRNGKey(0), family.init(None, target, MEAN, jnp.eye(2)), optimizer, 0.1
    )
    for objective in (vt.ReverseKL(2), vt.ReverseKL(4), vt.ReverseKL(2)):  # the third was evicted
        engine.optimize(
            state, 10, objective, family, target, optimizer, chunk_size=10, progress=False, programs=programs
        )
    assert len(programs) == 1 and programs.num_compiled == 3
    engine.optimize(
        state,
        10,
        vt.ReverseKL(2),
        family,
        target,
        optimizer,
        chunk_size=10,
        progress=False,
        programs=programs,
    )
    assert programs.num_compiled == 3  # kept: no compilation
    with pytest.raises(ValueError, match="max_size must be a positive integer"):
        engine.ProgramCache(max_size=0)


def test_draws_that_do_not_fit_the_target_are_refused_before_the_start_is_computed(monkeypatch):
    from vitools import start

    def no_start(*args, **kwargs):
        raise AssertionError("the Laplace start ran before the objective was checked")

    monkeypatch.setattr(start, "starting_point", no_start)
    draws = {"x": np.zeros((2, 2))}  # 2 draws of a 2-D target: a full-rank fit needs 3
    with pytest.raises(ValueError, match="got 2 draws of a 2-dimensional target"):
        vt.fit(gaussian_target(), objective=vt.ForwardKLFromDraws(draws), progress=False)


class _Params(NamedTuple):
    loc: jax.Array
    log_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class _Unregistered:
    name: str = "unregistered"

    def init(self, key, target, loc, scale_tril):
        return _Params(loc, jnp.log(jnp.diag(scale_tril)))

    def distribution(self, params):
        return dist.Normal(params.loc, jnp.exp(params.log_scale)).to_event(1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _NameLeaf(_Unregistered):
    name: str = "name_leaf"  # not marked static: a str leaf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _NoEvent(_Unregistered):
    name: str = dataclasses.field(default="no_event", metadata=dict(static=True))

    def distribution(self, params):
        return dist.Normal(params.loc, jnp.exp(params.log_scale))  # no .to_event(1)


@pytest.mark.parametrize(
    "family, error, match",
    [
        (vt.MeanField, TypeError, r"must be an instance, got the class: pass MeanField\(\)"),
        (_Unregistered(), TypeError, "not a registered pytree.*register_dataclass"),
        (_NameLeaf(), TypeError, "non-array leaf 'name_leaf'.*static"),
        (_NoEvent(), ValueError, r"event shape \(\) and batch shape \(2,\).*add .to_event\(1\)"),
    ],
)
def test_a_family_that_breaks_the_contract_is_refused_before_the_start_runs(
    monkeypatch, family, error, match
):
    from vitools import start

    monkeypatch.setattr(start, "starting_point", lambda *a, **k: pytest.fail("the start ran"))
    with pytest.raises(error, match=match) as caught:
        vt.fit(gaussian_target(), family=family, progress=False)
    assert "model_kwargs" not in str(caught.value)  # not mistaken for a model argument


def test_an_objective_class_is_refused_with_what_to_pass():
    with pytest.raises(TypeError, match=r"pass ForwardKL\(\)"):
        vt.fit(gaussian_target(), objective=vt.ForwardKL, progress=False)


def test_seed_and_key_together_are_refused():
    target = gaussian_target()
    with pytest.raises(ValueError, match="seed or key, not both"):
        vt.fit(target, seed=3, key=jax.random.key(0), progress=False)
    fit = vt.fit(target, num_steps=20, progress=False)
    assert fit.seed == 0
    with pytest.raises(ValueError, match="seed or key, not both"):
        fit.sample(5, seed=1, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"shape \(3,\)"):  # a batch of keys is not a key
        fit.sample(5, key=jax.random.split(jax.random.key(0), 3))


def test_from_gaussian_refuses_a_covariance_given_for_a_cholesky_factor():
    target = gaussian_target()
    with pytest.raises(ValueError, match="lower-triangular with a positive diagonal"):
        vt.Fit.from_gaussian(target, np.zeros(2), np.array([[2.0, 0.5], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        vt.Fit.from_gaussian(target, np.array([np.nan, 0.0]), np.eye(2))


@pytest.mark.parametrize("whiten", ["yes", True, 0])
def test_whiten_values_are_checked(whiten):
    with pytest.raises(ValueError, match="whiten must be 'full', 'diagonal' or False"):
        vt.FullRank(whiten=whiten)
    with pytest.raises(ValueError, match="whiten must be 'full', 'diagonal' or False"):
        vt.IAF(whiten=whiten)


def test_compare_wants_a_dict_or_one_fit_and_forward_kl_from_draws_takes_nested_lists():
    one = vt.fit(gaussian_target(), num_steps=10, progress=False)
    with pytest.raises(TypeError, match=r"fits must be a dict \{name: fit\} or one Fit, got list"):
        vt.compare([one])
    table = vt.compare(one, num_draws=100)  # one fit: a row named by the fit (a re-trial tried it)
    assert list(table.index) == [one.name] and table.loc[one.name, "objective"] == "reverse_kl"
    objective = vt.ForwardKLFromDraws([[1.0, 2.0], [0.0, 1.0], [2.0, 0.5]] * 10)
    assert objective.draws.shape == (30, 2)
    fit = vt.fit(gaussian_target(), objective=objective, num_steps=50, progress=False)
    assert fit.status == "completed"
