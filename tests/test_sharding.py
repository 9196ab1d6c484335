"""vitools.sharding: split fits equal unsplit ones, the arrays really are split, no host syncs, float32.

The multi-device checks run in one subprocess (``tests/sharding_check.py``) with four virtual CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and x64 off, so the rest of the
suite keeps its one device and float64; the tests below read its JSON report. The argument
checks run here, on this process's one device.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.sharding import AxisType, Mesh

import vitools as vt
from vitools import sharding, validate
from vitools.families.base import draw_many

CHECK = Path(__file__).with_name("sharding_check.py")
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def BACKGROUND(folder: Path) -> list:
    """The check's subprocess, run from the session's start (conftest's ``background``) rather than
    with this module's first test: ~10 s of CPU, mostly imports and three loops' compilations, on
    the core the suite's process leaves idle."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "JAX_PLATFORMS")}
    return [([sys.executable, str(CHECK)], dict(env=env, timeout=300))]


@pytest.fixture(scope="module")
def report(background) -> dict:
    """The subprocess's JSON report."""
    (done,) = background(__name__)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# on this process's one device (first: they run while the subprocess does)


def test_one_device_gives_no_mesh_and_placement_changes_nothing():
    assert sharding.mesh_of("all") is None  # the suite runs on one CPU device
    assert sharding.mesh_of(None) is None
    assert sharding.mesh_of(jax.devices()[:1]) is None
    tree = {"a": jnp.ones(3)}
    assert sharding.place(tree, None) is tree
    assert sharding.place_target(tree, None) is tree
    draws = jnp.ones((4, 2))
    assert sharding.constrain_draws(draws) is draws  # no mesh active
    with sharding.active(None):
        assert sharding.constrain_draws(draws) is draws


def test_a_mesh_with_vitools_axis_names_is_used_as_it_is():
    mesh = Mesh(np.array(jax.devices()[:1]), ("draws",))
    assert sharding.mesh_of(mesh) is mesh
    assert sharding.mesh_for(mesh, None, 16) is mesh


def test_a_mesh_from_make_mesh_is_used_with_auto_axes():
    # jax.make_mesh gives Explicit axes (JAX 0.12.1), under which with_sharding_constraint asserts
    # a sharding instead of asking for it: vitools uses the same devices and names, Auto
    user_mesh = jax.make_mesh((1,), ("draws",))
    assert user_mesh.axis_types == (AxisType.Explicit,)
    mesh = sharding.mesh_of(user_mesh)
    assert mesh.axis_types == (AxisType.Auto,)
    assert mesh.axis_names == user_mesh.axis_names
    assert mesh.devices.tolist() == user_mesh.devices.tolist()
    assert dict(sharding.mesh_for(user_mesh, None, 16).shape) == {"draws": 1}


def test_the_layout_of_no_mesh_is_none():
    assert sharding.layout(None, None, 16) is None


@pytest.mark.parametrize("function", ["fit_many", "pathfinder", "auto_fit", "vsbc"])
def test_devices_given_to_a_function_without_it_says_which_takes_it(function):
    # devices= is vt.fit's option only: elsewhere it reaches the model, which has no such argument
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    options = {"seeds": 2} if function == "fit_many" else {}
    y = None if function == "vsbc" else jnp.ones(3)  # vsbc simulates y: its observed site is None
    with pytest.raises(TypeError, match=r"devices= is an option of vt.fit only"):
        getattr(vt, function)(model, y=y, devices="all", progress=False, **options)


@pytest.mark.parametrize(
    ("devices", "data_shards", "error", "match"),
    [
        ("gpus", 1, validate.ArgumentValueError, "devices"),
        (3, 1, validate.ArgumentTypeError, "devices must be"),
        ([], 1, validate.ArgumentValueError, "empty sequence"),
        ("all", 2, validate.ArgumentValueError, "data_shards=2 does not divide the 1 devices"),
        ("all", 0, validate.ArgumentValueError, "data_shards"),
    ],
)
def test_bad_devices_are_refused_naming_the_argument(devices, data_shards, error, match):
    with pytest.raises(error, match=match):
        sharding.mesh_of(devices, data_shards=data_shards)


def test_a_mesh_with_other_axis_names_is_refused():
    with pytest.raises(validate.ArgumentValueError, match="axes must be named 'draws' and/or 'data'"):
        sharding.mesh_of(Mesh(np.array(jax.devices()[:1]), ("batch",)))


def test_placement_across_processes_gives_each_process_its_slices(monkeypatch):
    # jax.make_array_from_callback, the multi-host path, runs in one process too: pretend there are two
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tree = {"x": np.arange(6.0).reshape(3, 2), "key": jax.random.key(1), "raw_key": jax.random.PRNGKey(2)}
    placed = sharding.place(tree, mesh)
    np.testing.assert_array_equal(placed["x"], tree["x"])
    np.testing.assert_array_equal(jax.random.key_data(placed["key"]), jax.random.key_data(tree["key"]))
    np.testing.assert_array_equal(placed["raw_key"], tree["raw_key"])
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) for x in jax.tree.leaves(placed))
    # what keys a compiled program: the NamedSharding of a placed array, None for one device's
    assert sharding.placement(placed["x"]) == placed["x"].sharding
    assert (
        sharding.placement(jnp.ones(2)) is sharding.placement(np.ones(2)) is sharding.placement(3.0) is None
    )


