"""Saving a fit to one file and loading it back with its model (vitools.persist)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.autoguide import AutoDiagonalNormal

import vitools as vt
from vitools import persist
from vitools.frame import Frame
from vitools.result import Fit
from vitools.targets import Target

Y = np.array([0.5, -1.0, 2.0])


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def tau_of_shape_3(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("group", 3):
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def tau_renamed(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, sigma))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def tau_on_the_real_line(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.Normal(1.0, 1.0))
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, jnp.exp(tau)))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def tau_in_an_interval(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.Uniform(0.0, 2.0))
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def sites_reordered(y):
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def param_model(y):
    """A random-intercept model whose prior location and scale are numpyro.param point estimates."""
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(loc, scale))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def param_model_unconstrained_scale(y):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 1.0)
    with numpyro.plate("group", 3):
        theta = numpyro.sample("theta", dist.Normal(loc, jnp.abs(scale)))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


# Few steps: the file must hold whatever the fit reached, not a good fit. A given start puts the
# meanfield fit in the frame of its scales (a vector frame; a matrix frame is tested on a Gaussian
# fitted elsewhere below: the Laplace start that would give one took 18 s here); IAF gets a tuple
# field (hidden_dims) and a nested parameter tree.
START = (np.array([0.1, -0.2, 0.3, -0.4, 0.5]), 0.5 * np.eye(5))
FAMILIES = {
    "meanfield": dict(family="meanfield", objective="forward_kl", init=START),
    "fullrank": dict(family="fullrank", objective="reverse_kl", init="median"),
    "lowrank": dict(family=vt.LowRank(rank=2), objective=vt.ReverseKL(num_draws=8), init="median"),
    "iaf": dict(family=vt.IAF(num_flows=1, hidden_dims=(6,)), objective="reverse_kl", init="median"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(family) -> (fit, path)``: a 100-step fit of ``model`` and the file it was saved to,
    made once per module."""
    folder, made = tmp_path_factory.mktemp("fits"), {}

    def get(name: str) -> tuple[Fit, Path]:
        if name not in made:
            fit = vt.fit(model, Y, num_steps=100, seed=1, progress=False, **FAMILIES[name])
            made[name] = fit, vt.save(fit, folder / f"{name}.vitools.npz")
        return made[name]

    return get


@pytest.fixture(scope="module")
def gaussian_file(tmp_path_factory):
    """A file of q = N(0, I) on ``model``'s sites, made without fitting, for the refusals."""
    fit = Fit.from_gaussian(Target.from_model(model, Y), jnp.zeros(5), jnp.eye(5), source="reverse_kl")
    return vt.save(fit, tmp_path_factory.mktemp("gaussian") / "gaussian.vitools.npz")


def assert_same_record(loaded: Fit, fit: Fit) -> None:
    for name in ("num_steps", "num_grad_evals", "init_grad_evals", "elapsed", "compile_time"):
        assert getattr(loaded, name) == getattr(fit, name), name
    assert (loaded.init_time, loaded.status, loaded.seed) == (fit.init_time, fit.status, fit.seed)
    np.testing.assert_array_equal(loaded.losses, fit.losses)
    assert loaded.trace.keys() == fit.trace.keys()
    for name in fit.trace:
        np.testing.assert_array_equal(loaded.trace[name], fit.trace[name])
    if fit.convergence is None:
        assert loaded.convergence is None
    else:  # NaN fields (not assessed) compare equal as arrays
        np.testing.assert_array_equal(np.array(loaded.convergence), np.array(fit.convergence))


