"""Contracts of the compiled loop: compile once, no per-step Python, NaN guard, seeds, Ctrl-C, vmap."""

import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

import vitools as vt
from vitools import engine
from vitools.progress import Progress


def normal_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


Y = jnp.array([0.3, 1.2, -0.4, 2.2, 0.9, 1.4])


def quiet_fit(*args, **kwargs):
    kwargs.setdefault("progress", False)
    return vt.fit(*args, **kwargs)


def test_compiles_once_per_shapes_objective_family():
    quiet_fit(normal_model, Y, num_steps=200, seed=0)
    before = engine.num_compilations()
    quiet_fit(normal_model, Y + 1.0, num_steps=300, seed=1, learning_rate=0.02)  # new data, steps, seed
    assert engine.num_compilations() == before
    quiet_fit(normal_model, Y, num_steps=200, family="meanfield")
    assert engine.num_compilations() == before + 1


def test_a_fit_on_new_shapes_compiles_a_handful_of_programs():
    """Run op by op, every array operation compiles a small XLA program the first time it meets
    its shapes (~15 ms each); the set-up therefore runs as a few jitted programs. Measured: 11
    compilations for a model of new shapes (the init point, the Laplace init, the frame, the
    family's parameters, the optimizer state, the loop, the improper-posterior check's draws and,
    as this model's sums leave directions of sd > 10, its cost program, three small ones), 42
    before the set-up was jitted."""
    compiles = []

    def listener(event, seconds, **kwargs):
        if "backend_compile" in event:
            compiles.append(event)

    def model(y, dim):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0).expand([dim]).to_event(1))
        numpyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    quiet_fit(model, jnp.arange(11.0), 6, num_steps=200)  # the process's one-off compilations
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        quiet_fit(model, jnp.arange(13.0), 7, num_steps=200)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert 0 < len(compiles) <= 12, compiles


def test_no_python_loop_per_step():
    """The log density is traced a handful of times per compilation, not once per step."""
    calls = []

    def log_density(x):
        calls.append(1)  # runs at trace time only
        return -0.5 * jnp.sum((x - 1.0) ** 2)

    target = vt.Target.from_log_density(log_density, 2)
    calls.clear()
    fit = quiet_fit(target, num_steps=1000, init="median", converge=False)
    assert fit.num_steps == 1000 and len(calls) < 10


def test_same_seed_same_result_and_counts():
    a = quiet_fit(normal_model, Y, num_steps=300, seed=3, objective="forward_kl")
    b = quiet_fit(normal_model, Y, num_steps=300, seed=3, objective="forward_kl")
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.params.loc, b.params.loc)
    # ForwardKL draws max(64, 2 dim) per step (dim = 2), plus the Laplace start's own evaluations
    assert a.num_grad_evals == 300 * 64 + a.init_grad_evals and a.init_grad_evals > 0
    assert set(a.trace) == {"loss", "ess", "log_evidence"} and len(a.trace["ess"]) == 300
    c = quiet_fit(normal_model, Y, num_steps=300, seed=4, objective="forward_kl")
    assert not np.array_equal(a.losses, c.losses)


def exploding_target():
    """Pulls q to the right; the density is NaN past x = 3, so a NaN loss is bound to happen."""
    return vt.Target.from_log_density(
        lambda x: jnp.where(x[0] > 3.0, jnp.nan, 4.0 * x[0] - 0.1 * x[0] ** 2), 1
    )


def test_nonfinite_loss_raises_and_keeps_last_finite_params():
    adam = optax.adam(0.05)  # a constant rate: the path does not depend on num_steps
    with pytest.raises(vt.NonFiniteLossError, match="became non-finite at step") as err:
        quiet_fit(exploding_target(), num_steps=2000, init="median", optimizer=adam, chunk_size=50)
    fit = err.value.fit
    assert fit.status == "nonfinite" and 0 < fit.num_steps < 2000
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(fit.params))
    assert np.all(np.isfinite(fit.losses[:-1])) and not np.isfinite(fit.losses[-1])
    assert len(fit.losses) == fit.num_steps + 1
    # the kept parameters are those of the last finite step: rerunning that many steps gives them
    again = quiet_fit(exploding_target(), num_steps=fit.num_steps, init="median", optimizer=adam)
    np.testing.assert_array_equal(again.params.loc, fit.params.loc)


def test_nonfinite_can_warn_instead():
    with pytest.warns(RuntimeWarning, match="non-finite"):
        fit = quiet_fit(
            exploding_target(), num_steps=2000, init="median", learning_rate=0.05, on_nonfinite="warn"
        )
    assert fit.status == "nonfinite"