def test_draw_many_on_one_device_gives_the_draws_it_gave_before():
    # draw_many's body gained constrain_draws, a no-op without a mesh: one rsample per split key
    q = dist.MultivariateNormal(jnp.arange(3.0), scale_tril=jnp.eye(3))
    key = jax.random.PRNGKey(5)
    draws, expected = jax.jit(lambda k: (draw_many(q, k, 6), jax.vmap(q.rsample)(jax.random.split(k, 6))))(
        key
    )
    np.testing.assert_array_equal(draws, expected)
    jaxpr = str(jax.make_jaxpr(lambda k: draw_many(q, k, 6))(key))
    assert "sharding_constraint" not in jaxpr


# ------------------------------------------------------------------------------------------
# in the subprocess: four virtual CPU devices, x64 off


def test_the_check_ran_on_four_cpu_devices_in_float32(report):
    assert report["num_devices"] == 4
    assert report["platform"] == "cpu"
    assert report["x64"] is False


@pytest.mark.parametrize("split", ["draws", "data"])
def test_a_split_fit_equals_the_unsplit_fit_to_float32_rounding(report, split):
    # The draws are the same numbers split or not (threefry is partitionable; checked below), so
    # the fits differ only where a sum over draws or rows is added in another order: a relative
    # rounding error of ~log2(256 rows) eps per gradient. Adam's step is scale-free (m / sqrt(v)),
    # so a relative error d in the gradient moves a step by at most ~lr d; over 200 steps at a
    # peak rate of 0.05 that is 200 x 0.05 x 8 eps = 80 eps ~ 1e-5, the bound used (measured:
    # 1.2e-7 and 5.6e-9 to 1.2e-7, i.e. one float32 ulp of parameters of size ~1.8).
    steps, learning_rate, log2_rows = 200, 0.05, 8
    bound = steps * learning_rate * log2_rows * FLOAT32_EPS
    fit = report[split]
    assert fit["status"] == "completed" and fit["steps"] == report["unsplit"]["steps"] == steps
    assert fit["max_param_diff"] <= bound * max(1.0, report["param_scale"])
    # the loss is a sum over 256 rows of terms ~1 (159 at the end): relative rounding ~log2(256)
    # eps per sum, the same 80 eps relative bound (measured: 3e-5 to 4.6e-5 absolute, ~2e-7 relative)
    assert fit["max_loss_diff"] <= bound * abs(report["unsplit"]["final_loss"])


