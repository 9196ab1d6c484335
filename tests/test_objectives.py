"""Exact identities of the objectives on analytic Gaussian targets."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.infer import MCMC, NUTS

from vitools import ForwardKL, ForwardKLFromDraws, FullRank, MeanField, RenyiAlpha, ReverseKL, Target
from vitools.batched import sample_flat_with_log_q
from vitools.objectives import draws_to_flat, weighted_cross_entropy

KEY = jax.random.PRNGKey(0)  # family init key (Gaussian families draw nothing)

MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
CHOL = jnp.linalg.cholesky(COV)


def gaussian_target(constant=0.0):
    return Target.from_log_density(
        lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, MEAN, COV) + constant, 3
    )


def exact_params(family=None):
    return (family or FullRank()).init(KEY, None, MEAN, CHOL)


def off_params():
    return FullRank().init(KEY, None, MEAN + 0.3, 1.5 * CHOL)


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


def _ill_conditioned_gaussian(dim: int = 14):
    """N(1.35, L Lᵀ) with sds 3e-4-3e-3 on L's diagonal and off-diagonal entries of sd 0.1:
    the shape of a full-rank q in a centred hierarchical model's funnel neck (radon, float32: the
    q's diagonal read 5e-4-1.3 there, every group's effect tied to the scale). cond(L) ~ 1e19."""
    rng = np.random.default_rng(0)
    tril = np.tril(rng.normal(0.0, 0.1, (dim, dim)), -1) + np.diag(10 ** rng.uniform(-3.5, -2.5, dim))
    return np.full(dim, 1.35), tril


@pytest.mark.parametrize("family", [FullRank(), MeanField()], ids=lambda f: f.name)
def test_log_q_at_own_draws_stays_exact_in_float32_where_the_inverse_does_not(family):
    """In float32, log q at q's own draws from the inverse L⁻¹(z - μ) is lost to rounding when L
    is ill-conditioned or far below μ (-inf here; -1e15 on radon, where the loss that rewarded it
    drew a fit into the funnel's neck, see vitools.families.gaussian). From the noise it is exact:
    the ELBO estimate matches the closed form of a Gaussian target."""
    loc, tril = _ill_conditioned_gaussian()
    if family.name == "meanfield":
        tril = np.diag(np.sqrt(np.sum(tril**2, axis=1)) * 1e-4)  # sds 1e-4 x those: far below μ
    dim, num_draws = loc.shape[0], 256
    # the exact ELBO of N(loc, L Lᵀ) against N(0, I): E log p + H(q)
    log_det = np.sum(np.log(np.diag(tril)))
    elbo = -0.5 * (loc @ loc + np.sum(tril**2)) + log_det + 0.5 * dim
    # log w = -½‖z‖² + ½‖ε‖² + log det L: its sd is about ‖loc‖ ≈ 5 here (the ε terms nearly cancel)
    tolerance = 5 * np.linalg.norm(loc) / np.sqrt(num_draws)
    with jax.enable_x64(False):
        target = Target.from_log_density(lambda x: jnp.sum(jax.scipy.stats.norm.logpdf(x)), dim)
        params = family.init(KEY, None, jnp.asarray(loc, jnp.float32), jnp.asarray(tril, jnp.float32))
        for stl in (True, False):
            objective = ReverseKL(num_draws, stick_the_landing=stl)
            loss, _ = objective.loss(jax.random.PRNGKey(6), params, family, target)
            assert loss.dtype == jnp.float32 and abs(-float(loss) - elbo) < tolerance, (stl, loss, elbo)
        # the diagnostics' log q (Fit.sample_with_log_densities): E[log q] = -H(q), sd sqrt(dim/2)
        _, log_q = sample_flat_with_log_q(family, params, jax.random.PRNGKey(7), num_draws)
        entropy = log_det + 0.5 * dim * (1.0 + np.log(2.0 * np.pi))
        assert abs(float(jnp.mean(log_q)) + entropy) < 5 * np.sqrt(dim / 2 / num_draws)


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
    objective = ForwardKLFromDraws(draws, batch_size=500).resolve(target)
    mle = FullRank().init(KEY, None, jnp.asarray(mean), jnp.linalg.cholesky(cov))
    grad = jax.grad(lambda p: objective.loss(jax.random.PRNGKey(0), p, FullRank(), target)[0])(mle)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-10

    import vitools as vt

    fit = vt.fit(target, objective=objective, family="fullrank", num_steps=3000, progress=False)
    fit_mean, fit_cov = fit.mean_and_covariance()
    np.testing.assert_allclose(fit_mean, mean, atol=2e-3)
    np.testing.assert_allclose(fit_cov, cov, atol=5e-3)
    assert fit.num_grad_evals == fit.init_grad_evals  # the loop never evaluates the density; the start does


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
        (lambda: ReverseKL(num_draws=True), "num_draws must be a positive integer"),
        (lambda: ForwardKLFromDraws(np.zeros((8, 3)), batch_size=False), "batch_size must be a positive"),
        (lambda: ForwardKL(num_draws=2.5), "num_draws must be a positive integer"),
        (lambda: ForwardKL(defensive=1.0), r"defensive must be in \[0, 1\)"),
        (lambda: ForwardKL(widen=0.5), "widen must be a finite number >= 1,"),
        (lambda: RenyiAlpha(alpha=1.0), "use ReverseKL"),
        (lambda: RenyiAlpha(alpha=-0.5), r"alpha=-0.5 < 0 makes the bound an upper bound"),
        (lambda: draws_to_flat({"y": np.zeros((4, 3))}, gaussian_target()), r"lack latent site\(s\) \['x'\]"),
        (lambda: draws_to_flat({"x": np.zeros((4, 2))}, gaussian_target()), r"\(2,\) per draw.*is \(3,\)"),
        (lambda: draws_to_flat(np.zeros((4, 2)), gaussian_target()), r"shape \(num_draws, 3\)"),
    ],
)
def test_bad_objective_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_draws_of_unknown_type_are_refused():
    with pytest.raises(TypeError, match="got str"):
        draws_to_flat("draws", gaussian_target())


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: RenyiAlpha(alpha=float("nan")), ValueError, "RenyiAlpha alpha must be a finite number"),
        (lambda: RenyiAlpha(alpha=float("inf")), ValueError, "RenyiAlpha alpha must be a finite number"),
        (lambda: RenyiAlpha(alpha="0.5"), TypeError, "RenyiAlpha alpha must be a number"),
        (lambda: ForwardKL(widen=float("inf")), ValueError, "ForwardKL widen must be a finite number"),
        (lambda: ForwardKL(widen=float("nan")), ValueError, "ForwardKL widen must be a finite number"),
        (lambda: ForwardKL(widen="2"), TypeError, "ForwardKL widen must be a number"),
        (lambda: ForwardKL(defensive="0.1"), TypeError, "ForwardKL defensive must be a number"),
        (lambda: ReverseKL(stick_the_landing="no"), TypeError, "ReverseKL stick_the_landing must be True or"),
        # One draw's self-normalized weight is 1 whatever the target: the loss is -log q(z), which
        # only moves q towards its own draw.
        (lambda: ForwardKL(num_draws=1), ValueError, "ForwardKL num_draws must be at least 2: .* always 1"),
    ],
)
def test_objective_arguments_are_validated_at_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_numpy_integers_are_accepted_as_counts():
    counts = [
        ReverseKL(num_draws=np.int64(8)).num_draws,
        RenyiAlpha(num_draws=np.int32(8)).num_draws,
        ForwardKL(num_draws=np.int64(8)).num_draws,
        ForwardKLFromDraws(np.zeros((8, 3)), batch_size=np.int64(8)).batch_size,
    ]
    assert counts == [8] * 4 and all(type(c) is int for c in counts)  # plain ints: static shapes


def test_forward_kl_from_draws_refuses_fewer_draws_than_a_full_rank_covariance_needs():
    """N draws span at most N - 1 directions around their mean: d + 1 is the least for d = 3."""
    with pytest.raises(ValueError, match="got 3 draws of a 3-dimensional target.*at least 4 draws"):
        ForwardKLFromDraws(np.random.default_rng(0).normal(size=(3, 3))).resolve(gaussian_target())
    assert ForwardKLFromDraws(np.random.default_rng(0).normal(size=(4, 3))).resolve(gaussian_target())


def test_an_mcmc_that_never_ran_is_refused():
    mcmc = MCMC(NUTS(lambda: numpyro.sample("x", dist.Normal())), num_warmup=1, num_samples=1)
    with pytest.raises(ValueError, match=r"has no draws: call mcmc.run\(key"):
        draws_to_flat(mcmc, gaussian_target())


# A Dirichlet-multinomial with an LKJ prior on a Cholesky factor the data do not touch: the
# posterior is p ~ Dirichlet(1 + counts), L ~ LKJCholesky(3, 2), independent.
COUNTS = np.array([40.0, 60.0, 80.0, 100.0])


def simplex_and_cholesky_model(counts):
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(4)))
    numpyro.sample("L", dist.LKJCholesky(3, concentration=2.0))
    numpyro.sample("y", dist.Multinomial(280, p), obs=counts)


@pytest.fixture(scope="module")
def simplex_target():
    return Target.from_model(simplex_and_cholesky_model, COUNTS)


def posterior_draws(num_draws):
    """Exact posterior draws of p; for L, Cholesky factors of random correlation matrices (unit
    rows, positive diagonal), not LKJ draws: the objective never evaluates the density, and
    NumPyro's LKJ sampler costs seconds of compilation."""
    rng = np.random.default_rng(0)
    rows = np.tril(rng.normal(size=(num_draws, 3, 3)))
    rows[:, range(3), range(3)] = np.abs(rows[:, range(3), range(3)])
    return {
        "p": rng.dirichlet(1.0 + COUNTS, size=num_draws),
        "L": rows / np.linalg.norm(rows, axis=-1, keepdims=True),
    }


def test_forward_kl_from_draws_fits_simplex_and_cholesky_draws(simplex_target):
    """Draws of shapes (4,) and (3, 3), unconstrained (3,) and (3,), are accepted, mapped
    exactly, and fitted: the loss is stationary at their unconstrained sample moments, and that
    q's mean on the simplex is the draws' mean."""
    target, draws, family = simplex_target, posterior_draws(400), FullRank()
    objective = ForwardKLFromDraws(draws, batch_size=400).resolve(target)
    mean, cov = objective.draws.mean(0), jnp.cov(objective.draws.T, bias=True)
    mle = family.init(KEY, target, mean, jnp.linalg.cholesky(cov))
    # jit: one compilation instead of one per op (seconds less here)
    grad = jax.jit(jax.grad(lambda p: objective.loss(jax.random.PRNGKey(1), p, family, target)[0]))(mle)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-10

    q_draws = jax.jit(jax.vmap(family.distribution(mle).rsample))(
        jax.random.split(jax.random.PRNGKey(2), 4000)
    )
    values = jax.jit(jax.vmap(target.constrain))(jnp.concatenate([objective.draws, q_draws]))
    np.testing.assert_allclose(values["p"][:400], draws["p"], atol=1e-12)  # mapped back exactly
    np.testing.assert_allclose(values["L"][:400], draws["L"], atol=1e-12)
    # 4 Monte Carlo standard errors of q's mean (sd about 0.027 over 4000 draws: 0.0017); the
    # logistic-normal q's own bias on the simplex is below 1e-4 here (measured with 20,000 draws
    # of p and 200,000 of q), so it is covered.
    q_p = values["p"][400:]
    tolerance = 4 * np.std(q_p, axis=0) / np.sqrt(4000)
    assert np.all(np.abs(np.mean(q_p, axis=0) - np.mean(draws["p"], axis=0)) < tolerance)


def test_draws_of_a_wrong_shape_are_refused_naming_the_constrained_shape(simplex_target):
    draws = posterior_draws(10)
    draws["p"] = draws["p"][:, :3]
    with pytest.raises(ValueError, match=r"site 'p' have shape \(3,\) per draw, the model's .* is \(4,\)"):
        draws_to_flat(draws, simplex_target)
