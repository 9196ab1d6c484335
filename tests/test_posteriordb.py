"""Real models, written the way other people write them: the posteriordb corpus
(``../shared/posteriordb``, translated from Stan in ``benchmarks/posteriordb``) fitted exactly as a
user would call vitools, ``vt.fit(model, data)`` with the dict read from ``data.json`` and NumPy,
``int(data["K"])``, ``lax.scan`` recursions and ODE solves inside the model.

These check that every fit runs and returns draws of the reference's sites and shapes; how close
the draws come to the reference is measured by ``benchmarks/bench_posteriordb.py``.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

import vitools as vt  # noqa: E402
from benchmarks.posteriordb import CORPUS_DIR, ODE_POSTERIORS, POSTERIORS, load  # noqa: E402

NUM_STEPS = 200  # a tenth of the default: enough to run every part of a fit, short enough for CI


def _load(name):
    if not (CORPUS_DIR / name).is_dir():
        pytest.skip(f"posteriordb corpus not found at {CORPUS_DIR} (set VITOOLS_POSTERIORDB)")
    if name in ODE_POSTERIORS:
        pytest.importorskip("diffrax", reason="the ODE models need diffrax (pip install vitools[ode])")
    return load(name)


# The ODE posterior whose fit runs from the default init (the finite-difference Laplace start).
DEFAULT_INIT_ODE = "one_comp_mm_elim_abs-one_comp_mm_elim_abs"


@pytest.fixture(scope="module")
def default_init_ode_fit():
    """The default fit of one ODE posterior, once for the module: both tests that fit it read it
    (before, each fitted it, one from init="median": ~15 s of a 2-core machine spent twice)."""
    model, data, reference = _load(DEFAULT_INIT_ODE)
    return vt.fit(model, data, num_steps=NUM_STEPS, progress=False), reference


@pytest.mark.parametrize("name", list(POSTERIORS))
def test_default_fit_runs_on_posteriordb_posterior(name, request):
    if name == DEFAULT_INIT_ODE:  # the default fit, as a user calls it, shared with the test below
        fit, reference = request.getfixturevalue("default_init_ode_fit")
    else:
        model, data, reference = _load(name)
        # The other ODE posterior starts from init="median": the default's finite-difference
        # Laplace init costs ~35 s on 2 cores (test_the_default_init_runs_on_an_ode_posterior).
        init = {"init": "median"} if name in ODE_POSTERIORS else {}
        fit = vt.fit(model, data, num_steps=NUM_STEPS, progress=False, **init)
    assert fit.status in ("completed", "converged")
    assert np.isfinite(fit.losses).all()
    draws = fit.sample(100, seed=1)
    for site, ref in reference.items():
        assert draws[site].shape == (100, *ref.shape[1:])
        assert np.isfinite(draws[site]).all(), site


@pytest.mark.slow
def test_the_default_init_runs_on_an_ode_posterior(default_init_ode_fit):
    """diffrax's solve is differentiable once: the default init falls back to finite differences."""
    fit, _ = default_init_ode_fit
    assert fit.status == "completed" and np.isfinite(fit.losses).all()


def test_a_once_differentiable_log_density_gets_a_finite_difference_laplace_init():
    """diffrax's adjoint differentiates an ODE solve once (NUTS and SVI need no more); the Laplace
    init then takes central differences of gradients instead of failing on a second reverse pass,
    and its Hessian matches the exact one of a Gaussian to ~eps^(2/3)."""
    import jax
    import jax.numpy as jnp

    from vitools.laplace import _hessian_and_grad

    precision = jnp.array([[2.0, 0.5], [0.5, 1.0]])

    def log_density(u):
        return -0.5 * u @ precision @ u + jnp.sum(jnp.sin(u))

    u = jnp.array([0.3, -1.2])
    exact, _ = _hessian_and_grad(log_density)(u)
    approximate, gradient = _hessian_and_grad(log_density, exact=False)(u)
    np.testing.assert_allclose(approximate, exact, atol=1e-6)  # float64: eps^(2/3) ~ 4e-11
    np.testing.assert_allclose(gradient, jax.grad(log_density)(u))
