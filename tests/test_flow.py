"""The IAF flow family: exact identities, contracts, recovery of a funnel, end to end on a model."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.stats import wasserstein_distance

import vitools as vt
from vitools.families import FAMILIES, IAFParams, draw_many, get_family
from vitools.objectives import ReverseKL

KEY = jax.random.PRNGKey(0)  # family init key (Gaussian families draw nothing)

DIM = 4
LOC = jnp.array([1.0, -2.0, 0.5, 3.0])
COV = jnp.array([[2.0, 0.9, 0.0, 0.2], [0.9, 1.0, -0.3, 0.0], [0.0, -0.3, 0.5, 0.1], [0.2, 0.0, 0.1, 1.5]])
CHOL = jnp.linalg.cholesky(COV)


def funnel_log_density(u):
    """Neal's funnel: v ~ N(0, 3), x_i | v ~ N(0, exp(v / 2)); normalized."""
    v, x = u[0], u[1:]
    return jax.scipy.stats.norm.logpdf(v, 0.0, 3.0) + jnp.sum(
        jax.scipy.stats.norm.logpdf(x, 0.0, jnp.exp(v / 2))
    )


def forward_map(q, eps):
    """z = T(ε): the flow's transforms applied in order."""
    for transform in q.transforms:
        eps = transform(eps)
    return eps


def perturbed_params(family, key, size=0.3, loc=LOC, chol=CHOL):
    """Initial params with every leaf moved, weight matrices in their stored units (x fan-in)."""
    params = family.init(KEY, None, loc, chol)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [
        leaf
        + size * (leaf.shape[0] if leaf.ndim == 2 else 1.0) * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, moved)


# --- exact identities -------------------------------------------------------------------------


def test_init_is_exactly_the_initial_gaussian():
    """Zeroed output layers make every IAF layer the identity: q = N(loc, L Lᵀ) exactly."""
    family = vt.IAF()
    params = family.init(KEY, None, LOC, CHOL)
    gaussian = dist.MultivariateNormal(LOC, scale_tril=CHOL)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (50, DIM)) + LOC[None, :]
    log_q = jax.jit(lambda p, x: jax.vmap(family.distribution(p).log_prob)(x))(params, x)
    np.testing.assert_allclose(log_q, jax.vmap(gaussian.log_prob)(x), rtol=0, atol=1e-8)

    draws = jax.jit(lambda p, key: draw_many(family.distribution(p), key, 20_000))(
        params, jax.random.PRNGKey(1)
    )
    draws = np.asarray(draws)
    # Monte Carlo error of 20,000 draws: sd(mean_i) = sqrt(COV_ii / n) <= 0.01; sd(cov_ij) =
    # sqrt((COV_ii COV_jj + COV_ij²) / n) <= 0.02. Tolerances are 5 of those sds.
    np.testing.assert_allclose(draws.mean(0), LOC, atol=0.05)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), COV, atol=0.1)