def assert_same_draws(loaded: Fit, fit: Fit) -> dict[str, np.ndarray]:
    draws = fit.sample(1000, seed=3)
    again = loaded.sample(1000, seed=3)
    assert again.keys() == draws.keys()
    for name in draws:
        np.testing.assert_array_equal(again[name], draws[name])
    return draws


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_loaded_fit_draws_the_same_draws_bit_for_bit(saved, family):
    fit, path = saved(family)
    loaded = vt.load(path, model, Y)
    draws = assert_same_draws(loaded, fit)
    np.testing.assert_array_equal(loaded.log_prob(draws), fit.log_prob(draws))
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(fit.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(loaded.params) == jax.tree.structure(fit.params)
    np.testing.assert_array_equal(loaded.target.frame.shift, fit.target.frame.shift)
    np.testing.assert_array_equal(loaded.target.frame.scale, fit.target.frame.scale)
    assert loaded.family == fit.family
    assert loaded.objective == fit.objective
    assert_same_record(loaded, fit)


def test_the_device_layout_survives_save_and_load(saved, tmp_path):
    fit, path = saved("fullrank")
    assert fit.layout is None and vt.load(path, model, Y).layout is None  # one device
    split = dataclasses.replace(fit, layout="4 cpu devices, mesh {'draws': 4}: the draws split 4 ways")
    assert vt.load(vt.save(split, tmp_path / "split.vitools.npz"), model, Y).layout == split.layout


def test_a_given_start_puts_the_fit_in_a_frame_other_than_the_identity(saved):
    """So the frame's round trip above is not only the identity's."""
    fit, _ = saved("meanfield")
    np.testing.assert_allclose(fit.target.frame.shift, START[0])
    np.testing.assert_allclose(fit.target.frame.scale, 0.5)


def test_moments_diagnose_and_datatree_of_a_loaded_fit_are_those_of_the_fit(saved):
    fit, path = saved("fullrank")  # one family: the same programs run on every family's draws
    loaded = vt.load(path, model, Y)
    for a, b in zip(loaded.mean_and_covariance(), fit.mean_and_covariance(), strict=True):
        np.testing.assert_array_equal(a, b)
    before, after = (
        vt.diagnose(fit, num_draws=200, warn=False),
        vt.diagnose(loaded, num_draws=200, warn=False),
    )
    assert (after.khat, after.verdict, after.psis_means) == (before.khat, before.verdict, before.psis_means)
    tree, again = vt.to_datatree(fit, num_draws=200, seed=2), vt.to_datatree(loaded, num_draws=200, seed=2)
    assert again.attrs == tree.attrs
    for name in ("mu", "tau", "theta"):
        np.testing.assert_array_equal(again["posterior"][name].values, tree["posterior"][name].values)
    np.testing.assert_array_equal(again["optimization"]["loss"].values, tree["optimization"]["loss"].values)


def test_a_model_with_param_sites_gets_its_point_estimates_back(tmp_path):
    fit = vt.fit(param_model, Y, family="meanfield", num_steps=100, init="median", seed=2, progress=False)
    loaded = vt.load(fit.save(tmp_path / "param.vitools.npz"), param_model, Y)
    assert fit.point_estimates["scale"] != 1.0  # moved off its initial value, so the file's value is used
    assert loaded.point_estimates.keys() == {"loc", "scale"}
    for name in ("loc", "scale"):
        np.testing.assert_array_equal(loaded.point_estimates[name], fit.point_estimates[name])
    assert_same_draws(loaded, fit)
    with np.load(tmp_path / "param.vitools.npz", allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["point_estimates/scale"], fit.point_estimates["scale"])
    with pytest.raises(
        ValueError, match=r"param site 'scale': constraint Positive\(0\) in the file, Real\(\)"
    ):
        vt.load(tmp_path / "param.vitools.npz", param_model_unconstrained_scale, Y)


def test_an_objective_with_array_fields_is_rebuilt_with_its_arrays(tmp_path):
    """ForwardKLFromDraws holds its draws as a leaf: they go to the file as an array."""
    fit = Fit.from_gaussian(Target.from_model(model, Y), jnp.zeros(5), jnp.eye(5), seed=0)
    draws = fit.sample(200, seed=1)
    for objective in (  # as given (constrained draws, a dict) and as vt.fit holds it (flat draws)
        vt.ForwardKLFromDraws(draws, batch_size=64),
        vt.ForwardKLFromDraws(draws, batch_size=64).resolve(fit.target),
    ):
        held = dataclasses.replace(fit, objective=objective)
        loaded = vt.load(vt.save(held, tmp_path / "draws.vitools.npz"), model, Y)
        assert isinstance(loaded.objective, vt.ForwardKLFromDraws)
        assert loaded.objective.batch_size == 64
        jax.tree.map(np.testing.assert_array_equal, loaded.objective.draws, objective.draws)


def test_a_gaussian_fitted_elsewhere_keeps_its_source_and_a_plain_log_density_loads_from_its_target(
    tmp_path,
):
    target = Target.from_log_density(lambda x: -0.5 * jnp.sum(x**2), 2)
    fit = Fit.from_gaussian(target, jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.0], [0.5, 2.0]]), source="svi")
    # the same q's parameters read in a matrix frame (another q, as vt.fit's full frame would give)
    frame = Frame(jnp.array([0.3, -0.7]), jnp.array([[0.9, 0.0], [-0.4, 1.3]]))
    fit = dataclasses.replace(fit, target=fit.target.in_frame(frame))
    loaded = vt.load(vt.save(fit, tmp_path / "svi.vitools.npz"), target)
    assert loaded.objective == "svi" and loaded.convergence is None
    np.testing.assert_array_equal(loaded.target.frame.scale, frame.scale)
    draws = assert_same_draws(loaded, fit)
    np.testing.assert_array_equal(loaded.log_prob(draws), fit.log_prob(draws))
    for a, b in zip(loaded.mean_and_covariance(), fit.mean_and_covariance(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"site 'x': shape \(2,\) in the file, \(3,\) in the model"):
        vt.load(tmp_path / "svi.vitools.npz", Target.from_log_density(lambda x: -jnp.sum(x**2), 3))


def test_the_file_is_an_npz_with_a_json_header_and_no_pickled_code(saved, tmp_path):
    fit, path = saved("lowrank")
    with np.load(path, allow_pickle=False) as archive:  # raises on any pickled (object) entry
        header = json.loads(str(archive["header"]))
        files = set(archive.files)
    assert (header["format"], header["format_version"]) == ("vitools.fit", 1)
    assert {"vitools", "jax", "numpyro"} <= set(header["versions"])
    assert header["model"] == f"{__name__}.model"
    sites = header["fingerprint"]["latent_sites"]
    assert [(s["name"], s["shape"], s["support"]) for s in sites] == [
        ("mu", [], "Real()"),
        ("tau", [], "Positive(0)"),
        ("theta", [3], "Real()"),
    ]
    assert header["fingerprint"]["dim"] == 5
    assert {"frame/shift", "frame/scale", "losses", "trace/loss", "params.loc"} <= files
    # any path is used as given: no suffix appended
    assert vt.save(fit, tmp_path / "fit.bin") == tmp_path / "fit.bin"
    assert [p.name for p in tmp_path.iterdir()] == ["fit.bin"]


def test_save_and_load_are_in_the_public_api():
    assert {"save", "load"} <= set(vt.__all__)
    assert vt.save is persist.save and vt.load is persist.load


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    "other, message",
    [
        (tau_of_shape_3, r"site 'tau': shape \(\) in the file, \(3,\) in the model"),
        (
            tau_renamed,
            r"site 'tau' is in the file but not in the model; site 'sigma' is in the model but not",
        ),
        (tau_on_the_real_line, r"site 'tau': support Positive\(0\) in the file, Real\(\) in the model"),
        (tau_in_an_interval, r"site 'tau': support Positive\(0\) in the file, Interval\(0, 2\) in the model"),
        (sites_reordered, r"the sites come in another order: \['mu', 'tau', 'theta'\] in the file"),
    ],
)
def test_a_model_whose_sites_differ_is_refused_naming_the_sites(gaussian_file, other, message):
    with pytest.raises(ValueError, match=r"the model does not match the fit in .*: " + message):
        vt.load(gaussian_file, other, Y)


