"""How a model's arguments reach vitools' compiled programs, and the model's one abstract trace.

NumPyro's NUTS and SVI close over a model's arguments, so a model may compute on them with NumPy,
read sizes from them (``int(data["K"])``) or branch on their values. vitools would rather pass
arrays as inputs of its compiled programs, so that new data of the same shapes reuse them. It
tries the modes of :data:`DATA_MODES` in turn and keeps the first under which the model traces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import init_to_uniform

__all__ = [
    "DATA_MODES",
    "Static",
    "StaticData",
    "call_error",
    "is_array",
    "join_data",
    "split_data",
    "trace_in_first_mode",
    "trace_once",
    "try_hash",
]


class Static:
    """A model argument held as static metadata (the model sees it as given), keyed by content.

    Arrays and pandas objects are keyed by a digest of their values, so a compiled program is
    reused for equal data and never for changed data (keyed by identity, a dict of data edited
    in place between two fits would reuse the first fit's program and data). Other unhashable
    objects are keyed by identity.
    """

    def __init__(self, value: Any):
        self.value = value
        self.key = _content_key(value)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and other.key == self.key


def _content_key(value: Any) -> Any:
    if is_array(value) and np.asarray(value).dtype != object:
        values = np.ascontiguousarray(np.asarray(value))
        digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
        return ("array", values.dtype.str, values.shape, digest)
    if type(value).__module__.startswith("pandas"):
        import pandas as pd

        try:
            rows = pd.util.hash_pandas_object(value, index=True).to_numpy()
        except TypeError:  # e.g. unhashable cells
            return ("id", id(value))
        names = tuple(map(str, getattr(value, "columns", [getattr(value, "name", None)])))
        digest = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()
        return ("pandas", type(value).__name__, names, digest)
    if isinstance(value, constraints.Constraint):  # unhashable, but equal when their parameters are
        leaves, treedef = jax.tree.flatten(value)
        return ("constraint", treedef, tuple(_content_key(leaf) for leaf in leaves))
    if try_hash(value):
        return ("value", type(value), value)
    return ("id", id(value))


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


# How a model's array arguments reach the compiled programs, tried in this order; the first mode
# in which the model traces is kept. "traced": every array is an input of the compiled programs,
# so new data of the same shapes reuse them. "floats": only floating arrays of rank >= 1 are,
# integer/bool arrays and scalars are constants (a plate size `K`, group indices used for
# shapes, a flag in an `if`). "closed": every argument is a constant the model sees exactly as
# given, as NumPyro's NUTS and SVI close over theirs (numpy on the data, `int(data["N"])`,
# Python control flow on data values); the programs are then reused for equal data only.
DATA_MODES = ("traced", "floats", "closed")


def _traced_in(mode: str, x: Any) -> bool:
    if not is_array(x):
        return False
    if mode == "traced":
        return True
    if mode == "floats":
        return np.ndim(x) >= 1 and jnp.issubdtype(jnp.result_type(x), jnp.floating)
    return False


class StaticData:
    """The static part of a model's arguments: their tree and the static leaves (None marks a
    traced leaf), hashed once (jit hashes a pytree's static metadata on every call)."""

    __slots__ = ("treedef", "leaves", "_hash")

    def __init__(self, treedef: Any, leaves: tuple):
        self.treedef, self.leaves = treedef, leaves
        self._hash = hash((treedef, leaves))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StaticData)
            and self._hash == other._hash
            and self.treedef == other.treedef
            and self.leaves == other.leaves
        )


def split_data(args: tuple, kwargs: dict, mode: str = "traced") -> tuple[tuple, StaticData]:
    """The model's arguments as ``(traced arrays, static part)`` under a :data:`DATA_MODES` mode."""
    leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=lambda x: x is None)
    arrays = tuple(jnp.asarray(x) for x in leaves if _traced_in(mode, x))
    # None marks a traced leaf, so a None argument is held as Static(None).
    plain = [try_hash(x) and not is_array(x) and x is not None for x in leaves]
    static = tuple(
        None if _traced_in(mode, x) else (x if keep else Static(x))
        for x, keep in zip(leaves, plain, strict=True)
    )
    return arrays, StaticData(treedef, static)


