"""Batch and match (vitools.objectives.score) and its stopping rule (vitools.objectives.loss_fall):
the closed-form update, exact recovery of Gaussian targets, the road through vt.fit, and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
import scipy.linalg
from numpyro.distributions import constraints

import vitools as vt
from vitools import FullRank, LowRank, Target, validate
from vitools.convergence import ConvergenceRule
from vitools.engine import default_optimizer, init_state, objective_state, optimize
from vitools.laplace import initial_gaussian
from vitools.models import MODELS
from vitools.objectives import Objective, get_objective, objective_hooks
from vitools.objectives.loss_fall import LossFallRule
from vitools.objectives.score import (
    AVERAGE_MAX_STEPS,
    BatchAndMatch,
    BatchAndMatchState,
    average_gaussians,
    bam_update,
)

DIM = 5
_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(DIM, DIM))
COV = _A @ _A.T + 0.5 * np.eye(DIM)  # correlations up to ~0.9, variances 0.9-9
MEAN = _RNG.normal(size=DIM)


def gaussian_log_density(x):
    """The Gaussian's log density + 3 (so log Z = 3), NaN far out in x[0] > 50 (over 15 sds from
    the mean: no draw of the recovery test goes there; the non-finite test starts there)."""
    log_p = jax.scipy.stats.multivariate_normal.logpdf(x, MEAN, COV) + 3.0
    return jnp.where(x[0] > 50.0, jnp.nan, log_p)


TARGET = Target.from_log_density(gaussian_log_density, DIM)  # one target: one compiled loop
OBJECTIVE = BatchAndMatch(batch_size=8, average=0.0)  # q is BaM's iterate (averaging: tested apart)


def run(params, num_steps, seed=0):
    """The compiled loop from ``params``, as vt.fit runs it after its start."""
    key, family = jax.random.PRNGKey(seed), FullRank()
    carried = objective_state(OBJECTIVE, jax.random.fold_in(key, 2), params, family, TARGET)
    state = init_state(key, params, default_optimizer(), 0.1, None, carried)
    return optimize(state, num_steps, OBJECTIVE, family, TARGET, default_optimizer(), progress=False)


def random_inputs(seed, dim=4, num_draws=3):
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=dim)
    tril = np.tril(rng.normal(size=(dim, dim)), -1) + np.diag(rng.uniform(0.5, 2.0, dim))
    draws = loc + rng.normal(size=(num_draws, dim)) @ tril.T
    scores = rng.normal(size=(num_draws, dim))
    return loc, tril, draws, scores


@pytest.mark.parametrize("lam", [0.3, 7.0, 400.0])
def test_update_is_the_papers_formula_and_solves_the_quadratic_equation(lam):
    """Σ' equals 2V(I + (I + 4UV)^{1/2})⁻¹ (Cai et al. 2024), computed here with SciPy's sqrtm,
    and solves Σ'UΣ' + Σ' = V; μ' is the paper's. B = 3 < d = 4, so U and C are singular (the
    case where a batch is smaller than the dimension)."""
    loc, tril, draws, scores = random_inputs(1)
    new_loc, new_tril = jax.jit(bam_update)(*map(jnp.asarray, (loc, tril, draws, scores)), jnp.asarray(lam))
    zbar, gbar = draws.mean(0), scores.mean(0)
    C = (draws - zbar).T @ (draws - zbar) / 3
    G = (scores - gbar).T @ (scores - gbar) / 3
    U = lam * G + lam / (1 + lam) * np.outer(gbar, gbar)
    V = tril @ tril.T + lam * C + lam / (1 + lam) * np.outer(loc - zbar, loc - zbar)
    eye = np.eye(4)
    expected = 2 * V @ np.linalg.inv(eye + scipy.linalg.sqrtm(eye + 4 * U @ V).real)
    sigma = np.asarray(new_tril @ new_tril.T)
    np.testing.assert_allclose(sigma, expected, rtol=1e-8, atol=1e-10)  # float64 round-off
    np.testing.assert_allclose(sigma @ U @ sigma + sigma, V, rtol=1e-8, atol=1e-10)
    expected_loc = loc / (1 + lam) + lam / (1 + lam) * (expected @ gbar + zbar)
    np.testing.assert_allclose(new_loc, expected_loc, rtol=1e-8, atol=1e-10)
    assert np.allclose(new_tril, np.tril(new_tril)) and np.all(np.diagonal(new_tril) > 0)


@pytest.mark.parametrize("num_draws, lam", [(2, 10.0), (40, 1e4)])
def test_a_gaussian_target_is_a_fixed_point_of_every_batch(num_draws, lam):
    """At q = p the scores of q and p agree at every draw, so any batch, of any size (2 is below
    the dimension), at any λ, leaves q where it is: an identity, up to round-off."""
    chol = np.linalg.cholesky(COV)
    draws = MEAN + np.random.default_rng(num_draws).normal(size=(num_draws, DIM)) @ chol.T
    scores = -np.linalg.solve(COV, (draws - MEAN).T).T
    new_loc, new_tril = jax.jit(bam_update)(MEAN, chol, draws, scores, lam)
    np.testing.assert_allclose(new_loc, MEAN, atol=1e-10)
    np.testing.assert_allclose(new_tril, chol, atol=1e-10)


def test_recovers_a_correlated_gaussian_exactly_in_a_few_steps():
    """From N(0, 0.1² I) (variances 9-90x too small; NumPyro's simple start): 30 steps of 8
    draws (240 gradients) with the paper's step sizes (λ_t = 40 / (t + 1)). The target is a
    fixed point of every batch (test above), so there is no Monte Carlo floor: the largest error
    of the mean and the covariance was 1e-3 after 10 steps, 3e-9 after 20 and 1.5e-12 after 30
    (seed 0, measured). 1e-7 leaves orders of margin for other seeds and platforms, yet fails for
    an update off by any constant factor. The reported loss is the negative ELBO, -log Z = -3
    once q = p, every log weight being log Z."""
    family = FullRank()
    outcome = run(family.init(None, TARGET, jnp.zeros(DIM), 0.1 * jnp.eye(DIM)), num_steps=30)
    assert outcome.status == "completed"
    fitted = outcome.state.params
    np.testing.assert_allclose(fitted.loc, MEAN, atol=1e-7)
    scale_tril = family.scale_tril(fitted)
    np.testing.assert_allclose(scale_tril @ scale_tril.T, COV, atol=1e-7 * COV.max())
    assert outcome.losses[-1] == pytest.approx(-3.0, abs=1e-6)  # q_29 (before the last update)
    assert outcome.trace["ess"][-1] == pytest.approx(8.0, rel=1e-6)
    assert outcome.trace["score_divergence"][-1] < 1e-10
    assert isinstance(outcome.state.objective_state, BatchAndMatchState)
    assert int(outcome.state.objective_state.step) == 30


def test_a_non_finite_batch_keeps_the_last_good_q():
    """q's draws where the target is NaN: the update's scores are NaN, the loop refuses the step,
    keeps the parameters it had and does not count the step."""
    params = FullRank().init(None, TARGET, jnp.full(DIM, 100.0), 0.1 * jnp.eye(DIM))
    outcome = run(params, num_steps=5)
    assert outcome.status == "nonfinite"
    np.testing.assert_array_equal(outcome.state.params.loc, params.loc)
    assert int(outcome.state.objective_state.step) == 0


def test_vt_fit_on_a_zoo_model_gives_a_fit_that_diagnoses_well():
    """Logistic regression on 569 rows, a near-Gaussian 11-D posterior, 60 steps of 16 draws. From
    NumPyro's simple start, as the Laplace start's compilation alone costs ~7 s of CPU: k̂ was
    0.40 at 60 steps (seed 0; 0.95 at 40, 0.39 at 80: about 50 steps to arrive from there), and
    0.27-0.57 over batch sizes 8-32 and 10-320 steps from the Laplace start (measured), under
    the 0.7 threshold; a broken update (q far off or too narrow) reads above 1."""
    zoo = MODELS["logistic_regression"]
    fit = vt.fit(
        zoo.model, *zoo.args, objective=BatchAndMatch(batch_size=16), num_steps=60, init="median",
        progress=False,
        **zoo.kwargs,
    )  # fmt: skip
    assert fit.status == "completed" and fit.num_steps == 60
    assert fit.num_grad_evals == 60 * 16 + fit.init_grad_evals
    assert set(fit.trace) == {"loss", "ess", "log_evidence", "score_divergence"}
    assert np.all(np.isfinite(fit.losses))
    diagnostics = vt.diagnose(fit, warn=False)
    assert diagnostics.khat < 0.7


def test_is_an_objective_with_the_update_hooks():
    objective = BatchAndMatch()
    assert isinstance(objective, Objective)
    assert get_objective(objective) is objective  # a static pytree: vt.fit accepts it
    hooks = objective_hooks(objective)
    assert hooks.update is not None and hooks.init_state is not None and hooks.resolve is not None
    assert objective.num_density_evals(7) == objective.batch_size == 6
    assert LossFallRule().batch_size == objective.batch_size  # the rule's KL reading assumes BaM's B
    assert objective.name == "batch_and_match"
    assert float(objective.schedule(jnp.asarray(0), 5)) == 6 * 5  # λ_0 = B d (Cai et al. 2024)
    assert float(BatchAndMatch(learning_rate=0.5).schedule(jnp.asarray(9), 5)) == 0.5 * 6 * 5 / 10
    assert hooks.races_start is False and objective_hooks(get_objective("reverse_kl")).races_start
    assert hooks.stopping_rule(None) == LossFallRule() and hooks.stopping_rule(0.2) == LossFallRule(tol=0.2)
    assert BatchAndMatch(batch_size=4).stopping_rule(None) == LossFallRule(batch_size=4)  # its KL reading


def test_its_rule_stops_on_a_flat_or_rising_loss_and_not_on_a_falling_one():
    """LossFallRule compares the fitted fall over the last 200 steps with tol (0.05 nats); its
    exact-match stop is off here (exact_tol 0, tested below). The falling loss drops 0.25 nats
    per 100 steps under noise of sd 0.35 (radon's BaM fit in the funnel's neck, seed 1,
    measured): its fitted fall, 0.5 nats, has se 0.35·√(12/200) ≈ 0.086, so 0.05 is 5 se below
    it; the flat and rising ones have sd 0.01 (se 0.0025), so their fall is 20 se under 0.05 at
    most."""
    rule, rng, steps = LossFallRule(exact_tol=0.0), np.random.default_rng(0), np.arange(400)
    falling = 100.0 - steps / 400 + 0.35 * rng.normal(size=400)
    flat = 100.0 + 0.01 * rng.normal(size=400)
    rising = flat + steps / 100
    assert not rule.check(falling).converged
    assert rule.check(flat).converged and rule.check(rising).converged
    verdict = rule.check(falling)
    expected = ConvergenceRule(window=200, min_steps=200).check(falling)  # the same regression
    assert (verdict.decrease, verdict.decrease_se, verdict.window) == (
        expected.decrease,
        expected.decrease_se,
        200,
    )
    assert rule.check(flat[:199]).window == 0 and not rule.check(flat[:199]).converged  # under min_steps
    assert not rule.final(falling).converged  # after the budget the fall over steps 100-400 says so too
    assert rule.final(falling).window == 300


def test_its_rule_stops_early_only_when_the_losses_say_q_is_p():
    """The exact-match stop reads B/2 x the variance of the last 30 losses as KL(q||p) and stops
    under 0.01 nats. sd 0.01 (B = 6: 0.0003 nats; gaussian_100's BaM fit reads 0.003-0.006 over
    steps 70-100, measured) stops at step 100 over a 30-step window. Noise of sd 0.13 (logistic
    regression's per-step sd, measured; 0.051 nats) is 5x the tolerance; a 30-step sample
    variance reads under a fifth of its value with probability P(χ²₂₉ < 5.8) ≈ 1e-6: no stop
    before the 200-step fall rule. A noiseless loss falling 0.5 nats over the window is q moving:
    its variance reads 0.0167² x (30² - 1)/12 x 3 = 0.063 nats, no stop."""
    rule, rng, steps = LossFallRule(), np.random.default_rng(1), np.arange(100)
    exact = 3.0 + 0.01 * rng.normal(size=100)
    verdict = rule.check(exact)
    assert verdict.converged and verdict.window == 30 and verdict.step == 100
    assert rule.exact_kl(exact) == pytest.approx(3.0 * np.var(exact[70:], ddof=1), rel=1e-12)
    assert not rule.check(exact[:29]).converged and rule.exact_kl(exact[:29]) == np.inf  # under 30 steps
    noisy = 3.0 + 0.13 * rng.normal(size=100)
    assert not rule.check(noisy).converged and rule.check(noisy).window == 0  # the fall rule: 200 steps
    moving = 3.0 - 0.5 / 30 * steps
    assert not rule.check(moving).converged
    with_nan = exact.copy()
    with_nan[-1] = np.nan
    assert rule.exact_kl(with_nan) == np.inf
    assert LossFallRule(batch_size=64).exact_kl(exact) == pytest.approx(64 / 6 * rule.exact_kl(exact))


def test_its_rule_does_not_stop_on_a_loss_that_crawls_down_for_hundreds_of_steps():
    """radon's funnel neck (BaM, B = 6, seeds 2-3): the loss falls 0.05-0.15 nats per 100 steps
    for all 2000 steps, under per-step noise of sd ~0.35, and the 200-step fall (se 0.35 x
    √(12/200) ≈ 0.086) reads under tol (0.05) by chance. Here a crawl of 0.075 nats per 100
    steps (0.15 per window, 3x tol; seed 2's over steps 600-2000), checked from step 700, when
    the stretch is 600 steps: its fall, 0.45 nats, exceeds its share of tol (0.15) by 0.30
    against an se of 0.35 x √(12/600) ≈ 0.049, 6 se where the rule needs 2, so the sustained
    fall refuses every check where the 200-step fall alone would stop. A walk that ended (3 nats
    over steps 0-400, then flat with the same noise) is refused while the stretch holds part of
    it, and not once the stretch is flat: there the excess reads about -0.15 ± 0.049 nats, 3 se
    under zero and 5 under the refusal. Which checks the 200-step fall alone would stop is a
    property of the fixed seed, asserted so that the test exercises the case."""
    rule, rng = LossFallRule(exact_tol=0.0), np.random.default_rng(3)
    steps = np.arange(2000)
    crawl = 130.0 - 0.00075 * steps + 0.35 * rng.normal(size=2000)
    checks = range(700, 2001, 100)
    fooled = [k for k in checks if rule._trend().check(crawl[:k]).decrease < rule.tol]
    assert fooled  # the 200-step fall alone would have stopped the crawl (at step 1600)
    for k in checks:
        verdict = rule.check(crawl[:k])
        assert not verdict.converged
        if k in fooled:  # refused by the sustained fall, reported over the longer stretch
            assert verdict.window == 600
            assert verdict.decrease == pytest.approx(0.45, abs=4 * verdict.decrease_se)
    assert not rule.final(crawl).converged
    walk = 123.0 + np.where(steps < 400, 3.0 * (1.0 - steps / 400), 0.0) + 0.35 * rng.normal(size=2000)
    assert rule.sustained_fall(walk[:800]) is not None  # the stretch, steps 200-800, holds half the walk
    assert not rule.check(walk[:800]).converged
    for k in (1100, 1500, 2000):  # the stretch is flat: the 200-step fall alone decides
        assert rule.sustained_fall(walk[:k]) is None
        assert rule.check(walk[:k]).converged == (rule._trend().check(walk[:k]).decrease < rule.tol)


def test_its_final_verdict_on_a_flat_loss_needs_two_standard_errors_of_fall():
    """After the whole budget a flat loss whose 200-step fall reads over tol by noise (se ≈
    0.35 x √(12/200) ≈ 0.086 against tol 0.05: about one read in four) is converged, as
    ConvergenceRule.final has it; check, which only decides whether to stop, still says no. A
    fall over 2 se is not converged, and so is a sustained one (previous test)."""
    rule, rng = LossFallRule(exact_tol=0.0), np.random.default_rng(0)
    flats = [100.0 + 0.35 * rng.normal(size=2000) for _ in range(20)]
    noisy = [f for f in flats if rule._trend().check(f).decrease > rule.tol]
    assert noisy  # the premise: some flat losses read a fall over tol at the end
    for flat in noisy:
        verdict = rule._trend().check(flat)
        assert not rule.check(flat).converged
        assert rule.final(flat).converged == (verdict.decrease <= 2 * verdict.decrease_se)
    steps = np.arange(2000)
    falling = 100.0 - 0.003 * np.maximum(steps - 1800, 0) + 0.35 * rng.normal(size=2000)  # 0.6 nats in 200
    assert not rule.final(falling).converged


def test_batch_and_match_starts_out_of_radons_funnel_neck_and_converges_there():
    """radon (a centred hierarchical model), BaM at vt.fit's defaults, seed 2, float32 as users run
    it: the Laplace pick lies in the funnel's neck (log sigma_a ≈ -4.9, not at a mode; the
    posterior's mean is -1.4), where BaM crawled for all 2000 steps (w1 0.66; the sustained-fall
    verdict kept it from saying "converged"). BaM skips the start race, so its start is the best
    of the path's early candidates there (``initial_gaussian(early=True)``): it stops converged at
    step 500 with log sigma_a -1.43 (measured; 4,178 evaluations against the default fit's 36,378).
    Tolerances: the neck lies 3 below the posterior's mean; 0.3 is well inside the posterior's sd
    of log sigma_a (~0.4) and far from the neck; 1000 steps is twice what it took."""
    zoo = MODELS["radon"]
    with jax.enable_x64(False):
        target = Target.from_model(zoo.model, *zoo.args, **zoo.kwargs)
        neck = initial_gaussian(target, jax.random.key(2))
        early = initial_gaussian(target, jax.random.key(2), early=True)
        fit = vt.fit(zoo.model, *zoo.args, objective=BatchAndMatch(), seed=2, progress=False, **zoo.kwargs)
    assert not bool(neck.at_mode) and float(target.unravel(neck.loc)["sigma_a"]) < -3.0  # the premise
    assert float(target.unravel(early.loc)["sigma_a"]) > -2.0
    posterior = float(np.mean(np.log(zoo.reference().draws["sigma_a"])))
    log_sigma_a = float(fit.target.unravel(jnp.asarray(fit.mean_and_covariance()[0]))["sigma_a"])
    assert fit.status == "converged" and fit.num_steps <= 1000
    assert abs(log_sigma_a - posterior) < 0.3


def test_vt_fit_at_its_defaults_stops_on_bams_rule_without_a_start_race():
    """vt.fit's defaults (2000 steps, converge=True, Laplace start): on the Gaussian target BaM is
    exact within tens of steps (test above), its losses all log Z, so the rule's exact-match stop
    holds at the first check, step 100. No race: every evaluation is the start's or the loop's 6
    a step (a race would add 2 x 100 pilot steps, 1,200)."""
    fit = vt.fit(TARGET, objective=BatchAndMatch(), progress=False)
    assert fit.status == "converged" and fit.num_steps == 100
    assert fit.num_grad_evals == 100 * 6 + fit.init_grad_evals
    assert fit.convergence.converged and fit.convergence.window == 30
    np.testing.assert_allclose(fit.mean_and_covariance()[0], MEAN, atol=1e-6)  # exact, as above


def test_average_gaussians_averages_the_means_and_the_covariances():
    """The factor's product is (1-w) Σa + w Σb to rounding, lower triangular with a non-negative
    diagonal; w = 0 and 1 give the inputs back."""
    loc_a, tril_a, *_ = random_inputs(1)
    loc_b, tril_b, *_ = random_inputs(2)
    tril_a[0, 0] *= -1.0  # a factor with a negative diagonal entry gives the same average
    for weight in (0.0, 0.3, 1.0):
        loc, tril = average_gaussians(loc_a, tril_a, loc_b, tril_b, jnp.asarray(weight))
        np.testing.assert_allclose(loc, (1 - weight) * loc_a + weight * loc_b, atol=1e-12)
        expected = (1 - weight) * tril_a @ tril_a.T + weight * tril_b @ tril_b.T
        np.testing.assert_allclose(tril @ tril.T, expected, atol=1e-12)
        assert np.all(np.triu(tril, 1) == 0) and np.all(np.diagonal(tril) >= 0)


def test_the_averaged_fit_is_exact_on_a_gaussian_and_draws_from_its_iterate():
    """With ``average``, params are the running average of BaM's iterates, and the batches are
    drawn from the iterate in the state. From N(0, 0.1² I), 100 steps (30 to arrive, test above)
    averaged with f = 0.25 (weights ∝ t³): the iterate is exact (1e-7 as above); the average
    puts weight ~(10/100)^4 = 1e-4 on the first 10 iterates, whose errors are O(1), and the rest
    on iterates exact to 1e-3 or better: its largest relative error was 3.4e-7 (mean) and 2.4e-7
    (covariance), where a plain mean of all the iterates (f = 1) was 0.038 and 0.030 off (seed
    0, measured). 1e-3 sits between the two with a wide margin on each side."""
    objective, family = BatchAndMatch(batch_size=8, average=0.25), FullRank()
    params = family.init(None, TARGET, jnp.zeros(DIM), 0.1 * jnp.eye(DIM))
    key = jax.random.PRNGKey(0)
    carried = objective_state(objective, jax.random.fold_in(key, 2), params, family, TARGET)
    state = init_state(key, params, default_optimizer(), 0.1, None, carried)
    outcome = optimize(state, 100, objective, family, TARGET, default_optimizer(), progress=False)
    iterate = outcome.state.objective_state
    np.testing.assert_allclose(iterate.loc, MEAN, atol=1e-7)
    np.testing.assert_allclose(iterate.scale_tril @ iterate.scale_tril.T, COV, atol=1e-7 * COV.max())
    averaged = outcome.state.params
    np.testing.assert_allclose(averaged.loc, MEAN, atol=1e-3 * np.abs(MEAN).max())
    tril = family.scale_tril(averaged)
    np.testing.assert_allclose(tril @ tril.T, COV, atol=1e-3 * COV.max())
    assert not np.allclose(averaged.loc, iterate.loc, atol=1e-9, rtol=0)  # it is an average


@pytest.mark.parametrize("step, weight", [(0, 1.0), (9, 0.4), (1000, 1.0 / AVERAGE_MAX_STEPS)])
def test_the_average_weighs_the_new_iterate_1_over_f_t_within_its_floor(step, weight):
    """f = 0.25: the (t+1)-th iterate weighs 1/(f (t+1)), capped at 1 (t = 0: the iterate itself)
    and floored at 1/AVERAGE_MAX_STEPS (t = 1000: 1/250 would reach back ~1000 steps)."""
    objective, family = BatchAndMatch(average=0.25), FullRank()
    params = family.init(None, TARGET, jnp.asarray(MEAN) + 1.0, jnp.eye(DIM))
    state = BatchAndMatchState(jnp.asarray(step, jnp.int32), jnp.asarray(MEAN), jnp.linalg.cholesky(COV))
    new_params, _, _, new_state = objective.update(jax.random.PRNGKey(0), params, family, TARGET, state, 0.5)
    assert int(new_state.step) == step + 1
    loc, tril = average_gaussians(
        params.loc, family.scale_tril(params), new_state.loc, new_state.scale_tril, jnp.asarray(weight)
    )
    np.testing.assert_allclose(new_params.loc, loc, atol=1e-12)
    np.testing.assert_allclose(family.scale_tril(new_params), tril, atol=1e-12)


def test_another_family_is_refused_before_the_loop_compiles():
    with pytest.raises(
        validate.ArgumentValueError, match="full-rank Gaussian only.*got family 'meanfield'"
    ) as err:
        vt.fit(TARGET, objective=OBJECTIVE, family="meanfield", init="median", progress=False)
    assert err.value.argument == "family"
    params = LowRank(rank=2).init(None, TARGET, jnp.zeros(DIM), jnp.eye(DIM))
    with pytest.raises(validate.ArgumentValueError, match="got family 'lowrank'"):
        OBJECTIVE.init_state(jax.random.PRNGKey(0), params, LowRank(rank=2), TARGET)


def test_a_model_with_param_sites_is_refused():
    def model(y):
        sigma = numpyro.param("sigma", 1.0, constraint=constraints.positive)
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    with pytest.raises(validate.ArgumentValueError, match=r"numpyro.param site\(s\) \['sigma'\]"):
        vt.fit(model, jnp.ones(3), objective=BatchAndMatch(), progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=1), ValueError, "batch_size must be an integer >= 2, got 1"),
        (dict(batch_size=2.5), ValueError, "batch_size must be an integer >= 2"),
        (dict(batch_size=True), ValueError, "batch_size must be an integer >= 2"),
        (dict(learning_rate=0.0), ValueError, "learning_rate must be a finite positive number"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be a finite positive number"),
        (dict(learning_rate=float("nan")), ValueError, "learning_rate must be a finite number"),
        (dict(learning_rate="fast"), TypeError, "learning_rate must be a number"),
        (dict(average=-0.1), ValueError, "average must be a finite number >= 0"),
        (dict(average=1.5), ValueError, r"average must be a fraction of the steps in \[0, 1\]"),
        (dict(average=float("nan")), ValueError, "average must be a finite number"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=f"BatchAndMatch {match}"):
        BatchAndMatch(**kwargs)


@pytest.mark.parametrize("fitter", [vt.fit, vt.fit_many])
@pytest.mark.parametrize("option", [dict(learning_rate=0.5), dict(optimizer=optax.sgd(0.1))])
def test_optimizer_options_are_refused_with_the_objectives_own(fitter, option):
    """BaM follows no gradient: vt.fit's learning_rate and optimizer would be ignored (a user's
    trial got the default fit back), so they are refused before anything is traced, naming
    BatchAndMatch's own step-size option and its value."""
    name = next(iter(option))
    with pytest.raises(ValueError, match=rf"{name} is not used by objective 'batch_and_match'.*"
                       r"BatchAndMatch\(learning_rate=\.\.\.\), now 2$"):  # fmt: skip
        fitter(TARGET, objective=BatchAndMatch(learning_rate=2.0), progress=False, **option)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window=2), "window"),
        (dict(tol=0.0), "tol"),
        (dict(min_steps=0), "min_steps"),
        (dict(cooldown=-1), "cooldown"),
        (dict(batch_size=0), "batch_size"),
        (dict(exact_window=2), "exact_window"),
        (dict(exact_tol=-0.1), "exact_tol"),
        (dict(sustained_window=200), "sustained_window"),
        (dict(burn_in=-1), "burn_in"),
        (dict(sustained_z=0.0), "sustained_z"),
    ],
)
def test_bad_rule_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossFallRule(**kwargs)
