"""Whether a subsampling model's data match its plates: :func:`check_rows`, run once by
:meth:`vitools.targets.Target.from_model` on all rows. Data shorter than a plate (JAX would clamp the
minibatch's indices) and observations longer than it (rows the plate's indices never read,
:func:`vitools.unread_rows.unread_rows`) are refused, naming the array and the fix; a covariate's
rows past the plate's (held-out rows) are warned of.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from numpyro.infer.util import log_density as numpyro_log_density
from numpyro.primitives import Messenger

from vitools import validate
from vitools.arguments import Static
from vitools.model import ModelDensity
from vitools.unread_rows import UnreadRows, unread_rows

__all__ = ["check_rows"]


def _full_data_log_density(density: ModelDensity, u: jax.Array) -> jax.Array:
    return density.full_data().log_density(u)


# ``(error, log density)``; keyed by the density's static parts (the model), so compiled once a model
_full_data_out_of_bounds = jax.jit(checkify.checkify(_full_data_log_density, errors=checkify.index_checks))


def check_rows(density: ModelDensity, u: jax.Array) -> None:
    """Run a subsampling model once on all rows and refuse data whose rows do not match its plates.

    A minibatch gathers ``y[index]`` with JAX, which clamps an index past an array's end: a ``y``
    shorter than the plate (``y[:100]`` with 50,000 rows of ``x``) fits without a word, every
    row past the 100th reading ``y[99]``. On all rows every index of the plate is gathered once,
    so JAX's index checks (``checkify.index_checks``) see any array that is shorter than its plate
    (``numpyro.subsample`` checks its own). One compiled full-data evaluation: 0.26 CPU s of
    ``from_model``'s 0.95 for a 50,000-row logistic regression, 0.31 of 1.48 at 10^6 rows, 0.02
    once compiled (the next target of the model; measured, loaded 2-core CPU).

    A ``y`` longer than the plate (1200 labels, ``plate("data", len(x), ...)`` over 1000 rows of
    ``x``) fits without a word too: ``y[index]`` never reads its last 200 rows. Its program, traced
    before it is compiled (the same trace: the call reuses it), shows every gather of a data
    array by the plate's indices, and :func:`vitools.unread_rows.unread_rows` reports an array whose
    rows some such gathers read and none reads the rest (``numpyro.subsample`` checks its own).
    Its walk, the plates' index arithmetic run in NumPy, adds 0.012-0.02 CPU s at 10^6 rows
    (``y[idx]`` logistic regression; 0.002 at 10^4; 0.035 to find a ``y`` of 1.2 x 10^6) and
    no trace: ``from_model``'s median over 6 calls, 1.25-1.29 CPU s against 1.23-1.27 without
    it in three runs (measured, loaded 2-core CPU).

    Raises:
        ValueError: naming the array, its rows, the plate and the fix (unread observations); or
            the array or plates and JAX's out-of-bounds message.

    Warns:
        UserWarning: a covariate's rows past the plate's are never read (held-out rows, say).
    """
    # An error where the unread rows are observations (the array reaches an observed site's value,
    # _reaches_observations): they reach nothing vitools computes (vt.fit, its draws and
    # predictions, and NUTS on full_data_model all run the plate's rows), and a warning in a
    # script's output would let the fit go on silently wrong. A warning where they are covariates
    # (an x holding held-out rows past the plate's, read as x[idx]: a fresh user's model, refused
    # before): the fit is right for the observations it has. Lagged reads (y[idx] with y[idx + 1]),
    # group-level covariates (z[group[idx]]), prediction grids and arrays used whole are neither
    # (tests/test_subsample.py).
    traced = _full_data_out_of_bounds.trace(density, u)  # its inputs: density.data's leaves first
    names, arrays = _named_data(density)
    constants = arrays[len(density.data) :]
    unread = unread_rows(traced.jaxpr, len(density.data), density.plates, constants)
    for found in unread:
        observed = _reaches_observations(density, u, found.position)
        message = _unread_rows_message(names[found.position], arrays[found.position].shape, found, observed)
        if observed:
            raise ValueError(message)
        warnings.warn(message, UserWarning, skip_file_prefixes=validate.VITOOLS_FILES)  # the user's line
    error, _ = _full_data_out_of_bounds(density, u)
    message = error.get()
    if message:
        plates = ", ".join(f"{p.name!r} ({p.size} rows)" for p in density.plates)
        found = message.splitlines()[0].strip().rstrip(".")
        shape = re.search(r"array of shape (\([^)]*\))", found)  # JAX names the shape, not the array
        named = [
            n for n, a in zip(names, arrays, strict=True) if shape and str(np.shape(a)) == shape.group(1)
        ]
        which = f"{' or '.join(named)} (shape {shape.group(1)})" if named else "an array"
        raise ValueError(
            f"{which} is shorter than the subsampling plate(s) {plates}: run on all of their rows, the "
            f"model indexes it out of its bounds ({found}), and in a minibatch JAX would clamp the index "
            "and fit wrong data silently; pass as many rows as the plate has (e.g. y as long as x), or "
            "size the plate by the shorter array"
        )


def _unread_rows_message(name: str, shape: tuple, found: UnreadRows, observed: bool) -> str:
    """``y (shape (1200,)) has 1200 rows, gathered by ... plate 'data' (1000 rows): rows past 1000
    ... are never read ...; pass y[:1000] or size the plate by len(y)``; for a covariate
    (``observed`` False), that this is as meant for held-out rows."""
    shape = tuple(shape)
    rows, unread = shape[found.axis], found.unread
    plate = " and ".join(f"{p.name!r} ({p.size} rows)" for p in found.plates)
    along = "" if found.axis == 0 else f" along axis {found.axis}"
    what = f"{name} (shape {shape}) has {rows} rows{along}, gathered by the indices of subsampling plate"
    what = f"{what} {plate}"
    if np.array_equal(unread, np.arange(unread[0], rows)):  # a tail: the plate is sized by a shorter array
        head = f"{name}[:{unread[0]}]" if found.axis == 0 else f"its first {unread[0]} rows{along}"
        length = f"len({name})" if found.axis == 0 else f"{name}.shape[{found.axis}]"
        which, fix = f"rows past {unread[0]}", f"pass {head} or size the plate by {length}"
    else:
        listed = ", ".join(map(str, unread[:5])) + (", ..." if unread.size > 5 else "")
        which, fix = f"rows {listed}", "pass only the rows the model reads, or read every row"
    never = f"{what}: {which} ({unread.size} of {rows}) are never read"
    if observed:
        return f"{never}: observations the fit would ignore without a word; {fix}"
    return (
        f"{never} (they reach no observed site): if they are rows left out on purpose (held-out rows), "
        f"this is as meant; else {fix}"
    )


def _reaches_observations(density: ModelDensity, u: jax.Array, position: int) -> bool:
    """Whether data array ``position`` reaches an observed site's value: the observed values of an
    eager full-data run of the model at ``u`` change when its values change (each row plus 1 to
    7 by its position, negated for booleans: not an affine map, which a standardised ``y`` of
    0/1 labels would hide). An array the model closes
    over, or a run that fails on the changed values, counts as reaching them (the error stands).
    Two eager runs, only for an array with unread rows."""
    if position >= len(density.data):
        return True
    full = density.full_data()

    def observations(data: tuple) -> list[np.ndarray]:
        model = dataclasses.replace(full, data=data)
        args, kwargs = model.arguments()
        with warnings.catch_warnings():  # NumPyro warns of the changed values outside a support
            warnings.simplefilter("ignore")
            trace = numpyro_log_density(model._model(), args, kwargs, model.constrain(u))[1]
        return [np.asarray(s["value"]) for s in trace.values() if s["type"] == "sample" and s["is_observed"]]

    array = np.asarray(full.data[position])
    pattern = (np.arange(array.shape[0]) % 7 + 1).reshape((-1,) + (1,) * (array.ndim - 1))
    changed = ~array if array.dtype == bool else (array + pattern).astype(array.dtype)
    try:
        before = observations(full.data)
        after = observations(full.data[:position] + (jnp.asarray(changed),) + full.data[position + 1 :])
    except Exception:  # the user's model on other values: whatever it raises, the error stands
        return True
    return any(
        a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        for a, b in zip(before, after, strict=True)
    )


def _named_data(density: ModelDensity) -> tuple[list[str], tuple]:
    """``(names, arrays)`` of the model's data arrays: the traced ones (``density.data``), then the
    JAX arrays it closes over (static arguments). A name is the parameter's (``y``, ``x``) with
    the path inside it (``data['y']``); ``argument 0`` where the model's signature does not say."""
    static = density.static_data
    positions = jax.tree.unflatten(static.treedef, list(range(len(static.leaves))))
    model = density.model
    while isinstance(model, Messenger):  # the user's model inside NumPyro's handlers and SubsampledModel
        model = model.fn
    try:
        parameters = [
            p.name
            for p in inspect.signature(model).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # a callable without a signature Python can read
        parameters = []
    traced, closed = [], []
    for (kind, first, *rest), leaf in jax.tree_util.tree_flatten_with_path(positions)[0]:
        if kind.idx == 1:  # a keyword argument
            name = str(first.key) + jax.tree_util.keystr(tuple(rest))
        elif first.idx < len(parameters):
            name = parameters[first.idx] + jax.tree_util.keystr(tuple(rest))
        else:
            name = f"argument {first.idx}" + jax.tree_util.keystr(tuple(rest))
        value = static.leaves[leaf]
        if value is None:
            traced.append(name)
        elif isinstance(value, Static) and isinstance(value.value, jax.Array):
            closed.append((name, value.value))
    names = traced + [name for name, _ in closed]
    return names, tuple(density.data) + tuple(array for _, array in closed)
