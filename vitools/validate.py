"""One set of validators for public arguments, run before anything is traced or compiled.

Each validator takes the value and the argument's name, returns the value as a plain Python (or
NumPy) value, and raises :class:`ArgumentValueError` or :class:`ArgumentTypeError` (a
``ValueError``/``TypeError``) whose message names the argument and what it accepts. The command
line reports any :class:`ArgumentError` as a usage error (one line, exit status 2).

Examples:
    >>> num_steps = validate.count(num_steps, "num_steps")
    >>> seed = validate.seed(seed)
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "INT32_MAX",
    "SEED_LIMIT",
    "VITOOLS_FILES",
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "at_least",
    "choice",
    "count",
    "draws",
    "finite",
    "gaussian",
    "in_range",
    "no_param_sites",
    "option",
    "positive",
    "key",
    "seed",
    "static_pytree",
    "widths",
]

INT32_MAX = 2**31 - 1  # step and draw counts are int32 in the compiled loop and in array shapes
# jax.random.PRNGKey keeps 32 bits of the seed without x64 (2**32 gives seed 0's key, -1 that of
# 2**32 - 1) and another 32 with it; accepting [0, 2**32) only gives every seed its own key either way.
SEED_LIMIT = 2**32
# vitools' own source folder: a warning about the user's input points past it, at the user's line
# (warnings.warn(..., skip_file_prefixes=VITOOLS_FILES)), however deep in vitools it is raised
VITOOLS_FILES = (os.path.dirname(os.path.abspath(__file__)) + os.sep,)


class ArgumentError(Exception):
    """A public argument is invalid; ``argument`` is its name."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class ArgumentValueError(ArgumentError, ValueError):
    """An argument has the right kind but a value outside the allowed ones."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument is of a kind that cannot be used (a string for a number, ...)."""


def count(value: Any, name: str, minimum: int = 1, maximum: int = INT32_MAX) -> int:
    """An integer count (NumPy integers included, bools not) in ``[minimum, maximum]``.

    Raises:
        ArgumentValueError: not an integer, or outside the range (a non-integer count is a bad
            value of the count, not a type error, as elsewhere in vitools).
    """
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ArgumentValueError(f"{name} must be {wanted}, got {value!r}", name)
    if value > maximum:
        raise ArgumentValueError(
            f"{name} must be at most {maximum} (the largest int32, the compiled loop's counter), got {value}",
            name,
        )
    return int(value)


def no_param_sites(param_sites: Any, method: str, why: str, argument: str) -> None:
    """Refuse a model with ``numpyro.param`` sites (``Target.param_sites``) for a method that
    cannot fit them, saying ``why`` and what to do instead.

    Raises:
        ArgumentValueError: there are such sites; the message names them.
    """
    if param_sites:
        names = [name for name, _ in param_sites]
        raise ArgumentValueError(
            f"the model has numpyro.param site(s) {names}, which {method} cannot fit ({why}); use "
            "'reverse_kl' or 'forward_kl' with vt.fit, or give them priors",
            argument,
        )


def widths(value: Any, name: str, kind: str = "positive integers") -> tuple[int, ...]:
    """A network's hidden widths: a non-empty sequence of positive integers, as a hashable tuple
    (so the family holding it stays usable as static configuration).

    Raises:
        ArgumentValueError: anything else; the message says the option takes ``kind``.
    """
    bad = ArgumentValueError(f"{name} must be None or a non-empty sequence of {kind}, got {value!r}", name)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise bad
    try:
        result = tuple(count(entry, f"{name} entry") for entry in value)
    except ArgumentError:
        raise bad from None
    if not result:
        raise bad
    return result