def rewrite_header(source, destination, change) -> None:
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(str(arrays["header"]))
    change(header)
    arrays["header"] = np.array(json.dumps(header))
    with open(destination, "wb") as file:
        np.savez(file, **arrays)


def test_files_that_are_not_vitools_fit_files_are_refused(tmp_path):
    (tmp_path / "text.txt").write_text("not a fit")
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "something.else"})))
    for name, reason in [
        ("text.txt", "not an .npz archive"),
        ("array.npy", "a .npy array"),
        ("plain.npz", "without a vitools header"),
        ("other.npz", "format is not 'vitools.fit'"),
    ]:
        with pytest.raises(ValueError, match=rf"{name} is not a vitools fit file \(.*{reason}"):
            vt.load(tmp_path / name, model, Y)
    with pytest.raises(FileNotFoundError):
        vt.load(tmp_path / "missing.vitools.npz", model, Y)


def test_a_file_of_a_newer_format_version_is_refused(gaussian_file, tmp_path):
    rewrite_header(
        gaussian_file, tmp_path / "new.npz", lambda h: h.update(format_version=persist.FORMAT_VERSION + 1)
    )
    with pytest.raises(ValueError, match=r"format version 2 .*reads format version 1 and older: upgrade"):
        vt.load(tmp_path / "new.npz", model, Y)