def try_hash(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def join_data(arrays: tuple, static: StaticData) -> tuple[tuple, dict]:
    it = iter(arrays)
    leaves = [next(it) if s is None else (s.value if isinstance(s, Static) else s) for s in static.leaves]
    return jax.tree.unflatten(static.treedef, leaves)


def trace_in_first_mode(model: Callable, args: tuple, kwargs: dict, seed: int) -> tuple[tuple, Any, dict]:
    """``(arrays, static, trace)`` in the first of :data:`DATA_MODES` in which the model traces.

    A mode fails when the model needs a concrete value of a traced argument (``np.asarray``,
    ``int(...)``, an ``if`` or a shape on the data); the closed mode runs the model on its
    arguments as given, so what still fails there fails under NUTS too, and its error is raised.
    """
    tried, error = set(), None
    for mode in DATA_MODES:
        arrays, static = split_data(args, kwargs, mode)
        if (len(arrays), static) in tried:  # nothing changes from the mode before
            continue
        tried.add((len(arrays), static))
        try:
            return arrays, static, _trace_model(model, arrays, static, seed)
        except Exception as err:  # the last mode tried runs the model on its arguments as given
            error = err
    raise call_error(error, args, kwargs) from error


# Options of some vitools functions only: elsewhere (fit_many, vsbc, auto_fit, pathfinder) they
# reach the model as its keyword arguments, and a model without them fails on the name.
_ONLY_OPTION_OF = {"devices": "vt.fit"}


def call_error(err: Exception, args: tuple, kwargs: dict) -> Exception:
    """The model failed on its arguments as given: say so, with a hint for pandas inputs (their
    arithmetic with a JAX value converts it to NumPy, which a traced value refuses) and for an
    option of another vitools function (``_ONLY_OPTION_OF``) that reached the model."""
    leaves = jax.tree.leaves((args, kwargs))
    pandas = [type(x).__name__ for x in leaves if type(x).__module__.startswith("pandas")]
    hint = ""
    if pandas and isinstance(err, jax.errors.TracerArrayConversionError):
        hint = (
            f"; an argument is a pandas {pandas[0]}, whose arithmetic with JAX values fails (under "
            "NumPyro's NUTS too): pass its values, e.g. series.to_numpy()"
        )
    stray = [name for name in _ONLY_OPTION_OF if name in kwargs and f"'{name}'" in str(err)]
    if isinstance(err, TypeError) and stray:
        name = stray[0]
        hint = (
            f"; {name}= is an option of {_ONLY_OPTION_OF[name]} only (vt.fit_many, vt.vsbc, vt.auto_fit "
            f"and vt.pathfinder run on JAX's default device and pass {name}= on to the model)"
        )
    if not isinstance(err, TypeError) and not hint:
        return err
    return TypeError(f"calling the model with the given arguments failed: {err}{hint}")


def _trace_model(model: Callable, arrays: tuple, static: Any, seed: int) -> dict:
    """One abstract trace of the model, for its sites' names, kinds and distributions.

    Values come from NumPyro's ``init_to_uniform`` where it applies, so improper priors
    (``ImproperUniform``, which cannot be sampled) trace too. The model runs under
    ``jax.eval_shape`` with its data as abstract arrays, as it will run inside the compiled
    loop: no op is dispatched or compiled (eagerly, each new op compiles). The values in the
    returned trace are therefore abstract; only the sites' static parts are meant to be read.
    """
    captured = {}

    def run(arrays):
        model_args, model_kwargs = join_data(arrays, static)
        captured["trace"] = trace_once(model, model_args, model_kwargs, seed)
        return ()

    jax.eval_shape(run, arrays)
    return captured["trace"]


def trace_once(model: Callable, args: tuple, kwargs: dict, seed: int) -> dict:
    seeded = handlers.seed(model, seed)
    try:
        with jax.numpy_rank_promotion("allow"):
            return handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform)).get_trace(
                *args, **kwargs
            )
    except Exception:  # e.g. a discrete site, which init_to_uniform cannot place: plain draws
        return handlers.trace(seeded).get_trace(*args, **kwargs)