def finite(value: Any, name: str) -> float:
    """A finite real number (NumPy scalars included, bools not).

    Raises:
        ArgumentTypeError: not a real number. ArgumentValueError: NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}", name)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name} must be a finite number, got {value!r}", name)
    return float(value)


def positive(value: Any, name: str) -> float:
    """A finite number > 0. Raises as :func:`finite`, and ArgumentValueError if not > 0."""
    if finite(value, name) <= 0:
        raise ArgumentValueError(f"{name} must be a finite positive number, got {value!r}", name)
    return float(value)


def at_least(value: Any, name: str, minimum: float) -> float:
    """A finite number >= ``minimum``. Raises as :func:`finite`, and ArgumentValueError below it."""
    if finite(value, name) < minimum:
        raise ArgumentValueError(f"{name} must be a finite number >= {minimum}, got {value!r}", name)
    return float(value)


def in_range(value: Any, name: str, low: float, high: float) -> float:
    """A number in ``[low, high)`` (a probability that must leave some mass, say).

    Raises as :func:`finite`, and ArgumentValueError outside the range.
    """
    if not low <= finite(value, name) < high:
        raise ArgumentValueError(f"{name} must be in [{low}, {high}), got {value!r}", name)
    return float(value)


def seed(value: Any, name: str = "seed") -> int:
    """An integer seed in ``[0, 2**32)``: distinct seeds give distinct keys, nothing wraps.

    Raises:
        ArgumentTypeError: not an integer. ArgumentValueError: outside ``[0, 2**32)``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}", name)
    if not 0 <= value < SEED_LIMIT:
        raise ArgumentValueError(f"{name} must be an integer in [0, 2**32), got {value}", name)
    return int(value)


def key(value: Any, name: str = "key") -> jax.Array:
    """A JAX PRNG key: a typed key (``jax.random.key``) or a raw ``uint32`` key of shape ``(2,)``
    (``jax.random.PRNGKey``).

    Raises:
        ArgumentTypeError: anything else (e.g. an integer: pass it as ``seed``).
    """
    if (
        isinstance(value, jax.Array)
        and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)
        and value.shape == ()
    ):
        return value
    if isinstance(value, (jax.Array, np.ndarray)) and value.dtype == np.uint32 and value.shape == (2,):
        return jnp.asarray(value)
    raise ArgumentTypeError(
        f"{name} must be a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), got "
        f"{type(value).__name__} of shape {np.shape(value)} (one key, not a batch of keys; an "
        "integer is a seed: pass seed=)",
        name,
    )


def seed_or_key(seed_value: Any, key_value: Any) -> jax.Array:
    """The PRNG key of a call that takes ``seed`` or ``key``: the key, or ``PRNGKey(seed)`` (None: 0).

    Raises:
        ArgumentValueError: both are given.
        ArgumentTypeError, ArgumentValueError: as :func:`key` and :func:`seed`.
    """
    if key_value is not None and seed_value is not None:
        raise ArgumentValueError("give seed or key, not both (a key replaces the seed)", "key")
    if key_value is not None:
        return key(key_value)
    return jax.random.PRNGKey(seed(0 if seed_value is None else seed_value))


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices``. Raises ArgumentValueError for anything else."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ArgumentValueError(f"{name} must be one of {allowed}; got {value!r}", name)
    return value


def gaussian(value: Any, name: str = "init") -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian given as ``(loc, scale_tril)``: shapes ``(d,)`` and ``(d, d)``, finite, the
    factor lower-triangular with a positive diagonal (a Cholesky factor, not a covariance).

    Returns:
        ``(loc, scale_tril)`` as host arrays.

    Raises:
        ArgumentTypeError: not a pair. ArgumentValueError: shapes, NaN/inf, or the factor.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ArgumentTypeError(f"{name} must be a pair (loc, scale_tril), got {type(value).__name__}", name)
    loc, scale_tril = (np.asarray(a) for a in value)
    dim = loc.shape[0] if loc.ndim == 1 else -1
    if dim < 1 or scale_tril.shape != (dim, dim):
        raise ArgumentValueError(
            f"{name}=(loc, scale_tril) must have shapes (d,) and (d, d), "
            f"got {loc.shape} and {scale_tril.shape}",
            name,
        )
    if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(scale_tril))):
        raise ArgumentValueError(f"{name}=(loc, scale_tril) has NaN or infinite entries", name)
    if np.any(np.triu(scale_tril, 1) != 0) or not np.all(np.diagonal(scale_tril) > 0):
        raise ArgumentValueError(
            f"{name}'s scale_tril must be lower-triangular with a positive diagonal (a Cholesky factor, "
            "e.g. np.linalg.cholesky(cov))",
            name,
        )
    return loc, scale_tril


