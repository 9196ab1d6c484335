"""Rows of a subsampling model's data that its plates' indices never read: a ``y`` of 1200 rows
read as ``y[idx]`` by a plate of 1000 (:func:`unread_rows`, for
:meth:`vitools.targets.Target.from_model`'s check). The model's full-data log density is traced
once; the walk follows the plates' indices (constants there, ``arange(size)``) through the index
arithmetic JAX's indexing traces to, evaluated in NumPy, and marks the rows each gather and slice
of a data array reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from vitools.subsample import SubsamplePlate

__all__ = ["UnreadRows", "unread_rows"]


class UnreadRows(NamedTuple):
    """Rows of one data array that a subsampling plate's indices gather from (``y[idx]``) and that
    nothing reads (:func:`unread_rows`)."""

    position: int  # of the array among the model's traced data (``ModelDensity.data``), then constants
    axis: int  # the array's axis the plate's indices run along
    plates: tuple[SubsamplePlate, ...]  # the plate(s) whose indices gather it
    unread: np.ndarray  # sorted numbers of the rows along ``axis`` that nothing reads


def unread_rows(
    closed_jaxpr: ClosedJaxpr, num_data: int, plates: tuple[SubsamplePlate, ...], constants: tuple = ()
) -> list[UnreadRows]:
    """The data arrays that a subsampling plate's indices gather from, longer than the plate, of
    which some rows are never read.

    ``closed_jaxpr`` is the model's full-data log density traced with its first ``num_data``
    inputs the model's data arrays: each subsampling plate's indices are there a constant,
    ``arange(size)`` (:func:`full_data_model`), and every ``y[idx]`` a gather by them. The index
    arrays computed from constants alone (JAX's negative-index wrap, ``idx + 1``, ``2 * idx``,
    reshapes) are evaluated in NumPy. A data array (or an elementwise image of one,
    ``y.astype(int)``) that a plate's indices gather along an axis longer than the plate is
    reported when rows along that axis stay unread by all its gathers with known indices and
    its partial slices: ``y`` of 1200 rows read as ``y[idx]`` by a plate of 1000 (rows
    1000-1199 unread), not ``y[idx]`` with ``y[idx + 1]`` over T - 1 transitions of T rows (a
    lagged model), nor ``x[idx]`` with ``x[n:]`` (held-out rows the model predicts). Arrays the
    plate's indices do not gather (group-level covariates read as ``z[group[idx]]``, a
    prediction grid, an array summed whole) or gather by data-dependent indices are not
    followed. Sub-programs (``jit``, ``cond``, ``custom_jvp``; loops' constants) are walked too.

    Args:
        closed_jaxpr: the traced full-data log density (its constants hold the plates' indices).
        num_data: how many of its leading inputs are data arrays.
        plates: the model's subsampling plates.
        constants: data arrays the model closes over (a static data mode), found among the
            program's constants by identity or value; numbered ``num_data``, ``num_data + 1``, ...

    Returns:
        One :class:`UnreadRows` per (array, axis) with rows unread, in the order first gathered.
    """
    if not plates:
        return []
    known, origin = {}, {var: i for i, var in enumerate(closed_jaxpr.jaxpr.invars[:num_data])}
    for var, value in zip(closed_jaxpr.jaxpr.constvars, closed_jaxpr.consts, strict=True):
        known[var] = _Index(value, _plates_of(value, plates))  # to NumPy when computed with
        for k, array in enumerate(constants):
            if value is array or (np.shape(value) == array.shape and np.array_equal(value, array)):
                origin[var] = num_data + k
                break
    reads = _Reads({}, {}, min(p.size for p in plates))
    _walk(closed_jaxpr.jaxpr, known, origin, reads)
    return [
        UnreadRows(position, axis, found, np.flatnonzero(~reads.rows[position, axis]))
        for (position, axis), found in reads.gathered.items()
        if not reads.rows[position, axis].all()
    ]


class _Index(NamedTuple):
    """An index array computed from the program's constants, and the plates whose indices it is
    computed from (none: a constant)."""

    value: np.ndarray | jax.Array  # a constant stays where it is (a device) until computed with
    plates: tuple[SubsamplePlate, ...]


class _Reads(NamedTuple):
    """What the walk found, by (data array's position, axis): the rows read (a mask, by gathers
    with known indices and partial slices), and the plates whose indices gather along it. Axes no
    longer than the smallest plate are left out (no plate's gather there can leave rows unread)."""

    rows: dict[tuple[int, int], np.ndarray]
    gathered: dict[tuple[int, int], tuple[SubsamplePlate, ...]]
    smallest: int  # rows of the smallest plate

    def mark(self, position: int, axis: int, length: int, rows: np.ndarray | slice) -> None:
        if length > self.smallest:
            self.rows.setdefault((position, axis), np.zeros(length, bool))[rows] = True


def _plates_of(value: object, plates: tuple[SubsamplePlate, ...]) -> tuple[SubsamplePlate, ...]:
    """The plates whose full-data indices ``value`` is (``arange(size)``), else ()."""
    shape, dtype = np.shape(value), getattr(value, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.integer) or len(shape) != 1:
        return ()
    same = tuple(p for p in plates if p.size == shape[0])
    return same if same and np.array_equal(np.asarray(value), np.arange(shape[0])) else ()


def _broadcast_in_dim(x: np.ndarray, shape: tuple, broadcast_dimensions: tuple, **_: object) -> np.ndarray:
    expanded = [1] * len(shape)
    for axis, dim in enumerate(broadcast_dimensions):
        expanded[dim] = x.shape[axis]
    return np.broadcast_to(x.reshape(expanded), shape)


def _select_n(which: np.ndarray, *cases: np.ndarray) -> np.ndarray:
    if len(cases) == 2:  # np.where: 0.55 ms over 10^6 indices, np.choose 12.6 (measured)
        return np.where(which, cases[1], cases[0])
    return np.choose(np.asarray(which, int), np.broadcast_arrays(*cases))


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # lax.div of integers: rounds toward 0
    return np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))


# NumPy twins of the primitives that JAX's indexing and a model's index arithmetic trace to: an
# index array computed by any other primitive (or from data) is not followed, and a gather by it
# is not checked.
_INDEX_ARITHMETIC: dict[str, Callable] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _divide,
    "rem": np.fmod,
    "neg": np.negative,
    "sign": np.sign,
    "abs": np.abs,
    "max": np.maximum,
    "min": np.minimum,
    "clamp": lambda lo, x, hi: np.clip(x, lo, hi),
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "and": np.bitwise_and,
    "or": np.bitwise_or,
    "not": np.invert,
    "select_n": _select_n,
    "copy": np.copy,
    "copy_p": np.copy,
    "convert_element_type": lambda x, new_dtype, **_: np.asarray(x).astype(new_dtype),
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": lambda x, new_sizes, dimensions=None, **_: np.reshape(x, new_sizes),
    "squeeze": lambda x, dimensions: np.squeeze(x, dimensions),
    "concatenate": lambda *xs, dimension: np.concatenate(xs, dimension),
}
_WITH_PARAMETERS = frozenset("convert_element_type broadcast_in_dim reshape squeeze concatenate".split())

