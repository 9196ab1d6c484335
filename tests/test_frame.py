"""The frame a fit runs in (vitools.frame), and the record's view of q through it."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vitools as vt
from vitools.frame import Frame

RNG = np.random.default_rng(0)
SHIFT = jnp.asarray(RNG.normal(size=3))
SDS = jnp.asarray([0.5, 2.0, 30.0])
TRIL = jnp.asarray(np.tril(RNG.normal(size=(3, 3)), -1) + np.diag([0.5, 2.0, 3.0]))


@pytest.mark.parametrize("scale", [SDS, TRIL], ids=["vector", "matrix"])
def test_forward_and_inverse_are_the_affine_map_and_its_inverse(scale):
    frame = Frame(SHIFT, scale)
    v = jnp.asarray(RNG.normal(size=3))
    dense = scale if scale.ndim == 2 else jnp.diag(scale)
    np.testing.assert_allclose(frame.forward(v), SHIFT + dense @ v, rtol=1e-12)
    np.testing.assert_allclose(frame.inverse(frame.forward(v)), v, rtol=1e-10)
    # log |det| of the Jacobian, against JAX's own determinant of the map's Jacobian
    jacobian = jax.jacfwd(frame.forward)(v)
    np.testing.assert_allclose(frame.log_abs_det(), jnp.linalg.slogdet(jacobian)[1], rtol=1e-10)
    # the NumPyro transform is the same map, with the same log |det|
    transform = frame.transform()
    np.testing.assert_allclose(transform(v), frame.forward(v), rtol=1e-12)
    np.testing.assert_allclose(
        transform.log_abs_det_jacobian(v, transform(v)), frame.log_abs_det(), rtol=1e-10
    )


@pytest.mark.parametrize("outer", [SDS, TRIL], ids=["vector", "matrix"])
@pytest.mark.parametrize("inner", [SDS[::-1], 0.5 * TRIL], ids=["vector", "matrix"])
def test_compose_is_the_inner_frame_seen_from_the_outer_one(outer, inner):
    frame, loc = Frame(SHIFT, outer), jnp.asarray([1.0, -2.0, 0.5])
    composed = frame.compose(loc, inner)
    w = jnp.asarray(RNG.normal(size=3))
    inner_dense = inner if inner.ndim == 2 else jnp.diag(inner)
    np.testing.assert_allclose(composed.forward(w), frame.forward(loc + inner_dense @ w), rtol=1e-10)
    assert composed.is_matrix == (outer.ndim == 2 or inner.ndim == 2)  # two vectors stay a vector


def test_covariance_to_model_maps_a_covariance_of_v_to_one_of_u():
    frame = Frame(SHIFT, TRIL)
    cov = jnp.asarray([[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]])
    draws = jax.random.multivariate_normal(jax.random.PRNGKey(0), jnp.zeros(3), cov, (200_000,))
    empirical = np.cov(np.asarray(jax.vmap(frame.forward)(draws)), rowvar=False)
    exact = frame.covariance_to_model(cov)
    # 200,000 draws: each entry's Monte Carlo error is ~sqrt(2/200000) ~ 0.3% of its scale
    np.testing.assert_allclose(empirical, exact, rtol=0.02, atol=0.02 * float(jnp.max(jnp.abs(exact))))


def test_a_frame_of_the_wrong_shape_is_refused():
    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 3)
    with pytest.raises(ValueError, match="a frame needs shift"):
        target.in_frame(Frame(jnp.zeros(3), jnp.ones(2)))
    with pytest.raises(ValueError, match="frame's dimension is 2"):
        target.in_frame(Frame(jnp.zeros(2), jnp.ones(2)))


def test_densities_in_the_constrained_space_do_not_depend_on_the_frame():
    def model():
        numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, 2.0).expand([2]))

    target = vt.Target.from_model(model)
    framed = target.in_frame(Frame(jnp.asarray([0.1, 1.0, -1.0]), TRIL))
    values = {"s": jnp.asarray(1.7), "x": jnp.asarray([0.3, -0.4])}
    v, u = framed.unconstrain(values), target.unconstrain(values)
    np.testing.assert_allclose(framed.to_unconstrained(v), u, rtol=1e-10)
    # log p - log |J| is the constrained log joint in both frames
    for t, point in ((target, u), (framed, v)):
        np.testing.assert_allclose(
            t.log_density(point) - t.log_abs_det_jacobian(point), target.log_joint(values), rtol=1e-10
        )
    # the initial point is the same point of the model's space
    np.testing.assert_allclose(
        framed.to_unconstrained(framed.initial_point), target.initial_point, rtol=1e-10
    )


def test_fit_params_are_frame_coordinates_and_the_record_maps_them_to_the_model():
    """The fit runs in the frame of its initial Gaussian, so params.loc reads near 0; the mean
    and draws the record gives are in the model's space (posterior mean 100 here)."""
    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum(((x - 100.0) / 3.0) ** 2), 2)
    fit = vt.fit(target, num_steps=300, progress=False)
    assert np.all(np.abs(np.asarray(fit.params.loc)) < 0.5)
    mean, cov = fit.mean_and_covariance()
    # exact Gaussian target: the Laplace start is exact and the fit stays there (STL gradient 0)
    np.testing.assert_allclose(mean, [100.0, 100.0], atol=0.05)
    np.testing.assert_allclose(np.diag(cov), [9.0, 9.0], rtol=0.05)
    np.testing.assert_allclose(
        fit.sample_flat(4000, seed=1).mean(0), [100.0, 100.0], atol=0.3
    )  # 3/sqrt(4000)*6
    assert isinstance(fit.target.frame, Frame) and not np.allclose(fit.target.frame.shift, 0.0)


def test_from_gaussian_is_a_fit_of_that_gaussian():
    target = vt.Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 3)
    loc, tril = jnp.asarray([1.0, 2.0, 3.0]), TRIL
    fit = vt.Fit.from_gaussian(target, loc, tril, source="svi", num_steps=5)
    mean, cov = fit.mean_and_covariance()
    np.testing.assert_allclose(mean, loc, rtol=1e-10)
    np.testing.assert_allclose(cov, tril @ tril.T, rtol=1e-8)
    draws, log_p, log_q = fit.sample_with_log_densities(50, seed=0)
    np.testing.assert_allclose(
        log_q,
        jax.vmap(dist.MultivariateNormal(loc, scale_tril=tril).log_prob)(jnp.asarray(draws["x"])),
        rtol=1e-8,
    )
    assert fit.name == "svi/fullrank" and fit.num_steps == 5
    diagonal = vt.Fit.from_gaussian(target, loc, jnp.diag(SDS), family=vt.MeanField())
    np.testing.assert_allclose(diagonal.mean_and_covariance()[1], np.diag(SDS**2), rtol=1e-8)
    with pytest.raises(TypeError, match="Gaussian family"):
        vt.Fit.from_gaussian(target, loc, tril, family=vt.IAF())
    with pytest.raises(ValueError, match=r"got \(2,\) and \(3, 3\)"):
        vt.Fit.from_gaussian(target, loc[:2], tril)