def static_pytree(value: Any, name: str) -> Any:
    """A family or objective object: an instance (not its class) registered as a JAX pytree whose
    leaves are arrays, since it travels into the compiled programs as an argument (configuration
    as static metadata, arrays as leaves).

    Raises:
        ArgumentTypeError: a class, an unregistered object, or a leaf that is not an array (a
            configuration field not marked static); the message says how to declare it.
    """
    if isinstance(value, type):
        raise ArgumentTypeError(f"{name} must be an instance, got the class: pass {value.__name__}()", name)
    leaves = jax.tree.leaves(value)
    bad = [leaf for leaf in leaves if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int))]
    if bad:
        kind = type(value).__name__
        found = "it is not a registered pytree" if bad[0] is value else f"it has a non-array leaf {bad[0]!r}"
        raise ArgumentTypeError(
            f"{name} {kind} must be a JAX pytree with array leaves ({found}): declare it with "
            "@jax.tree_util.register_dataclass over @dataclasses.dataclass(frozen=True), and mark "
            "configuration fields (name, sizes, flags) static: dataclasses.field(metadata=dict(static=True))",
            name,
        )
    return value


def option(parse: Callable[[Any], Any], value: Any, name: str) -> Any:
    """``parse(value)``, its ValueError/TypeError raised again as this module's, naming ``name``:
    for options parsed elsewhere (``get_family``, ``get_objective``) that should read as bad input."""
    try:
        return parse(value)
    except ArgumentError:
        raise
    except ValueError as err:
        raise ArgumentValueError(str(err), name) from None
    except TypeError as err:
        raise ArgumentTypeError(str(err), name) from None


def _draws_shape(shape: tuple[int, ...]) -> str:
    return f"(S, {', '.join(map(str, shape))})" if shape else "(S,)"


def draws(
    draws: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None, what: str = "draws"
) -> int:
    """Check a dict of draws ``site -> array (S, *site shape)`` and return S, the number of draws.

    Args:
        draws: the draws; values may be NumPy or JAX arrays (only their shapes are read).
        shapes: the shape of one draw of each site that must be there (e.g.
            ``target.constrained_shapes()``); other entries (deterministic sites) need only the
            common leading draw axis. None: no site is required.
        what: how the messages name the draws (``"reference draws"``).

    Raises:
        TypeError: ``draws`` is not a dict.
        ValueError: it is empty, lacks a site of ``shapes``, an entry has no leading draw axis or the
            wrong shape for its site, the entries disagree on S, or S is 0; the message names the
            site and the shape expected.

    Examples:
        >>> num_draws = validate.draws(draws, fit.target.constrained_shapes())
    """
    if not isinstance(draws, Mapping):
        raise TypeError(f"{what} must be a dict site -> array (S, ...), got {type(draws).__name__}")
    if not draws:
        raise ValueError(f"{what} are empty: expected a dict site -> array (S, ...)")
    shapes = dict(shapes or {})
    missing = [site for site in shapes if site not in draws]
    if missing:
        raise ValueError(f"{what} lack site(s) {missing}; expected {list(shapes)}")
    sizes = {}
    for site, value in draws.items():
        shape, expected = tuple(np.shape(value)), shapes.get(site)
        if not shape or (expected is not None and shape[1:] != tuple(expected)):
            want = "(S, ...)" if expected is None else _draws_shape(tuple(expected))
            raise ValueError(
                f"{what} {site!r} have shape {shape}: expected {want}, a leading draw axis of S draws"
                + ("" if expected is None else f" then the site's shape {tuple(expected)}")
            )
        sizes[site] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{what} need one common leading draw axis; got sizes {sizes}")
    num_draws = next(iter(sizes.values()))
    if num_draws == 0:
        raise ValueError(f"{what} hold no draws (leading axis of length 0)")
    return num_draws