def test_ctrl_c_returns_the_fit_so_far(monkeypatch):
    calls = []

    def interrupt_on_third(self, done, **numbers):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupt_on_third)
    monkeypatch.setattr(engine, "CALL_SECONDS", 0.0)  # one chunk per call
    fit = quiet_fit(normal_model, Y, num_steps=1000, chunk_size=100, init="median")
    assert fit.status == "interrupted" and fit.num_steps == 300 and len(fit.losses) == 300
    # Several chunks per call: the fit so far is still whole (steps, losses and trace agree).
    calls.clear()
    monkeypatch.setattr(engine, "CALL_SECONDS", 1e9)  # as many chunks per call as allowed
    fit = quiet_fit(normal_model, Y, num_steps=5000, chunk_size=100, init="median", converge=False)
    assert fit.status == "interrupted" and fit.num_steps == len(fit.losses) == len(fit.trace["ess"])
    assert fit.num_steps == 100 + 2 * engine.MAX_CHUNKS_PER_CALL * 100
    # In the default start's pilot race (vitools.start.RACE_MIN_STEPS): the pilot so far is the fit.
    calls.clear()
    monkeypatch.setattr(engine, "CALL_SECONDS", 0.0)
    fit = quiet_fit(normal_model, Y, num_steps=1000, chunk_size=10)
    assert fit.status == "interrupted" and fit.num_steps == 30 == len(fit.losses)


@pytest.mark.parametrize("num_steps", [1000, 950])
def test_chunks_per_call_change_nothing_but_the_calls(monkeypatch, num_steps):
    updates = []
    monkeypatch.setattr(Progress, "update", lambda self, done, **numbers: updates.append(done))
    runs, calls = {}, {}
    for call_seconds in (0.0, 1e9):  # one chunk per call; all the remaining chunks in one call
        monkeypatch.setattr(engine, "CALL_SECONDS", call_seconds)
        updates.clear()
        fit = quiet_fit(
            normal_model, Y, num_steps=num_steps, chunk_size=100, seed=5, init="median", converge=False
        )
        runs[call_seconds] = fit
        calls[call_seconds] = list(updates)
    one, many = runs[0.0], runs[1e9]
    assert len(calls[0.0]) == 10 and calls[1e9] == [100, num_steps]  # the first call times a chunk
    assert one.num_steps == many.num_steps == len(many.losses) == num_steps
    np.testing.assert_array_equal(one.losses, many.losses)
    np.testing.assert_array_equal(one.trace["ess"], many.trace["ess"])
    np.testing.assert_array_equal(one.params.loc, many.params.loc)


def test_learning_rate_is_scheduled():
    """Warm-up then cosine decay of the peak rate; the last step runs at 2% of the peak."""
    factors = engine.learning_rate_factor(jnp.array([0, 25, 50, 500, 999]), 1000)
    expected_mid = 0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * 450 / 950))
    np.testing.assert_allclose(factors[2:], [1.0, expected_mid, 0.02], atol=2e-3)
    assert factors[0] < factors[1] < factors[2]

    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 2)
    family, optimizer = vt.MeanField(), engine.default_optimizer()
    params = family.init(jax.random.PRNGKey(1), target, jnp.zeros(2), jnp.eye(2))
    state = engine.init_state(jax.random.PRNGKey(0), params, optimizer, 0.5)
    final, _ = engine.run_chunk(state, 200, vt.ReverseKL(2), family, target, optimizer, 200)
    rate = final.opt_state.hyperparams["learning_rate"]  # the rate used by the last step (199)
    assert rate == pytest.approx(0.5 * float(engine.learning_rate_factor(199, 200)), rel=1e-6)


def test_early_stopping_on_relative_change():
    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 2)
    fit = quiet_fit(target, num_steps=20000, tol=1e-3, chunk_size=100)
    assert fit.status == "converged" and fit.num_steps < 20000