# Elementwise primitives whose result, of an array's own shape, keeps its rows (``y.astype(int)``,
# ``(x - x.mean(0)) / x.std(0)``): a gather of it reads the array's rows.
_ELEMENTWISE = frozenset(
    "abs add ceil convert_element_type copy copy_p div exp exp2 expm1 floor integer_pow log log1p logistic "
    "max min mul neg pow reduce_precision round rsqrt select_n sign sqrt square sub tanh".split()
)


def _walk(jaxpr: Jaxpr, known: dict, origin: dict, reads: _Reads) -> None:
    """Follow the index arrays computed from constants (``known``: var → :class:`_Index`) and the
    data arrays' elementwise images (``origin``: var → position) through ``jaxpr`` and its
    sub-programs, marking in ``reads`` the rows their gathers and slices read."""

    def value(var: object) -> _Index | None:
        return _Index(np.asarray(var.val), ()) if isinstance(var, Literal) else known.get(var)

    def source(var: object) -> int | None:
        return None if isinstance(var, Literal) else origin.get(var)

    for eqn in jaxpr.eqns:
        name, array = eqn.primitive.name, source(eqn.invars[0]) if eqn.invars else None
        if name == "gather" and array is not None:
            _mark_gather(eqn, value(eqn.invars[1]), array, reads)
        if name in ("slice", "dynamic_slice") and array is not None:
            _mark_slice(eqn, [value(v) for v in eqn.invars[1:]], array, reads)
        if name == "scan":  # the body reads every row of what it scans over
            for var in eqn.invars[sum(_scan_counts(eqn.params)) :]:
                if source(var) is not None:
                    reads.mark(source(var), 0, var.aval.shape[0], slice(None))
        for inner, consts, pairs, outputs in _sub_jaxprs(eqn):
            inner_known = {v: _Index(c, ()) for v, c in zip(inner.constvars, consts, strict=True)}
            inner_known.update((i, value(o)) for i, o in pairs if value(o) is not None)
            inner_origin = {i: source(o) for i, o in pairs if source(o) is not None}
            _walk(inner, inner_known, inner_origin, reads)
            for i, o in zip(inner.outvars, eqn.outvars, strict=True) if outputs else ():
                if not isinstance(i, Literal) and i in inner_known:
                    known[o] = inner_known[i]
                if not isinstance(i, Literal) and i in inner_origin:
                    origin[o] = inner_origin[i]
        inputs = [value(v) for v in eqn.invars]
        if name in _INDEX_ARITHMETIC and inputs and all(i is not None for i in inputs):
            params = eqn.params if name in _WITH_PARAMETERS else {}
            result = np.asarray(_INDEX_ARITHMETIC[name](*(np.asarray(i.value) for i in inputs), **params))
            known[eqn.outvars[0]] = _Index(result, tuple(dict.fromkeys(p for i in inputs for p in i.plates)))
        if name in _ELEMENTWISE and len(eqn.outvars) == 1:
            shape = eqn.outvars[0].aval.shape
            for var in eqn.invars:
                if source(var) is not None and var.aval.shape == shape:
                    origin[eqn.outvars[0]] = source(var)
                    break