def test_in_one_dimension_the_iaf_is_an_affine_map_and_warns_so():
    """In 1-D each layer's shift and scale condition on nothing: z = T(ε) is affine in ε whatever the
    weights (q is a Gaussian), and init warns; in 2-D the same moves bend it, and init is silent."""
    family = vt.IAF()
    with pytest.warns(UserWarning, match=r"IAF in one dimension is an affine map.*family='mixture'"):
        moved = perturbed_params(family, jax.random.PRNGKey(7), loc=LOC[:1], chol=CHOL[:1, :1])
    eps = jnp.linspace(-3.0, 3.0, 7)[:, None]
    z = jax.vmap(lambda e: forward_map(family.distribution(moved), e))(eps)[:, 0]
    # equally spaced ε: second differences of an affine map are 0 up to float64 rounding (|z| < 100)
    np.testing.assert_allclose(jnp.diff(z, n=2), 0.0, atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        moved = perturbed_params(family, jax.random.PRNGKey(7), loc=LOC[:2], chol=CHOL[:2, :2])
    line = eps * jnp.ones((1, 2))
    z = jax.vmap(lambda e: forward_map(family.distribution(moved), e))(line)
    assert float(jnp.max(jnp.abs(jnp.diff(z, n=2, axis=0)))) > 1e-3  # bent: the check above can fail


def test_gradient_reaches_the_zeroed_output_layers():
    """The output layer starts at zero but its gradient (hidden activations x output gradient)
    does not vanish, so every layer leaves the identity on the first step."""
    family = vt.IAF()
    target = vt.Target.from_log_density(funnel_log_density, DIM)
    params = family.init(KEY, target, jnp.zeros(DIM), jnp.eye(DIM))
    grad = jax.jit(jax.grad(lambda p: ReverseKL().loss(jax.random.PRNGKey(0), p, family, target)[0]))(params)
    for layer in grad.layers:
        weights, bias = layer[-1]
        assert float(jnp.max(jnp.abs(weights))) > 1e-3
        assert float(jnp.max(jnp.abs(bias))) > 1e-3


def test_log_prob_is_the_change_of_variables_density():
    """With every parameter moved off the identity, log q at q's own draws (through NumPyro's
    inverse) equals log N(ε) - log|det ∂z/∂ε| with the Jacobian from jax.jacfwd of the forward
    map; float64 arithmetic, so 1e-6 leaves room for the inverse's d fixed-point passes only."""
    family = vt.IAF(num_flows=3)
    params = perturbed_params(family, jax.random.PRNGKey(2))
    keys = jax.random.split(jax.random.PRNGKey(3), 20)

    @jax.jit
    def check(params):
        q = family.distribution(params)
        eps = jax.vmap(lambda k: jax.random.normal(k, (DIM,)))(keys)
        z = jax.vmap(lambda e: forward_map(q, e))(eps)
        jacobians = jax.vmap(jax.jacfwd(lambda e: forward_map(q, e)))(eps)
        expected = jax.scipy.stats.norm.logpdf(eps).sum(-1) - jnp.linalg.slogdet(jacobians)[1]
        return z, jax.vmap(q.rsample)(keys), jax.vmap(q.log_prob)(z), expected

    z, draws, log_q, expected = check(params)
    np.testing.assert_allclose(draws, z, rtol=1e-12)  # rsample is the forward map of ε ~ N(0, I)
    np.testing.assert_allclose(log_q, expected, rtol=0, atol=1e-6)
    # ...and the perturbed flow is far from Gaussian, so the check covers the networks.
    gaussian = dist.MultivariateNormal(params.loc, scale_tril=vt.FullRank.scale_tril(params))
    assert float(jnp.max(jnp.abs(expected - jax.vmap(gaussian.log_prob)(z)))) > 0.5


def test_sample_with_log_prob_matches_log_prob_through_the_inverse():
    """The forward pass's log q (NumPyro's intermediates, what reverse KL uses) equals log q
    evaluated afresh at the draw (NumPyro's fixed-point inverse), for a non-identity flow."""
    family = vt.IAF()
    params = perturbed_params(family, jax.random.PRNGKey(3))
    keys = jax.random.split(jax.random.PRNGKey(4), 64)

    @jax.jit
    def both(params, keys):
        draws, log_q = jax.vmap(family.sample_with_log_prob, in_axes=(None, 0))(params, keys)
        return draws, log_q, jax.vmap(family.distribution(params).log_prob)(draws)

    draws, log_q, again = both(params, keys)
    np.testing.assert_allclose(log_q, again, rtol=0, atol=1e-8)
    # The draws are those of distribution(params): same key, same draw.
    np.testing.assert_allclose(draws[0], family.distribution(params).rsample(keys[0]), atol=1e-12)


def test_reverse_kl_uses_the_forward_pass_log_q():
    """For IAF, ReverseKL's loss is -mean(log p - log q) with log q from the forward pass; its
    gradient is the plain reparameterized one (STL would need the inverse), identical with the
    STL flag on or off."""
    family = vt.IAF()
    target = vt.Target.from_log_density(funnel_log_density, DIM)
    params = perturbed_params(family, jax.random.PRNGKey(5))
    key = jax.random.PRNGKey(6)

    def loss(params, stl):
        return ReverseKL(16, stick_the_landing=stl).loss(key, params, family, target)[0]

    def by_hand(params):
        draws, log_q = jax.vmap(family.sample_with_log_prob, in_axes=(None, 0))(
            params, jax.random.split(key, 16)
        )
        return -jnp.mean(jax.vmap(target.log_density)(draws) - log_q)

    np.testing.assert_allclose(loss(params, True), by_hand(params), rtol=1e-12)
    grads = [jax.grad(loss)(params, stl) for stl in (True, False)] + [jax.grad(by_hand)(params)]
    for other in grads[1:]:
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_widened_is_the_flow_of_a_wider_base():
    """widened(params, c) is the same map applied to N(0, c² I): log density at T(c ε)."""
    family = vt.IAF()
    params = perturbed_params(family, jax.random.PRNGKey(4))
    eps = jax.random.normal(jax.random.PRNGKey(5), (DIM,))

    @jax.jit
    def check(params):
        q = family.distribution(params)
        z = forward_map(q, 2.0 * eps)
        log_det = jnp.linalg.slogdet(jax.jacfwd(lambda e: forward_map(q, e))(2.0 * eps))[1]
        expected = jnp.sum(jax.scipy.stats.norm.logpdf(2.0 * eps, 0.0, 2.0)) - log_det
        return family.widened(params, 2.0).log_prob(z), expected

    np.testing.assert_allclose(*check(params), rtol=0, atol=1e-6)


# --- contracts --------------------------------------------------------------------------------


def test_contracts_registry_pytree_jit_vmap_grad():
    family = get_family("iaf")
    assert FAMILIES["iaf"] is vt.IAF and isinstance(family, vt.IAF) and family.whiten == "full"
    assert vt.IAF(hidden_dims=[8, 8]) == vt.IAF(hidden_dims=(8, 8))  # a list is stored as a tuple
    hash(vt.IAF(hidden_dims=[8, 8]))  # hashable: usable as static configuration
    params = family.init(KEY, None, LOC, CHOL)
    assert isinstance(params, IAFParams) and len(params.layers) == family.num_flows
    # Hidden widths default to (2 d, 2 d): the first layer maps d inputs to 2 d units.
    assert params.layers[0][0][0].shape == (DIM, 2 * DIM)

    @jax.jit
    def draws_and_log_prob(params, key):
        q = family.distribution(params)
        draws = draw_many(q, key, 7)
        return draws, jax.vmap(q.log_prob)(draws)

    draws, log_q = draws_and_log_prob(params, jax.random.PRNGKey(0))
    assert draws.shape == (7, DIM) and log_q.shape == (7,)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(draws_and_log_prob(p, jax.random.PRNGKey(0))[1])))(params)
    assert jax.tree.structure(grad) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))