def test_progress_prints_lines_when_not_a_tty():
    stream = io.StringIO()
    bar = Progress(100, "fit", every_s=0.0, stream=stream)
    bar.update(50, loss=1.5, ess=30.0)
    bar.close("completed", loss=1.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("fit: 50/100") and "ess=30" in lines[0]
    assert lines[-1].endswith("[completed]")
    # a run's last line once, without a trailing space (the diagnostics' progress printed it twice)
    stream = io.StringIO()
    bar = Progress(10, "log p", every_s=0.0, stream=stream)
    bar.update(10)
    bar.close()
    assert len(stream.getvalue().splitlines()) == 1
    assert stream.getvalue().startswith("log p: 10/10 (") and stream.getvalue().endswith("s)\n")


def test_many_fits_vmap_into_one_program():
    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum((x - 2.0) ** 2), 2)
    family, objective, optimizer = vt.FullRank(), vt.ReverseKL(4), engine.default_optimizer()
    params = family.init(jax.random.PRNGKey(1), target, jnp.zeros(2), jnp.eye(2))

    def start(key):
        return engine.init_state(key, params, optimizer, 0.1)

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(start)(keys)
    run = jax.vmap(engine.run_chunk, in_axes=(0, None, None, None, None, None, None))
    final, (losses, _) = jax.jit(run, static_argnums=(5, 6))(
        states, 300, objective, family, target, optimizer, 300
    )
    assert losses.shape == (3, 300)
    one, (one_losses, _) = engine.run_chunk(start(keys[1]), 300, objective, family, target, optimizer, 300)
    np.testing.assert_allclose(losses[1], one_losses, rtol=1e-6)
    np.testing.assert_allclose(final.params.loc, 2.0, atol=0.1)


def test_autoguides_work_as_families():
    for guide in (AutoDiagonalNormal(normal_model), AutoMultivariateNormal(normal_model)):
        fit = quiet_fit(normal_model, Y, family=guide, num_steps=1500)
        draws = fit.sample(4000, seed=1)
        # posterior mean of mu ≈ sample mean (flat-ish prior); 4000 draws: MC error ~ 0.3/63
        assert abs(draws["mu"].mean() - float(Y.mean())) < 0.15


def test_sample_and_log_prob_agree_on_constrained_draws():
    fit = quiet_fit(normal_model, Y, num_steps=300)
    draws, log_p, log_q = fit.sample_with_log_densities(50, seed=2)
    assert draws["mu"].shape == (50,) and np.all(draws["sigma"] > 0)
    np.testing.assert_allclose(fit.log_prob(draws), log_q, rtol=1e-9)
    # log q in the constrained space = log q(u) - log sigma (sigma = exp(u))
    flat = fit.sample_flat(50, seed=2)
    np.testing.assert_allclose(log_q, jax.vmap(fit.distribution.log_prob)(flat) - flat[:, 1], rtol=1e-9)
    assert np.all(np.isfinite(log_p)) and fit.params.loc.dtype == jnp.float64  # x64 respected


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(objective="elbo"), ValueError, "unknown objective 'elbo'"),
        (dict(family="diag"), ValueError, "unknown family 'diag'"),
        (dict(family=3), TypeError, "family must be a name"),
        (dict(objective=None), TypeError, "objective must be a name"),
        (dict(num_steps=0), ValueError, "num_steps must be a positive integer"),
        (dict(num_steps=10.5), ValueError, "num_steps must be a positive integer"),
        (dict(seed="0"), TypeError, "seed must be an integer"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite must be"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be a finite positive"),
        (dict(learning_rate=np.inf), ValueError, "learning_rate must be a finite number"),
        (dict(num_steps=2**40), ValueError, "num_steps must be at most 2147483647"),
        (dict(tol="x"), TypeError, "tol must be a number"),
        (dict(seed=2**32), ValueError, r"seed must be an integer in \[0, 2\*\*32\)"),
        (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 2\*\*32\)"),
        (dict(init="map"), ValueError, "init must be one of 'laplace', 'median'; got 'map'"),
        (dict(init=(jnp.zeros(2), jnp.eye(3))), ValueError, r"must have shapes \(d,\) and \(d, d\)"),
        (dict(init=(jnp.array([0.0, np.nan]), jnp.eye(2))), ValueError, "init.*NaN or infinite"),
        (dict(init=(jnp.zeros(2), -jnp.eye(2))), ValueError, "lower-triangular with a positive diagonal"),
        (dict(optimizer="adam"), TypeError, "optimizer must be an optax.GradientTransformation"),
    ],
)
def test_bad_fit_arguments_are_refused_before_anything_compiles(kwargs, error, match):
    compiled = engine.num_compilations()
    with pytest.raises(error, match=match):
        quiet_fit(normal_model, Y, num_steps=kwargs.pop("num_steps", 10), **kwargs)
    assert engine.num_compilations() == compiled


def test_an_init_of_the_wrong_dimension_names_the_model_dimension():
    with pytest.raises(ValueError, match=r"must have shapes \(2,\)"):
        quiet_fit(normal_model, Y, num_steps=10, init=(jnp.zeros(3), jnp.eye(3)))


def test_lowrank_rank_is_checked():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        vt.LowRank(rank=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_fit(normal_model, Y, family=vt.LowRank(rank=1), num_steps=50)
