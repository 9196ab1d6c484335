"""The initial Gaussian (vitools.laplace) and how vt.fit chooses its projection and frame."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

import vitools as vt
from vitools import laplace, start
from vitools.laplace import initial_gaussian, is_mode
from vitools.models import get_model
from vitools.start import _structure

MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[2.0, 0.9, 0.0], [0.9, 1.0, -0.3], [0.0, -0.3, 0.5]])


def gaussian_target():
    def log_density(u):
        return jax.scipy.stats.multivariate_normal.logpdf(u, MEAN, COV)

    return vt.Target.from_log_density(log_density, 3)


def test_laplace_init_is_exact_on_a_gaussian():
    loc, scale_tril, at_mode, *_ = initial_gaussian(gaussian_target(), jax.random.PRNGKey(0))
    assert bool(at_mode)
    # A Gaussian's Laplace approximation is itself: the covariance is exact at every path point.
    # The centre is exact for the Newton candidates; late L-BFGS points are ~2e-5 off, and the
    # ELBO (32 draws) cannot tell such candidates apart, so the centre is checked to 1e-4.
    np.testing.assert_allclose(loc, MEAN, atol=1e-4)
    np.testing.assert_allclose(scale_tril @ scale_tril.T, COV, atol=1e-8)


def _counted_gaussian_target():
    calls = []

    def log_density(u):
        jax.debug.callback(lambda: calls.append(1))  # runs once per evaluation the program makes
        return jax.scipy.stats.multivariate_normal.logpdf(u, MEAN, COV)

    return vt.Target.from_log_density(log_density, 3), calls


def _count_evaluations(monkeypatch, max_iters, path_points):
    monkeypatch.setattr(laplace, "_MAX_ITERS", max_iters)
    monkeypatch.setattr(laplace, "_PATH_POINTS", path_points)
    target, calls = _counted_gaussian_target()  # a new target: the program is traced afresh
    jax.block_until_ready(initial_gaussian(target, jax.random.PRNGKey(0)))
    return len(calls), laplace._lbfgs_path(target, target.initial_point)[0]


def test_a_converged_path_costs_no_further_evaluations(monkeypatch):
    points = (0, 1, 2, 4, 8, 16, 32, 64, 99)
    base, path = _count_evaluations(monkeypatch, 100, points)
    # L-BFGS on a 3-D Gaussian converges in about ten iterations; the path then repeats its point.
    assert np.all(np.asarray(path[30:]) == np.asarray(path[30])), "the path kept moving"
    np.testing.assert_allclose(path[-1], MEAN, atol=1e-4)
    # Twice the iterations and two more (repeated) path points: no more evaluations.
    longer, _ = _count_evaluations(monkeypatch, 200, points + (150, 199))
    assert longer == base
    # The counter does see candidate work: a fresh path point (iteration 5) adds evaluations.
    assert _count_evaluations(monkeypatch, 100, points + (5,))[0] > base


def test_diagonal_structure_gives_the_conditional_sds():
    loc, scale_tril, *_ = initial_gaussian(gaussian_target(), jax.random.PRNGKey(0), structure="diagonal")
    precision = np.linalg.inv(np.asarray(COV))
    # The reverse-KL-optimal diagonal Gaussian of N(m, Λ⁻¹) has sds 1/sqrt(Λ_ii) (closed form).
    np.testing.assert_allclose(loc, MEAN, atol=1e-4)  # centre: as in the test above
    np.testing.assert_allclose(scale_tril, np.diag(1.0 / np.sqrt(np.diag(precision))), atol=1e-8)
    assert np.all(np.diag(scale_tril) < np.sqrt(np.diag(COV)))  # narrower than the marginal sds


def test_is_mode_separates_the_mode_from_a_slope():
    target = gaussian_target()
    scale_tril = jnp.linalg.cholesky(COV)
    assert bool(is_mode(target, MEAN, scale_tril))
    assert not bool(is_mode(target, MEAN + 3.0, scale_tril))  # gradient of ~3+ sds


def test_jittered_path_leaves_the_saddle_of_a_symmetric_target():
    zoo = get_model("bimodal")
    target = vt.Target.from_model(zoo.model, *zoo.args, **zoo.kwargs)
    loc = initial_gaussian(target, jax.random.PRNGKey(0)).loc
    # The modes are at ±(2.5, 2.5) (see the model); the init point (0, 0) is a saddle.
    assert np.allclose(np.abs(np.asarray(loc)), 2.5, atol=0.3)


def test_projection_follows_family_and_objective():
    assert _structure(vt.MeanField(), vt.ReverseKL()) == "diagonal"
    assert _structure(vt.MeanField(), vt.ForwardKL()) == "full"  # marginal sds: moment matching
    assert _structure(vt.FullRank(), vt.ReverseKL()) == "full"
    assert _structure(vt.LowRank(), vt.ReverseKL()) == "full"


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "mode"}, "unknown init"), ({"structure": "banded"}, "unknown structure")],
)
def test_bad_init_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        initial_gaussian(gaussian_target(), jax.random.PRNGKey(0), **kwargs)


@pytest.mark.slow
def test_meanfield_reverse_kl_leaves_the_neck_of_a_centred_hierarchy():
    """radon (centred): the best path point sits in the funnel neck of the group scale, where the
    marginal sds of the Laplace Gaussian are far too wide for a diagonal q (ELBO -1035 against
    -136 with the conditional sds; measured). From the marginal start mean-field reverse KL
    stayed in the neck: w1 0.77; from the conditional one it reaches 0.19, NumPyro AutoNormal's
    0.19 (benchmarks/RESULTS.md). 0.3 separates the two with room for seed noise (3 seeds: 0.18-0.20).
    """
    zoo = get_model("radon")
    fit = vt.fit(zoo.model, *zoo.args, family="meanfield", progress=False, **zoo.kwargs)
    table = vt.compare({"meanfield": fit}, reference=dict(zoo.reference().draws))
    assert table["w1"].iloc[0] < 0.3


def test_the_mode_check_runs_only_for_families_that_could_use_it(monkeypatch):
    """is_mode costs a Hessian and a compile; with a given (loc, scale_tril) vt.fit evaluates it
    only for a family that may whiten with the full factor (FullRank), not for mean-field."""
    calls = []
    monkeypatch.setattr(start, "is_mode", lambda *args, **kwargs: calls.append(1) or jnp.array(True))
    init = (MEAN, jnp.linalg.cholesky(COV))
    vt.fit(gaussian_target(), family="meanfield", init=init, num_steps=10, progress=False)
    assert calls == []
    vt.fit(gaussian_target(), family="fullrank", init=init, num_steps=10, progress=False)
    assert calls == [1]


def test_diagonal_candidates_report_no_mode():
    """Diagonal families never whiten with the full factor, so the Laplace program skips the
    mode check for them (one Hessian less) and says False."""
    assert not bool(initial_gaussian(gaussian_target(), jax.random.PRNGKey(0), structure="diagonal").at_mode)


def horseshoe(X, y):
    """Non-centred horseshoe regression (Piironen & Vehtari 2017's heavy-tailed shrinkage prior)."""
    num_coefs = X.shape[1]
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    lam = numpyro.sample("lambda", dist.HalfCauchy(jnp.ones(num_coefs)))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(num_coefs), 1.0))
    beta = numpyro.deterministic("beta", tau * lam * z)
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