def test_the_data_rows_are_split_over_the_data_axis(report):
    fit = report["data"]
    assert fit["mesh"] == {"draws": 1, "data": 4}
    X, y = fit["data"]
    assert X == {"spec": ["data"], "num_devices": 4, "shard_shape": [64, 4], "dtype": "float32"}
    assert y == {"spec": ["data"], "num_devices": 4, "shard_shape": [64], "dtype": "float32"}


def test_with_the_draws_split_the_data_are_copied_to_every_device(report):
    fit = report["draws"]
    assert fit["mesh"] == {"draws": 4, "data": 1}
    X, y = fit["data"]
    assert X["spec"] == [] and X["num_devices"] == 4 and X["shard_shape"] == [256, 4]
    assert y["spec"] == [] and y["shard_shape"] == [256]


@pytest.mark.parametrize("split", ["draws", "data"])
def test_the_parameters_stay_replicated_on_every_device(report, split):
    for param in report[split]["params"].values():
        assert param["spec"] == [] and param["num_devices"] == 4
    assert report["unsplit"]["params"]["raw_tril"]["num_devices"] == 1


def test_q_draws_and_mixture_draws_are_split_over_the_draws_axis(report):
    draws = report["draws"]
    # 16 draws of a 5-dimensional q: 4 on each device
    assert draws["q_draws"] == {
        "spec": ["draws"],
        "num_devices": 4,
        "shard_shape": [4, 5],
        "dtype": "float32",
    }
    assert draws["mixture_draws"]["spec"] == ["draws"] and draws["mixture_draws"]["shard_shape"] == [4, 5]
    # 18 draws do not split over 4 devices: left to XLA, whole on each device, not an error
    assert draws["odd_draws"]["shard_shape"] == [18, 5]
    # the same numbers as unsplit, bit for bit (jax_threefry_partitionable)
    assert draws["draws_equal_unsplit"] == [True, True, True]


def test_rows_that_do_not_split_evenly_are_copied_with_a_warning(report):
    uneven = report["uneven_rows"]
    assert [x["shard_shape"][0] for x in uneven["data"]] == [255, 255]
    assert len(uneven["warnings"]) == 1 and "255 rows do not split evenly" in uneven["warnings"][0]


def test_devices_all_warns_of_rows_that_do_not_split_evenly_and_splits_the_draws(report):
    # 255 rows outnumber the 16 draws but do not split over 4 devices: the draws are split, and
    # the user is told, as with a Mesh of their own that splits the rows (the warning names the
    # caller's line, not vitools')
    uneven = report["uneven_rows"]["all"]
    assert uneven["mesh"] == {"draws": 4, "data": 1}
    (warning,) = uneven["warnings"]
    assert "255 rows do not split evenly over the 4 devices" in warning
    assert uneven["warned_at"] == ["sharding_check.py"]
    assert "16 draws a step split 4 ways" in uneven["layout"]
    assert "255 data rows on every device" in uneven["layout"]


def test_mesh_for_splits_the_longer_axis(report):
    assert report["mesh_for"]["logistic"] == {"draws": 1, "data": 4}  # 256 rows > 16 draws
    assert report["mesh_for"]["few_rows"] == {"draws": 4, "data": 1}  # 256 rows < 512 draws


def test_one_device_traces_no_constraint(report):
    assert report["one_device_mesh"] is True
    assert report["unsplit"]["constraint_in_jaxpr"] is False


def test_the_compiled_loop_has_no_host_transfers(report):
    host = report["host"]
    assert host["ran_under_transfer_guard"] is True and host["steps"] == 100  # two chunks of 50 ran
    assert host["host_ops_in_hlo"] == []


def test_without_x64_everything_is_float32(report):
    dtypes = report["dtypes"]
    assert dtypes["params"] == dtypes["opt_state_floats"] == ["float32"]
    assert dtypes["losses"] == dtypes["draws"] == dtypes["target_initial_point"] == "float32"
    assert report["unsplit"]["loss_dtype"] == "float32"
    assert report["host"]["f64_in_hlo"] is False
    assert report["float64_warnings"] == []  # no float64 asked for and silently truncated