def test_float32():
    """In float32 the parameters, draws and log densities stay float32, and agree with float64
    on the same ε to float32 precision (~1e-7 relative, passed through the networks and the
    inverse's fixed-point loop; 1e-4 leaves room for that)."""
    family = vt.IAF()
    params64 = perturbed_params(family, jax.random.PRNGKey(6))
    eps64 = jax.random.normal(jax.random.PRNGKey(7), (16, DIM))

    def draws_and_log_prob(params, eps):
        q = family.distribution(params)
        draws = jax.vmap(lambda e: forward_map(q, e))(eps)
        return draws, jax.vmap(q.log_prob)(draws)

    draws64, log_q64 = jax.jit(draws_and_log_prob)(params64, eps64)
    with jax.enable_x64(False):
        init32 = family.init(KEY, None, LOC.astype(jnp.float32), CHOL.astype(jnp.float32))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init32))
        params32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params64)
        draws, log_q = jax.jit(draws_and_log_prob)(params32, eps64.astype(jnp.float32))
        assert draws.dtype == jnp.float32 and log_q.dtype == jnp.float32
        assert draw_many(family.distribution(params32), jax.random.PRNGKey(0), 3).dtype == jnp.float32
    np.testing.assert_allclose(draws, draws64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_q, log_q64, rtol=1e-4, atol=1e-4)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_flows=0), "num_flows must be a positive integer"),
        (dict(num_flows=1.5), "num_flows must be a positive integer"),
        (dict(num_flows=True), "num_flows must be a positive integer"),
        (dict(hidden_dims=()), "hidden_dims must be None or a non-empty sequence"),
        (dict(hidden_dims=(8, 0)), "hidden_dims must be None or a non-empty sequence"),
        (dict(hidden_dims=8), "hidden_dims must be None or a non-empty sequence"),
        (dict(whiten="yes"), "whiten must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vt.IAF(**kwargs)


def test_hidden_width_below_the_dimension():
    with pytest.raises(ValueError, match="hidden_dims must each be at least the dimension 4"):
        vt.IAF(hidden_dims=(3, 8)).init(KEY, None, LOC, CHOL)


# --- fits -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reverse_kl_on_a_funnel_beats_fullrank():
    """A 3-D funnel: sd(v) = 3 exactly; x's marginal is heavy-tailed, compared through asinh
    (W1 of asinh(x) against exact draws). Default settings (2000 steps), seeds 0-7 measured:
    IAF sd(v) 1.76-2.53 (fullrank 0.92-1.57), W1(asinh x) 0.08-0.24 (fullrank 0.40-0.55),
    and per seed IAF's sd(v) beat fullrank's by 0.31 or more. The thresholds sit below every
    measured seed; W1 between two exact 20,000-draw sets is ~0.01."""
    target = vt.Target.from_log_density(funnel_log_density, 3)
    rng = np.random.default_rng(0)
    v = 3.0 * rng.standard_normal(20_000)
    x = np.exp(v / 2) * rng.standard_normal(20_000)
    results = {}
    for family in ("iaf", "fullrank"):
        fit = vt.fit(target, family=family, seed=0, progress=False)
        draws = np.asarray(fit.sample_flat(20_000, seed=1))
        results[family] = draws[:, 0].std(), wasserstein_distance(np.arcsinh(draws[:, 1]), np.arcsinh(x))
    (sd_iaf, w1_iaf), (sd_fullrank, w1_fullrank) = results["iaf"], results["fullrank"]
    assert 1.6 < sd_iaf < 3.3
    assert sd_iaf > sd_fullrank + 0.25
    # Loosened from 0.6: fullrank now starts where vt.fit's pilot race sends it, and its W1 on
    # seed 0 went from 0.50 to 0.42 while IAF's stayed at 0.251 (ratio 0.60; measured).
    assert w1_iaf < 0.3 and w1_iaf < 0.7 * w1_fullrank


def test_forward_kl_on_a_gaussian():
    """Forward KL (SNIS, defensive draws through ``widened``) with the flow on a Gaussian target.
    Seeds 0-4, from the median and the Laplace init: max errors 0.035 (mean) and 0.048
    (covariance, 40,000 draws); the tolerances are about 3x those."""
    mean, cov = LOC[:3], COV[:3, :3]
    target = vt.Target.from_log_density(lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov), 3)
    # converge=False: the tolerances below were measured on the whole 2000-step budget
    fit = vt.fit(target, objective="forward_kl", family="iaf", seed=0, progress=False, converge=False)
    assert fit.status == "completed" and np.all(np.isfinite(fit.losses))
    draws = np.asarray(fit.sample_flat(40_000, seed=1))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), cov, atol=0.15)