@pytest.mark.slow
def test_the_default_start_is_never_worse_than_the_simple_one_horseshoe():
    """25 coefficients, 3 non-zero, n = 60. Every Laplace Gaussian along the path has a far lower
    ELBO estimate than NumPyro's init point with scale 0.1, so the default starts there; from
    the best path point the fit stayed off (largest coefficient 2.09 ± 0.47 against NUTS
    2.27 ± 0.14 on data seed 0). Tolerance 0.2 NUTS sd, as the issue asks: measured 0.02 sd on
    this data set (seed 1); NUTS's Monte Carlo error with 2000 draws is ~0.03 sd."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 25))
    y = X[:, :3] @ np.array([2.0, -1.5, 1.0]) + rng.normal(size=60)
    start = initial_gaussian(vt.Target.from_model(horseshoe, X, y), jax.random.PRNGKey(0))
    assert not bool(start.informed)
    mcmc = MCMC(
        NUTS(horseshoe, target_accept_prob=0.95), num_warmup=1000, num_samples=2000, progress_bar=False
    )
    mcmc.run(jax.random.PRNGKey(0), X, y)
    reference = np.asarray(mcmc.get_samples()["beta"][:, 0])
    fitted = vt.fit(horseshoe, X, y, progress=False).sample(4000, seed=1)["beta"][:, 0]
    assert abs(fitted.mean() - reference.mean()) < 0.2 * reference.std()
    assert fitted.std() == pytest.approx(reference.std(), rel=0.25)  # 0.168 vs 0.155 measured


def local_level(y):
    """Centred local-level model: a random walk observed with noise (scan over the states)."""
    from numpyro.contrib.control_flow import scan

    level_sd = numpyro.sample("level_sd", dist.HalfNormal(1.0))
    noise_sd = numpyro.sample("noise_sd", dist.HalfNormal(1.0))
    start = numpyro.sample("start", dist.Normal(0.0, 2.0))

    def step(level, obs):
        level = numpyro.sample("level", dist.Normal(level, level_sd))
        numpyro.sample("y", dist.Normal(level, noise_sd), obs=obs)
        return level, None

    scan(step, start, y)


@pytest.mark.slow
def test_the_default_start_races_the_simple_one_local_level():
    """43 latents. The Laplace start has the higher ELBO but its fit collapses the level sd (0.02
    against NUTS 0.32 after 2000 steps); a 100-step pilot from each start picks the simple one.
    Tolerance 0.25 NUTS sd on the mean of level_sd (NUTS Monte Carlo error with 2000 draws
    ~0.03 sd; measured 0.11 sd); the collapsed fit is 3 NUTS sds off."""
    rng = np.random.default_rng(5)
    rng.normal(size=79)
    y = jnp.asarray(np.cumsum(rng.normal(0, 0.3, 40)) + rng.normal(0, 0.5, 40))
    mcmc = MCMC(NUTS(local_level), num_warmup=1000, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), y)
    reference = np.asarray(mcmc.get_samples()["level_sd"])
    fitted = vt.fit(local_level, y, progress=False).sample(4000, seed=1)["level_sd"]
    assert abs(fitted.mean() - reference.mean()) < 0.25 * reference.std()


def test_newton_path_lands_on_a_gaussian_mode_in_one_step():
    """On a Gaussian target the Newton step is exact whatever the start, and the decrement at the
    mode (0) ends the path: every later row repeats the mode."""
    path, _ = laplace._newton_path(gaussian_target(), MEAN + jnp.array([30.0, -20.0, 5.0]))
    np.testing.assert_allclose(path[1:], np.broadcast_to(MEAN, path[1:].shape), atol=1e-10)


def pseudo_huber_target():
    """log π(u) = -Σ sqrt(1 + u_i²): concave, but flat far out, so a full Newton step from
    u_i = 3 jumps to 3 - 3·10 = -27, where log π is lower (the line search must cut it)."""
    return vt.Target.from_log_density(lambda u: -jnp.sum(jnp.sqrt(1.0 + u**2)), 3)


def double_well_target():
    """log π(u) = -Σ (u_i² - 1)²: not concave between the wells (-Hessian < 0 for |u_i| < 0.58)."""
    return vt.Target.from_log_density(lambda u: -jnp.sum((u**2 - 1.0) ** 2), 2)


def funnel_target():
    """Neal's funnel in 3-D, v ~ N(0, 3), x_i | v ~ N(0, exp(v / 2)): log π is unbounded as v falls
    with x = 0, the geometry where the mode is a poor centre."""

    def log_density(u):
        v, x = u[0], u[1:]
        return jax.scipy.stats.norm.logpdf(v, 0.0, 3.0) + jnp.sum(
            jax.scipy.stats.norm.logpdf(x, 0.0, jnp.exp(v / 2))
        )

    return vt.Target.from_log_density(log_density, 3)


@pytest.mark.parametrize(
    "make_target, point",
    [
        (pseudo_huber_target, jnp.array([3.0, -2.0, 4.0])),
        (double_well_target, jnp.array([0.1, -0.3])),
        (funnel_target, jnp.array([1.0, 2.0, -1.5])),
    ],
)
def test_newton_steps_never_decrease_the_log_density(make_target, point):
    target = make_target()
    path, _ = laplace._newton_path(target, point)
    values = np.asarray(jax.vmap(target.log_density)(path))
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) >= 0.0), values
    assert values[-1] > values[0]  # and it moved uphill


def test_a_full_newton_step_would_overshoot_the_pseudo_huber_target():
    """What the line search guards against, checked on the target above: the undamped step lowers
    log π, the damped path still reaches the mode at 0."""
    target, point = pseudo_huber_target(), jnp.array([3.0, -2.0, 4.0])
    hessian, gradient = jax.hessian(target.log_density)(point), jax.grad(target.log_density)(point)
    full_step = point - jnp.linalg.solve(hessian, gradient)
    assert target.log_density(full_step) < target.log_density(point)
    path, _ = laplace._newton_path(target, point)
    np.testing.assert_allclose(path[-1], 0.0, atol=1e-3)


@pytest.fixture(scope="module")
def collinear_large():
    zoo = get_model("collinear_large")
    return zoo, zoo.reference()


def _distances_in_sds(values, reference):
    return {
        site: np.abs(np.asarray(values[site]) - reference.mean[site]) / reference.sd[site]
        for site in reference.mean
    }


def test_laplace_start_reaches_the_mode_of_an_ill_conditioned_regression(collinear_large):
    """collinear_large (posterior condition number ~6e8): L-BFGS stopped 21 NUTS sds from the mean
    of one coefficient (median 1.5; 33 in float32); the Newton steps after it reach the mode. The
    posterior is near-Gaussian, so the mode is within 0.1 sd of the NUTS mean for every latent,
    alpha and the coefficients (measured: 0.017 at most, float32 and float64; NUTS Monte Carlo error
    ~0.01 sd with 10,000 draws)."""
    zoo, reference = collinear_large
    target = vt.Target.from_model(zoo.model, *zoo.args, **zoo.kwargs)
    start = initial_gaussian(target, jax.random.PRNGKey(0))
    assert bool(start.at_mode)
    distances = _distances_in_sds(target.constrain(start.loc), reference)
    assert distances["alpha"] < 0.1 and np.all(distances["beta"] < 0.1), distances


def test_default_fit_of_an_ill_conditioned_regression_lands_on_the_nuts_mean(collinear_large):
    """The default fit (full rank, reverse KL, 2000 steps) from the start above: every coefficient's
    mean within 0.1 NUTS sd (measured: 0.043 at most; float32 0.049; before the Newton steps beta[0]
    ended 0.54 sd off with status 'converged'). q's mean from 4000 draws has Monte Carlo error
    1/sqrt(4000) = 0.016 sd."""
    zoo, reference = collinear_large
    fit = vt.fit(zoo.model, *zoo.args, progress=False, **zoo.kwargs)
    draws = fit.sample(4000, seed=1)
    distances = _distances_in_sds({site: np.mean(value, axis=0) for site, value in draws.items()}, reference)
    assert distances["alpha"] < 0.1 and np.all(distances["beta"] < 0.1), distances


def test_the_starts_cost_is_counted_and_included_in_the_fits_total():
    """Issue 11, item 4: num_grad_evals used to leave out the Laplace start. The L-BFGS path's own
    count (its first point plus every line-search evaluation) must equal what a callback inside the
    log density sees; the whole start's count (Hessians at dim gradients, ELBO draws) must be at
    least what the callback sees, which counts a Hessian as one call."""
    target, calls = _counted_gaussian_target()
    calls.clear()  # from_log_density evaluated the density once to check it
    path, evals = laplace._lbfgs_path(target, target.initial_point)
    jax.block_until_ready(path)
    assert int(evals) == len(calls) > 3
    calls.clear()
    fit = vt.fit(target, num_steps=200, converge=False, progress=False)
    in_start = len(calls) - 200  # the loop evaluates a vmapped batch of draws per step: >= 1 call each
    assert fit.init_grad_evals >= in_start > 0 and fit.init_time > 0
    per_step = fit.objective.num_density_evals(target.dim)
    assert fit.num_grad_evals == 200 * per_step + fit.init_grad_evals
    simple = vt.fit(target, num_steps=200, init="median", converge=False, progress=False)
    assert simple.init_grad_evals == 0 and simple.num_grad_evals == 200 * per_step
