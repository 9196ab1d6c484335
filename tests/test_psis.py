"""PSIS in JAX (vitools.objectives.psis) against arviz-stats, and ForwardKL(pareto_smooth=True)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arviz_stats.base import array_stats

import vitools as vt
from vitools import FullRank, Target
from vitools.importance import psis_khat
from vitools.objectives.base import weighted_cross_entropy
from vitools.objectives.forward_kl import ForwardKL
from vitools.objectives.psis import psis_smooth, psis_tail_length

psis_jit = jax.jit(psis_smooth)


def arviz_psis(log_weights):
    """arviz-stats' PSIS of importance log weights, called as vitools.importance.psis_khat calls it
    (psislw smooths the negated input, the LOO convention)."""
    smoothed, khat = array_stats.psislw(-np.asarray(log_weights, dtype=float), r_eff=1.0)
    return np.asarray(smoothed), float(khat)


def tail_draws(shape, num_draws, seed):
    """Log weights with a known tail: ``light`` lognormal(0, 0.3) weights (all moments, k ~ 0);
    generalized Pareto weights U^-k (exactly k = 0.5, 0.9: infinite variance at 0.9); a heavy
    lognormal(0, 2) (k ~ 0.6-0.9 at these sizes); GPD(0.7) with 5 zero weights (log -inf)."""
    rng = np.random.default_rng(seed)
    if shape == "light":
        return 0.3 * rng.normal(size=num_draws)
    if shape == "lognormal":
        return 2.0 * rng.normal(size=num_draws)
    if shape == "zeros":
        log_w = -0.7 * np.log(rng.uniform(size=num_draws))
        log_w[:5] = -np.inf
        return log_w
    k = {"pareto_0.5": 0.5, "pareto_0.9": 0.9}[shape]
    return -k * np.log(rng.uniform(size=num_draws))


# 30 draws: the smallest tail arviz-stats can fit (M = 6; with M = 5 its first-quartile index is the
# minimum and the fit always returns NaN); 64: ForwardKL's default; 1000: M = floor(3 sqrt S) = 94.
@pytest.mark.parametrize("num_draws", [30, 64, 1000])
@pytest.mark.parametrize("shape", ["light", "pareto_0.5", "pareto_0.9", "lognormal", "zeros"])
def test_psis_smooth_matches_arviz_stats(num_draws, shape):
    log_w = tail_draws(shape, num_draws, seed=num_draws)
    expected, expected_khat = arviz_psis(log_w)
    smoothed, khat = psis_jit(jnp.asarray(log_w))
    assert np.isfinite(expected_khat)  # a fitted tail, not one of the NaN / flat cases
    # float64 and the same operations in the same order: the largest difference over these cases and
    # S = 226, 4000 was 8e-15 (measured); 1e-10 leaves room for other summation orders and still catches any
    # change of method (a different tail length moves k̂ by > 1e-3).
    np.testing.assert_allclose(float(khat), expected_khat, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(smoothed), expected, rtol=0, atol=1e-10)
    assert float(jax.nn.logsumexp(smoothed)) == pytest.approx(0.0, abs=1e-12)
    # Not vacuous: apart from the light tail, smoothing moved the largest weights.
    raw = log_w - np.logaddexp.reduce(log_w)
    if shape != "light":
        finite = np.isfinite(raw)  # zero weights stay zero
        assert np.max(np.abs(np.asarray(smoothed)[finite] - raw[finite])) > 1e-3


def test_tail_length_is_arviz_stats_rule_and_needs_25_draws():
    assert [psis_tail_length(s) for s in (25, 64, 225, 226, 1000)] == [5, 12, 45, 45, 94]
    with pytest.raises(ValueError, match="PSIS needs at least 25 draws"):
        psis_tail_length(24)


def test_psis_smooth_under_jit_and_vmap_in_float32():
    log_w = np.stack([tail_draws("pareto_0.9", 200, seed) for seed in range(3)])
    batched, khats = jax.jit(jax.vmap(psis_smooth))(jnp.asarray(log_w, jnp.float32))
    assert batched.shape == (3, 200) and khats.shape == (3,) and batched.dtype == jnp.float32
    for row, smoothed, khat in zip(log_w, batched, khats, strict=True):
        expected, expected_khat = arviz_psis(np.float32(row))
        # float32 rounding (eps 1.2e-7) of log weights up to ~10 in magnitude: measured differences
        # <= 1e-6 from arviz-stats in float64 on the same float32 inputs; tolerance 1e-4 (100x).
        np.testing.assert_allclose(np.asarray(smoothed), expected, rtol=0, atol=1e-4)
        assert float(khat) == pytest.approx(expected_khat, abs=1e-4)


def test_psis_smooth_is_invariant_to_a_constant_shift():
    log_w = tail_draws("pareto_0.9", 64, seed=3)  # 64 draws: psis_jit is compiled for them already
    smoothed, khat = psis_jit(jnp.asarray(log_w))
    shifted, shifted_khat = psis_jit(jnp.asarray(log_w + 123.4))
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(smoothed), rtol=0, atol=1e-10)
    assert float(shifted_khat) == pytest.approx(float(khat), abs=1e-10)


def test_flat_tail_is_left_as_it_is_with_khat_minus_inf_as_psis_khat():
    """Equal log weights (q = p up to a constant): no tail to fit. arviz-stats raises here;
    vitools.importance.psis_khat and psis_smooth return the normalized weights and k̂ = -inf."""
    smoothed, khat = psis_jit(jnp.full(64, 2.5))
    np.testing.assert_allclose(np.asarray(smoothed), np.full(64, -np.log(64.0)), rtol=0, atol=1e-12)
    assert float(khat) == -np.inf == psis_khat(np.full(64, 2.5))[1]


def test_unfittable_tail_is_not_smoothed_and_khat_is_nan_as_arviz_stats():
    """Ties at the bottom of the tail (its first quartile equals its minimum): arviz-stats' fit
    returns NaN and it leaves the weights unsmoothed; so does psis_smooth."""
    rng = np.random.default_rng(5)
    # S = 64, M = 12: 52 bulk weights, then 6 tied tail weights at -1 (the quartile, the 3rd of the
    # tail, is one of them), then 6 spread above.
    log_w = np.concatenate([-5.0 + 0.1 * rng.normal(size=52), np.full(6, -1.0), -rng.uniform(0, 0.9, 6)])
    expected, expected_khat = arviz_psis(log_w)
    smoothed, khat = psis_jit(jnp.asarray(log_w))
    assert np.isnan(expected_khat) and np.isnan(float(khat))
    np.testing.assert_allclose(np.asarray(smoothed), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected, log_w - np.logaddexp.reduce(log_w), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "log_weights, match",
    [(jnp.zeros(24), "PSIS needs at least 25 draws"), (jnp.zeros((2, 30)), "one-dimensional")],
)
def test_psis_smooth_bad_input_raises(log_weights, match):
    with pytest.raises(ValueError, match=match):
        psis_smooth(log_weights)


MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[2.0, 0.9, 0.0], [0.9, 1.0, -0.3], [0.0, -0.3, 0.5]])
CHOL = jnp.linalg.cholesky(COV)
PRECISION = jnp.linalg.inv(COV)
KEY = jax.random.PRNGKey(0)  # family init key (Gaussian families draw nothing)
FAMILY = FullRank()
RAW = ForwardKL(num_draws=64, defensive=0.0)
SMOOTH = ForwardKL(num_draws=64, defensive=0.0, pareto_smooth=True)


def log_q_exact(x):
    return jax.scipy.stats.multivariate_normal.logpdf(x, MEAN, COV)


def clipped_log_density(x):
    """log N(x; MEAN, COV) + min(0, 3 - m²), m² the Mahalanobis distance: at q = N(MEAN, COV),
    log w = min(0, 3 - m²) is 0 on the ~61% of draws with m² < 3 (chi²₃) and varies on the others."""
    centred = x - MEAN
    return log_q_exact(x) + jnp.minimum(0.0, 3.0 - centred @ PRECISION @ centred)


CLIPPED = Target.from_log_density(clipped_log_density, 3)


@jax.jit
def loss_and_grad(objective, params, family, target, key):
    """Jitted once per objective (the params are traced): op by op, psis_smooth's sort and GPD fit
    took ~10x longer (measured)."""
    return jax.value_and_grad(lambda p: objective.loss(key, p, family, target), has_aux=True)(params)


def test_pareto_smoothed_forward_kl_equals_raw_when_all_tail_weights_are_equal():
    """PSIS only rewrites the M largest weights. When those are all equal (a bounded weight that
    attains its maximum on at least M draws) there is no tail to fit and the smoothed weights are
    the raw ones, so loss and gradient must agree. At q = N(MEAN, COV) on CLIPPED, ~39 of 64 draws
    share the largest weight, far more than M = 12; equal log weights everywhere (q = p) would be the
    special case where the weights are uniform."""
    params = FAMILY.init(KEY, None, MEAN, CHOL)
    key = jax.random.PRNGKey(2)
    (raw_loss, raw_info), raw_grad = loss_and_grad(RAW, params, FAMILY, CLIPPED, key)
    (loss, info), grad = loss_and_grad(SMOOTH, params, FAMILY, CLIPPED, key)
    assert info["khat"] == -jnp.inf and "khat" not in raw_info
    assert raw_info["ess"] < 60.0  # the weights are not all equal: the identity is not the trivial one
    assert float(loss) == pytest.approx(float(raw_loss), abs=1e-12)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(raw_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_pareto_smoothed_forward_kl_is_weighted_cross_entropy_with_psis_weights():
    """Off the target (q narrower and shifted) the loss and its gradient are the weighted
    cross-entropy with the PSIS weights of the same draws, and smoothing did fit a tail (k̂ finite)."""
    params = FAMILY.init(KEY, None, MEAN + 0.5, 0.6 * CHOL)
    key = jax.random.PRNGKey(3)
    (loss, info), grad = loss_and_grad(SMOOTH, params, FAMILY, CLIPPED, key)

    @jax.jit
    @jax.value_and_grad
    def by_hand(p):  # the same draws (same key), their PSIS log weights, the weighted cross-entropy
        draws, log_r = SMOOTH.proposal_draws(key, params, FAMILY)
        smoothed, _ = psis_smooth(jax.vmap(CLIPPED.log_density)(draws) - log_r)
        return weighted_cross_entropy(jax.vmap(FAMILY.distribution(p).log_prob)(draws), smoothed)

    expected, expected_grad = by_hand(params)
    assert np.isfinite(float(info["khat"]))
    assert float(loss) == pytest.approx(float(expected), abs=1e-10)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_pareto_smoothed_forward_kl_recovers_a_gaussian():
    """A short fit from NumPyro's init point (scale 0.1: q starts far too narrow, where the weights
    are heavy-tailed and smoothing acts) reaches the target's mean and covariance. Seeds 0-4 at 1000
    steps gave max errors 0.015 (mean) and 0.068 (covariance; 0.45 at 500 steps) (measured);
    tolerances 0.07 and 0.3, about 5x. The start is off by up to 2 in both (covariance 0.01 I)."""
    target = Target.from_log_density(log_q_exact, 3)
    fit = vt.fit(
        target,
        objective=ForwardKL(pareto_smooth=True),
        num_steps=1000,
        init="median",
        seed=0,
        progress=False,
    )
    mean, cov = fit.mean_and_covariance()
    np.testing.assert_allclose(mean, MEAN, atol=0.07)
    np.testing.assert_allclose(cov, COV, atol=0.3)
    # one k̂ per step, fitted on 98-100% of the steps of seeds 0-4 (measured; NaN where ties at the
    # bottom of the tail leave PSIS nothing to fit)
    khat = fit.trace["khat"]
    assert khat.shape == fit.trace["loss"].shape and np.isfinite(khat).mean() > 0.9


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ForwardKL(pareto_smooth="yes"), TypeError, "ForwardKL pareto_smooth must be True or False"),
        (lambda: ForwardKL(pareto_smooth=1), TypeError, "ForwardKL pareto_smooth must be True or False"),
        (lambda: ForwardKL(num_draws=24, pareto_smooth=True), ValueError, "num_draws >= 25"),
    ],
)
def test_forward_kl_bad_pareto_smooth_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_forward_kl_pareto_smooth_accepts_numpy_bool_and_is_static():
    objective = ForwardKL(pareto_smooth=np.bool_(True))
    assert objective.pareto_smooth is True
    assert jax.tree.leaves(objective) == []  # a static field: part of the compiled program's key
