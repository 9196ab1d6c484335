"""Exact identities of the objectives on analytic Gaussian targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitools import ForwardKL, ForwardKLFromDraws, FullRank, MeanField, RenyiAlpha, ReverseKL, Target
from vitools.objectives import draws_to_flat, weighted_cross_entropy

MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
CHOL = jnp.linalg.cholesky(COV)


def gaussian_target(constant=0.0):
    return Target.from_log_density(
        lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, MEAN, COV) + constant, 3
    )


def exact_params(family=None):
    return (family or FullRank()).init(None, MEAN, CHOL)


def off_params():
    return FullRank().init(None, MEAN + 0.3, 1.5 * CHOL)


def test_forward_kl_gradient_is_weighted_cross_entropy_gradient():
    """The loss's gradient equals -Σ w̄ᵢ ∇log q(zᵢ) computed by hand on the same draws."""
    target, family, objective = gaussian_target(), FullRank(), ForwardKL(num_draws=32)
    params, key = off_params(), jax.random.PRNGKey(0)
    grad = jax.grad(lambda p: objective.loss(key, p, family, target)[0])(params)

    draws, log_r = objective.proposal_draws(key, params, family)
    log_w = jax.vmap(target.log_density)(draws) - log_r
    weights = np.exp(log_w - jax.nn.logsumexp(log_w))
    per_draw = jax.vmap(lambda z: jax.grad(lambda p: family.distribution(p).log_prob(z))(params))(draws)
    by_hand = jax.tree.map(lambda g: -jnp.tensordot(weights, g, axes=(0, 0)), per_draw)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_weights_are_uniform_when_q_is_the_target_up_to_a_constant():
    target, family = gaussian_target(constant=7.3), FullRank()
    objective = ForwardKL(num_draws=50, defensive=0.0)
    _, info = objective.loss(jax.random.PRNGKey(1), exact_params(), family, target)
    assert info["ess"] == pytest.approx(50.0, rel=1e-10)
    assert info["log_evidence"] == pytest.approx(7.3, abs=1e-10)  # log Z is the constant


def test_defensive_mixture_weights_are_bounded_and_evidence_is_exact():
    """With the defensive mixture, q = p makes every weight p/r ≤ 1/(1 - share): bounded."""
    target, family = gaussian_target(), FullRank()
    objective = ForwardKL(num_draws=40, defensive=0.25, widen=2.0)
    draws, log_r = objective.proposal_draws(jax.random.PRNGKey(2), exact_params(), family)
    log_w = jax.vmap(target.log_density)(draws) - log_r
    assert np.all(log_w <= -np.log(0.75) + 1e-12)


def test_stl_gradient_is_zero_at_q_equals_p():
    target, family = gaussian_target(), FullRank()
    key = jax.random.PRNGKey(3)
    stl = jax.grad(lambda p: ReverseKL(8, stick_the_landing=True).loss(key, p, family, target)[0])
    plain = jax.grad(lambda p: ReverseKL(8, stick_the_landing=False).loss(key, p, family, target)[0])
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(stl(exact_params()))) < 1e-12
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(plain(exact_params()))) > 1e-3


def test_reverse_kl_loss_is_kl_plus_constant_at_the_optimum():
    """At q = p every log weight equals log Z, so the loss is exactly -log Z (zero variance)."""
    loss, info = ReverseKL(8).loss(jax.random.PRNGKey(4), exact_params(), FullRank(), gaussian_target(2.0))
    assert loss == pytest.approx(-2.0, abs=1e-10) and info["ess"] == pytest.approx(8.0)


def test_renyi_tends_to_reverse_kl_as_alpha_tends_to_one():
    target, family, key = gaussian_target(), FullRank(), jax.random.PRNGKey(5)
    params = off_params()
    reverse = ReverseKL(16, stick_the_landing=False).loss(key, params, family, target)[0]
    for alpha, tol in [(1 - 1e-3, 1e-2), (1 - 1e-6, 1e-5)]:  # the gap is O(1 - alpha)
        renyi = RenyiAlpha(alpha=alpha, num_draws=16).loss(key, params, family, target)[0]
        assert abs(float(renyi - reverse)) < tol


def test_forward_kl_from_draws_recovers_sample_moments_in_closed_form():
    """The minimizer of -mean log q on draws is their mean and (1/N) covariance: the gradient
    there is zero, and the optimizer gets there."""
    target = gaussian_target()
    draws = np.random.default_rng(0).multivariate_normal(np.asarray(MEAN), np.asarray(COV), size=200)
    mean, cov = draws.mean(0), np.cov(draws.T, bias=True)
    objective = ForwardKLFromDraws(draws, batch_size=500).prepare(target)
    mle = FullRank().init(None, jnp.asarray(mean), jnp.linalg.cholesky(cov))
    grad = jax.grad(lambda p: objective.loss(jax.random.PRNGKey(0), p, FullRank(), target)[0])(mle)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-10

    import vitools as vt

    fit = vt.fit(target, objective=objective, family="fullrank", num_steps=3000, progress=False)
    fit_mean, fit_cov = fit.mean_and_covariance()
    np.testing.assert_allclose(fit_mean, mean, atol=2e-3)
    np.testing.assert_allclose(fit_cov, cov, atol=5e-3)
    assert fit.num_grad_evals == 0  # the target's density is never evaluated


def test_meanfield_weighted_cross_entropy_on_uniform_weights_is_average_nll():
    params = exact_params(MeanField())
    z = jnp.stack([MEAN, MEAN + 1.0])
    log_q = jax.vmap(MeanField().distribution(params).log_prob)(z)
    assert weighted_cross_entropy(log_q, jnp.zeros(2)) == pytest.approx(-float(jnp.mean(log_q)))


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**16))
def test_weighted_cross_entropy_is_invariant_to_shifting_log_weights(shift, seed):
    log_q, log_w = jax.random.normal(jax.random.PRNGKey(seed), (2, 10))
    assert weighted_cross_entropy(log_q, log_w + shift) == pytest.approx(
        float(weighted_cross_entropy(log_q, log_w)), rel=1e-9, abs=1e-9
    )


def test_no_gradient_flows_through_weights():
    log_q = jnp.array([0.1, -0.4, 0.3])
    grad = jax.grad(lambda lw: weighted_cross_entropy(log_q, lw))(jnp.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ReverseKL(num_draws=0), "num_draws must be a positive integer"),
        (lambda: ForwardKL(num_draws=2.5), "num_draws must be a positive integer"),
        (lambda: ForwardKL(defensive=1.0), r"defensive must be in \[0, 1\)"),
        (lambda: ForwardKL(widen=0.5), "widen must be >= 1"),
        (lambda: RenyiAlpha(alpha=1.0), "use ReverseKL"),
        (lambda: draws_to_flat({"y": np.zeros((4, 3))}, gaussian_target()), r"lack latent site\(s\) \['x'\]"),
        (lambda: draws_to_flat({"x": np.zeros((4, 2))}, gaussian_target()), "have shape"),
        (lambda: draws_to_flat(np.zeros((4, 2)), gaussian_target()), r"shape \(num_draws, 3\)"),
    ],
)
def test_bad_objective_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_draws_of_unknown_type_are_refused():
    with pytest.raises(TypeError, match="got str"):
        draws_to_flat("draws", gaussian_target())