def normal_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", 10):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_end_to_end_on_a_numpyro_model():
    y = np.random.default_rng(1).normal(1.0, 0.5, size=10)
    fit = vt.fit(normal_model, y=y, family="iaf", num_steps=500, progress=False)
    assert fit.name == "reverse_kl/iaf" and fit.status == "completed"
    num_draws = 500  # one size throughout, so each compiled draw function is reused
    draws = fit.sample(num_draws, seed=1)
    assert draws["mu"].shape == (num_draws,) and np.all(draws["sigma"] > 0)
    # log q at constrained draws (through the inverse and the log transform's Jacobian) equals
    # the log q computed alongside the same draws.
    constrained, _, log_q = fit.sample_with_log_densities(num_draws, seed=1)
    np.testing.assert_allclose(fit.log_prob(constrained), log_q, rtol=1e-8)
    tree = vt.to_datatree(fit, num_draws=num_draws)
    assert tree["posterior"]["mu"].shape == (1, num_draws)
    table = vt.compare({"iaf": fit}, num_draws=num_draws)
    # The flow is close to this posterior: importance ESS 80-95% of the draws over fit seeds 0-4
    # (network weights and optimisation noise; 89% at seed 0), 98% with the networks' former
    # fixed key (measured). 0.75 sits below that spread; a Gaussian-tailed or collapsed q reads
    # far lower. k̂ is not asserted: it reads the far tail, where the posterior of
    # (mu, log sigma) is a funnel no Gaussian-tailed q follows (fullrank: k̂ 0.3-1.2 as well).
    assert table.loc["iaf", "family"] == "iaf" and table.loc["iaf", "ess"] > 0.75 * num_draws
    with pytest.raises(NotImplementedError, match="no closed-form mean or covariance"):
        fit.mean_and_covariance()
