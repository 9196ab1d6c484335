r"""Many devices: a fit's draws axis and/or its data rows split across devices with JAX's sharding.

vitools adds no communication of its own. It makes a :class:`jax.sharding.Mesh` with two axes,
``"draws"`` and ``"data"`` (:func:`mesh_of`, :func:`mesh_for`), places the loop's arrays on it
(:func:`place`: the state, the objective's and family's arrays, replicated; :func:`place_target`:
the target's data rows split over ``"data"``, the rest replicated) and, while the mesh is active
(:func:`active`, which is ``jax.set_mesh``), asks for the draws of q to be split over ``"draws"``
(:func:`constrain_draws`, called by ``families.base.draw_many`` and the mixture's
``stratified_draws``). XLA's partitioner (GSPMD) then splits the work of each step and inserts
the reductions a sum over draws or rows needs; the gradient of the replicated parameters comes
out replicated.

Which axis: a step costs draws x rows evaluations of a row's likelihood. Splitting rows also
splits the data's memory (each device holds 1/n of ``X``), and is what a model with 10^6-10^7
rows needs; splitting draws leaves each device a full copy of the data. :func:`mesh_for` (the
choice ``devices="all"`` makes) splits whichever of the two is longer, rows where they can be
split evenly, and warns where the rows outnumber the draws but do not split evenly. Any other
split, both axes included, is a Mesh of your own with those axis names:
``jax.make_mesh((2, 4), ("draws", "data"))`` (its axes, ``Explicit`` by default, are made
``Auto``: :func:`auto_axes`). What a fit split is on ``Fit.layout`` (:func:`layout`), and
``vt.fit`` prints it when its progress is on.

What is split: the rows of a model's data arrays that reach the compiled loop as traced inputs
(:data:`vitools.arguments.DATA_MODES`; a model that needs its data's values, e.g.
``np.asarray(y)``, closes over them as constants, which are copied to every device), and the
draws of the Gaussian, mixture and autoguide families. A flow's draws (``sample_with_log_prob``)
are not constrained: XLA decides, usually replicated.

On one device nothing changes: :func:`mesh_of` returns None, nothing is placed, no constraint is
traced, and the loop compiles once as before.

Results: the random draws do not depend on the split (``jax_threefry_partitionable``, on by
default since JAX 0.5, makes each device draw its own slice of the same numbers; tested bit for
bit), but sums over draws or rows are added in another order, so a split fit differs from an
unsplit one by rounding error: on 4 virtual CPU devices, float32, a logistic regression of 256
rows, 200 steps of reverse KL with 16 draws, the parameters (size ~1.8) differed by at most
1.2e-7, one ulp, whether draws or rows were split (measured, ``tests/sharding_check.py``).

Multi-host (several machines, one process per host, e.g. 2 nodes with 8 GPUs each). Call
``jax.distributed.initialize()`` at the top of the script, before any other JAX call; every
process runs the same script with the same data and seed; ``jax.devices()`` then lists all 16
devices and ``devices="all"`` spans them (each process holds the rows of its own devices; the
data are placed with ``jax.make_array_from_callback`` from each process's full copy). Launch::

    # Slurm (initialize() reads the coordinator and process ids from Slurm's environment)
    srun --nodes=2 --ntasks-per-node=1 --gpus-per-task=8 python fit.py
    # by hand, one command per host (host0 reachable from host1 on port 1234)
    python fit.py   # with jax.distributed.initialize("host0:1234", num_processes=2, process_id=0)
    python fit.py   # with jax.distributed.initialize("host0:1234", num_processes=2, process_id=1)

Open MPI (``mpirun -n 2 python fit.py``) and Cloud TPU pods are detected by ``initialize()`` too.
Multi-host runs are not tested here (one machine): the host loop reads the step count and the
losses from the device, which works across processes only where those come out replicated
(the parameters do on 4 virtual devices; the rest is unverified).

The low layer (``vt.fit(..., devices="all")`` is meant to do the same; a sketch, not a doctest:
``state`` is the engine's initial state of a fit)::

    mesh = sharding.mesh_for("all", target, objective.num_density_evals(target.dim))
    state, objective, family = sharding.place((state, objective, family), mesh)
    target = sharding.place_target(target, mesh)
    with sharding.active(mesh):
        outcome = engine.optimize(state, 2000, objective, family, target, optimizer)
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vitools import validate

__all__ = [
    "DATA",
    "DRAWS",
    "active",
    "auto_axes",
    "constrain_draws",
    "data_rows",
    "gather",
    "layout",
    "mesh_for",
    "mesh_of",
    "place",
    "place_target",
    "placement",
]

DRAWS = "draws"  # the mesh axis over which q's draws are split
DATA = "data"  # the mesh axis over which the data's rows are split


def mesh_of(devices: Any = "all", *, data_shards: int = 1) -> Mesh | None:
    """The mesh a fit runs on, or None for one device (nothing is placed or constrained).

    Args:
        devices: ``"all"`` (``jax.devices()``: every device of every process), None (no mesh),
            a sequence of ``jax.Device``, or a ``jax.sharding.Mesh`` whose axis names are among
            ``"draws"`` and ``"data"`` (used even with one device; its axes made ``Auto``, see
            :func:`auto_axes`).
        data_shards: how many of the devices split the data's rows (axis ``"data"``); the others
            split the draws (axis ``"draws"``). A divisor of the number of devices.

    Returns:
        A Mesh of shape ``(num_devices // data_shards, data_shards)`` and axes ``("draws",
            "data")`` (``AxisType.Auto``: XLA propagates the shardings), or None where ``devices``
            is None or names one device.

    Raises:
        vitools.validate.ArgumentTypeError: ``devices`` is none of the above.
        vitools.validate.ArgumentValueError: ``devices`` is another string, an empty sequence or
            a Mesh with other axis names; ``data_shards`` does not divide the number of devices.
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        unknown = sorted(set(devices.axis_names) - {DRAWS, DATA})
        if unknown:
            raise validate.ArgumentValueError(
                f"devices: a Mesh's axes must be named {DRAWS!r} and/or {DATA!r} (how vitools splits the "
                f"draws and the data's rows), got {devices.axis_names}",
                "devices",
            )
        return auto_axes(devices)
    if isinstance(devices, str):
        validate.choice(devices, "devices", ("all",))
        devices = jax.devices()
    if not isinstance(devices, Sequence) or not all(isinstance(d, jax.Device) for d in devices):
        raise validate.ArgumentTypeError(
            f'devices must be "all", None, a sequence of jax.Device or a jax.sharding.Mesh, got '
            f"{type(devices).__name__}",
            "devices",
        )
    if len(devices) == 0:
        raise validate.ArgumentValueError("devices: an empty sequence of devices", "devices")
    num_devices = len(devices)
    data_shards = validate.count(data_shards, "data_shards")
    if num_devices % data_shards:
        raise validate.ArgumentValueError(
            f"data_shards={data_shards} does not divide the {num_devices} devices", "data_shards"
        )
    if num_devices == 1:
        return None
    return jax.make_mesh(
        (num_devices // data_shards, data_shards),
        (DRAWS, DATA),
        (AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto`` (the same devices, names and shape; ``mesh``
    itself where they already are).

    ``jax.make_mesh`` makes ``Explicit`` axes by default (JAX 0.12.1, the version tested), under
    which an array's sharding is part of its type and ``with_sharding_constraint`` asserts it
    rather than asks for it: :func:`constrain_draws` then failed on the draws, which q makes
    replicated ("P(None, None) did not match P('draws', None)", with
    ``jax.make_mesh((2, 2), ("draws", "data"))``).
    vitools places the loop's inputs itself and leaves the rest to XLA's propagation, which is
    what ``Auto`` axes mean; the split of the work is the same either way.
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def mesh_for(devices: Any, target: Any, num_draws: int) -> Mesh | None:
    """:func:`mesh_of` with the split chosen for this target: every device on the data's rows
    when the target has traced row data (:func:`data_rows`) at least as long as ``num_draws``
    and divisible by the number of devices, else every device on the draws. A Mesh or None
    given as ``devices`` is used as it is (a Mesh with its axes made ``Auto``).

    The longer axis is split: a step's work is draws x rows either way, and splitting rows also
    splits the data's memory, while splitting draws copies the data to every device. (Not
    timed on a GPU here: none was at hand when this was written.) Rows that outnumber the draws
    but do not split evenly are warned of, as :func:`place_target` warns for a Mesh of your own:
    the draws are split instead and each device holds all rows.

    Raises:
        As :func:`mesh_of`.
    """
    if devices is None or isinstance(devices, Mesh):
        return mesh_of(devices)
    mesh = mesh_of(devices)  # every device on the draws
    if mesh is None:
        return None
    rows, num_devices = data_rows(target), mesh.devices.size
    if rows is not None and rows >= num_draws:
        if rows % num_devices == 0:
            return mesh_of(devices, data_shards=num_devices)
        warnings.warn(
            f"the data's {rows} rows do not split evenly over the {num_devices} devices; the draws are "
            f"split instead and each device holds all rows (drop rows to a multiple of {num_devices} "
            "to split the rows and their memory)",
            RuntimeWarning,
            skip_file_prefixes=validate.VITOOLS_FILES,  # the line of the caller outside vitools
        )
    return mesh


def layout(mesh: Mesh | None, target: Any, num_draws: int) -> str | None:
    """What a fit on ``mesh`` splits, in words (``Fit.layout``; printed by ``vt.fit`` with
    progress on), or None for no mesh (one device: nothing split).

    Args:
        mesh: the fit's mesh (:func:`mesh_for`), or None.
        target: the fit's target (its data rows: :func:`data_rows`).
        num_draws: q's draws a step (the objective's density evaluations a step).

    Returns:
        e.g. ``"4 cpu devices, mesh {'draws': 4, 'data': 1}: the 16 draws a step split 4 ways;
        the 10001 data rows on every device"``.
    """
    if mesh is None:
        return None
    shape = dict(mesh.shape)
    draw_shards, row_shards = shape.get(DRAWS, 1), shape.get(DATA, 1)
    platform = next(iter(mesh.devices.flat)).platform
    if draw_shards == 1:
        draws = f"the {num_draws} draws a step on every device"
    elif num_draws % draw_shards:
        draws = f"the {num_draws} draws a step not split (not a multiple of {draw_shards}: left to XLA)"
    else:
        draws = f"the {num_draws} draws a step split {draw_shards} ways"
    rows = data_rows(target)
    if rows is None:
        data = "no data rows to split"
    elif row_shards > 1 and rows % row_shards == 0:
        data = f"the {rows} data rows split {row_shards} ways ({rows // row_shards} a device)"
    else:
        data = f"the {rows} data rows on every device"
    return f"{mesh.devices.size} {platform} devices, mesh {shape}: {draws}; {data}"


def data_rows(target: Any) -> int | None:
    """The number of rows of the target's traced data: the longest leading axis among its data
    arrays of rank >= 1 (``Target.density.data``), or None when it has none (a plain log density,
    a model whose data are constants)."""
    lengths = [np.shape(x)[0] for x in _data_arrays(target) if np.ndim(x) >= 1]
    return max(lengths) if lengths else None


def _data_arrays(target: Any) -> tuple:
    return tuple(getattr(target.density, "data", ()))


def place(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with every array leaf copied to every device of ``mesh`` (replicated); the tree
    itself where ``mesh`` is None. For the loop's state (``engine.FitState``), the objective and
    the family (their array leaves, e.g. reference draws)."""
    if mesh is None:
        return tree
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _put(x, replicated) if _is_array(x) else x, tree)


def place_target(target: Any, mesh: Mesh | None) -> Any:
    """The target with its data rows split over the mesh's ``"data"`` axis and its other arrays
    (the frame, ``numpyro.param`` values, data arrays of other lengths) replicated.

    Data arrays whose leading axis is :func:`data_rows` long are split along it where the
    ``"data"`` axis divides it. Where it does not, they are replicated with a warning (the fit is
    the same, each device holding all rows): JAX splits an axis only evenly.

    Returns:
        The placed target (the target itself where ``mesh`` is None).
    """
    if mesh is None:
        return target
    placed = place(target, mesh)
    arrays = _data_arrays(target)
    shards = dict(mesh.shape).get(DATA, 1)
    rows = data_rows(target)
    if not arrays or shards == 1 or rows is None:
        return placed
    if rows % shards:
        warnings.warn(
            f"the data's {rows} rows do not split evenly over the mesh's {shards} {DATA!r} devices; "
            f"each device holds all rows (drop rows, or use a mesh whose {DATA!r} axis divides {rows})",
            RuntimeWarning,
            skip_file_prefixes=validate.VITOOLS_FILES,  # the line of the caller outside vitools
        )
        return placed
    split = NamedSharding(mesh, P(DATA))
    data = tuple(
        _put(x, split) if np.ndim(x) >= 1 and np.shape(x)[0] == rows else y
        for x, y in zip(arrays, placed.density.data, strict=True)
    )
    return dataclasses.replace(placed, density=dataclasses.replace(placed.density, data=data))


def gather(tree: Any) -> Any:
    """``tree`` with every leaf placed on a mesh (:func:`place`) brought back to one device: a
    replicated array as its local copy (no transfer), any other as a whole on the first local
    device. What a fit returns: its parameters then serve ``Fit.sample``, ``vt.diagnose`` and
    the predictive on one device, as an unsplit fit's do. Left on the mesh, every per-draw
    program of the diagnostics ran replicated on each device: on 4 virtual CPU devices
    ``vt.diagnose`` took 11-13x the CPU of the unsplit fit's for the same numbers (a user's
    trial, 2000 draws, 57-68 against 4.5-6.1 CPU s). Leaves of one device and NumPy arrays are
    returned as they are."""

    def one(x: Any) -> Any:
        if placement(x) is None:
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        if x.is_fully_addressable:
            return jax.device_put(x, jax.local_devices()[0])
        from jax.experimental import multihost_utils  # rows split across processes

        return jax.device_put(multihost_utils.process_allgather(x, tiled=True), jax.local_devices()[0])

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def active(mesh: Mesh | None) -> Iterator[None]:
    """While open, the programs traced see ``mesh`` (``jax.set_mesh``) and q's draws are split
    over its ``"draws"`` axis (:func:`constrain_draws`); with None, nothing changes. jit's caches
    key on the active mesh, so a program traced under a mesh is not reused without one."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh):
        yield


def constrain_draws(draws: jax.Array) -> jax.Array:
    """``draws`` (leading axis: the draws) split over the active mesh's ``"draws"`` axis
    (``jax.lax.with_sharding_constraint``), or as they are: no mesh active (:func:`active`), no
    ``"draws"`` axis, one device on it, or a number of draws it does not divide (JAX splits an
    axis only evenly; XLA then places them as it sees fit). A trace-time decision: no op is
    added in the unsplit cases, so the programs on one device are the same as without it."""
    mesh = jax.sharding.get_abstract_mesh()
    size = 1 if mesh.empty else dict(mesh.shape).get(DRAWS, 1)
    if size == 1 or np.ndim(draws) == 0 or np.shape(draws)[0] % size:
        return draws
    return jax.lax.with_sharding_constraint(draws, P(DRAWS))


def placement(x: Any) -> NamedSharding | None:
    """What of ``x``'s placement a compiled program depends on: its ``NamedSharding`` (an array
    placed by :func:`place` or :func:`place_target`), else None (an array of one device, committed
    or not, a NumPy array, a Python number). For keying compiled programs: an executable refuses
    arguments placed otherwise than those it was compiled for, while one device's arrays all
    share its programs as before."""
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` on ``sharding``: ``jax.device_put`` in one process; across processes, each process
    gives its own devices' slices of its full copy (``jax.make_array_from_callback``)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(jax.numpy.result_type(x), jax.dtypes.prng_key):  # a typed key: its data
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