def test_vt_fit_with_devices_all_equals_the_one_device_fit(report):
    """``vt.fit(..., devices="all")`` (the user's option): the same seed's fit as on one device,
    within the bound of the split-fit test (same rounding argument, same steps and rate order)."""
    fit = report["vt_fit"]
    assert fit["steps"] == [200, 200]  # STEPS of sharding_check, no early stop (converge=False)
    assert fit["max_param_diff"] <= 200 * 0.1 * 8 * FLOAT32_EPS * max(1.0, report["param_scale"])
    assert fit["draws_shape"][0] == 8


def test_a_split_fit_comes_back_to_one_device_with_the_same_log_densities(report):
    """The fit's parameters leave the mesh (``sharding.gather``): its draws and diagnostics run on
    one device as an unsplit fit's do (left on it, ``vt.diagnose`` cost 11-13x the CPU). Their log
    p and log q at the same draw seed match the one-device fit's: the parameters differ by ~1e-7
    (the test above) and log p of 256 rows moves by its gradient (tens of nats per unit) times
    that; 1e-3 nats is well above that and far below any difference a wrong draw would make."""
    fit = report["vt_fit"]
    assert fit["params_devices"] == [1]
    assert fit["max_log_weight_diff"] <= 1e-3


def test_vt_fit_records_and_prints_what_it_split(report):
    assert report["vt_fit"]["one_device_layout"] is None  # one device: nothing split, nothing said
    layout = report["vt_fit"]["layout"]  # devices="all", 256 rows > 16 draws: the rows
    assert layout.startswith("4 cpu devices") and "256 data rows split 4 ways (64 a device)" in layout
    made = report["make_mesh"]
    assert "16 draws a step split 2 ways" in made["layout"]
    assert "256 data rows split 2 ways (128 a device)" in made["layout"]
    assert made["printed"] == [f"vitools: {made['layout']}"]  # one line, progress on


def test_vt_fit_on_a_mesh_from_make_mesh_equals_the_one_device_fit(report):
    """The Mesh the docs suggest, ``jax.make_mesh((2, 2), ("draws", "data"))``, whose axes are
    Explicit, failed in constrain_draws before; now it runs on Auto axes and gives the one-device
    fit within the rounding bound of the split-fit test (same steps; vt.fit's peak rate for this
    model, below 0.1, as in test_vt_fit_with_devices_all_equals_the_one_device_fit)."""
    made = report["make_mesh"]
    assert made["axis_types"] == ["AxisType.Explicit", "AxisType.Explicit"]
    assert made["used_axis_types"] == ["AxisType.Auto", "AxisType.Auto"]
    assert made["steps"] == 200
    assert made["max_param_diff"] <= 200 * 0.1 * 8 * FLOAT32_EPS * max(1.0, report["param_scale"])
    # and q's draws split over a make_mesh((4,), ("draws",)): 16 draws of 5 dimensions, 4 a device
    assert made["q_draws"]["spec"] == ["draws"] and made["q_draws"]["shard_shape"] == [4, 5]


def test_a_subsampled_fit_with_its_snapshot_splits_and_equals_the_unsplit_fit(report):
    """The control variate's snapshot (vitools.control_variate) is placed with the target: a
    subsampled fit over 4 devices runs the steps and gives the parameters of the one-device fit, to
    float32 rounding: the bound of the full-data fits above (only sums over rows change order;
    measured: 0.0, the same minibatches and snapshot to the bit)."""
    sub = report["subsampled"]
    assert "4 cpu devices" in sub["layout"], sub
    assert sub["steps"][0] == sub["steps"][1] and sub["init_grad_evals"][0] == sub["init_grad_evals"][1]
    bound = 200 * 0.05 * 8 * FLOAT32_EPS * max(1.0, report["param_scale"])
    assert sub["max_param_diff"] <= bound, sub