def test_a_family_class_that_cannot_be_found_is_refused_and_an_objective_keeps_its_name(
    gaussian_file, tmp_path
):

    def unknown(kind):
        return lambda h: h[kind].update({"class": "not_imported_module:Thing"})

    rewrite_header(gaussian_file, tmp_path / "family.npz", unknown("family"))
    with pytest.raises(ValueError, match=r"family .* cannot be rebuilt: module 'not_imported_module' is not"):
        vt.load(tmp_path / "family.npz", model, Y)
    rewrite_header(gaussian_file, tmp_path / "objective.npz", unknown("objective"))
    with pytest.warns(UserWarning, match="keeps its name only"):
        loaded = vt.load(tmp_path / "objective.npz", model, Y)
    assert loaded.objective == "reverse_kl"


def test_a_family_holding_code_cannot_be_saved(gaussian_file, tmp_path):
    fit = vt.load(gaussian_file, model, Y)
    guide_fit = dataclasses.replace(fit, family=vt.AutoGuideFamily(AutoDiagonalNormal(model)))
    with pytest.raises(TypeError, match=r"family has field 'guide' of type AutoDiagonalNormal"):
        vt.save(guide_fit, tmp_path / "guide.vitools.npz")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# a model defined in a script's __main__, fitted and loaded in two fresh processes

SCRIPT = """
import sys
import numpy as np
import numpyro
import numpyro.distributions as dist
import vitools as vt

def m(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

y = np.array([0.3, -0.4, 1.1])
if sys.argv[1] == "fit":
    fit = vt.fit(m, y, family="meanfield", num_steps=50, init="median", progress=False)
    fit.save("m.vitools.npz")
else:
    fit = vt.load("m.vitools.npz", m, y)
draws = fit.sample(1000, seed=3)
np.savez(sys.argv[1] + "_draws.npz", **draws)
"""


def BACKGROUND(folder: Path) -> list:
    """The two fresh processes (fit and save, then load) of the test below, run in turn in
    conftest's background queue from the session's start, on the core the suite leaves idle (they
    ran in a thread from this module's first test, and the module's last test waited for them:
    their imports and compilations took 13.5 s of the suite on a 2-core machine, measured)."""
    script = folder / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    # the vitools under test, wherever the scripts run from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(vt.__file__).parents[1]), *sys.path])}
    # in turn: the load reads the file the fit saved (it runs, and fails, if the fit failed)
    return [
        ([sys.executable, str(script), step], dict(cwd=folder, env=env, timeout=120))
        for step in ("fit", "load")
    ]


def test_a_model_defined_in_main_is_saved_and_loaded_in_fresh_processes(background):
    runs = background(__name__)
    for step, done in zip(("fit", "load"), runs, strict=True):
        assert done.returncode == 0, f"the {step} process failed:\n{done.stderr}"
    folder = Path(runs[0].args[1]).parent  # the script's folder, where both processes ran
    with np.load(folder / "fit_draws.npz") as first, np.load(folder / "load_draws.npz") as second:
        assert set(first.files) == set(second.files) == {"mu", "sigma"}
        for name in first.files:
            np.testing.assert_array_equal(second[name], first[name])