def _sub_jaxprs(eqn: object) -> list[tuple[Jaxpr, list, list, bool]]:
    """``(jaxpr, its constants, (its input, the equation's input) pairs, whether its outputs are the
    equation's)`` for each program inside ``eqn``: a call (``jit``, ``custom_jvp_call``, ...) sees
    the equation's inputs and gives its outputs; ``cond``'s branches see its operands; a loop's
    body sees only its constants (its carry changes from one iteration to the next)."""
    params, invars, name = eqn.params, eqn.invars, eqn.primitive.name
    if name == "while":
        nc, nb = params["cond_nconsts"], params["body_nconsts"]
        cond, body = params["cond_jaxpr"], params["body_jaxpr"]
        return [
            (cond.jaxpr, cond.consts, list(zip(cond.jaxpr.invars[:nc], invars[:nc], strict=True)), False),
            (
                body.jaxpr,
                body.consts,
                list(zip(body.jaxpr.invars[:nb], invars[nc : nc + nb], strict=True)),
                False,
            ),
        ]
    found = []
    for param in params.values():
        for program in param if isinstance(param, tuple) else (param,):
            if not isinstance(program, (ClosedJaxpr, Jaxpr)):
                continue
            closed = isinstance(program, ClosedJaxpr)
            inner, consts = (program.jaxpr, program.consts) if closed else (program, [])
            if name == "scan":  # its constants come first
                count = _scan_counts(params)[0]
                pairs = zip(inner.invars[:count], invars[:count], strict=True)
            else:  # the trailing inputs (cond's first is the branch index)
                count = min(len(inner.invars), len(invars))
                pairs = zip(
                    inner.invars[len(inner.invars) - count :], invars[len(invars) - count :], strict=True
                )
            pairs = [(i, o) for i, o in pairs if _shape(i) == _shape(o)]
            calls = name not in ("scan", "cond") and len(inner.outvars) == len(eqn.outvars)
            found.append((inner, consts, pairs, calls))
    return found


def _shape(var: object) -> tuple | None:
    return getattr(var.aval, "shape", None)


def _scan_counts(params: dict) -> tuple[int, int]:
    """How many of a ``scan``'s inputs are constants, and how many its carry (then come the
    arrays it scans over)."""
    if "num_consts" in params:  # older JAX
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()  # JAX 0.12: a flat tree of (consts, carry, xs)
    return len(list(consts)), len(list(carry))


def _mark_gather(eqn: object, indices: _Index | None, source: int, reads: _Reads) -> None:
    """Mark the rows a gather of a data array (``source``) reads (every row along its indexed axes
    when its indices are unknown: computed from data, ``y[t]`` in a loop), and note the axes
    that a plate's indices run along where the array is longer than the plate."""
    numbers, slice_sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = eqn.invars[0].aval.shape
    if indices is None or numbers.operand_batching_dims:  # rows unknown: take them all as read
        for axis in numbers.start_index_map:
            reads.mark(source, axis, shape[axis], slice(None))
        return
    starts = np.reshape(np.asarray(indices.value), (-1, np.shape(indices.value)[-1]))
    for column, axis in enumerate(numbers.start_index_map):
        if shape[axis] <= reads.smallest:  # as long as every plate or shorter: nothing to find
            continue
        first = np.clip(starts[:, column], 0, shape[axis] - slice_sizes[axis])  # as the gather clamps them
        for offset in range(slice_sizes[axis]):
            reads.mark(source, axis, shape[axis], first + offset)
        longer = indices.plates and shape[axis] > max(p.size for p in indices.plates)
        if longer and first.min() < first.max():  # a constant column (x[idx, 0]) is no plate's
            reads.gathered.setdefault((source, axis), indices.plates)


def _mark_slice(eqn: object, starts: list, source: int, reads: _Reads) -> None:
    """Mark the rows a slice of a data array reads along each axis it cuts (``x[n:]``, held-out
    rows; a ``dynamic_slice`` from an unknown start, ``y[t]`` in a loop: every row there). One
    that takes a whole axis (``x[:, 0]``) reads no row in particular there, as an array summed
    whole does not."""
    shape = eqn.invars[0].aval.shape
    if eqn.primitive.name == "slice":
        strides = eqn.params["strides"] or (1,) * len(shape)
        cuts = zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides, strict=True)
        rows = [slice(start, limit, stride) for start, limit, stride in cuts]
    else:  # from a start clamped as dynamic_slice clamps it; None: rows unknown
        rows = []
        for start, length, size in zip(starts, shape, eqn.params["slice_sizes"], strict=True):
            first = None if start is None else int(np.clip(np.asarray(start.value), 0, length - size))
            rows.append(
                slice(None) if size == length else None if first is None else slice(first, first + size)
            )
    for axis, (length, taken) in enumerate(zip(shape, rows, strict=True)):
        if taken is None:  # some rows, which ones unknown: take them all as read
            reads.mark(source, axis, length, slice(None))
        elif range(length)[taken] != range(length):
            reads.mark(source, axis, length, taken)
