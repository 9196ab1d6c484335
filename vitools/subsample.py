"""Data subsampling: the plates of a model that subsample (``numpyro.plate(name, size,
subsample_size=B)``), the handler that gives them chosen row indices, and the draws of those indices
(a fresh minibatch a step, :meth:`vitools.targets.Target.minibatch`; a fixed subset for the start,
:meth:`vitools.targets.Target.subset`); the same model on all rows (:func:`full_data_model`: for
NUTS, predictions and simulated data), and the check of each plate's subsample size
(:class:`CheckedPlates`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

__all__ = [
    "CheckedPlates",
    "SubsamplePlate",
    "SubsampledModel",
    "draw_indices",
    "draw_subset",
    "full_data_model",
    "subsample_plates",
]


class SubsamplePlate(NamedTuple):
    """A plate that subsamples: NumPyro's ``plate(name, size, subsample_size=...)``."""

    name: str
    size: int
    subsample_size: int


def subsample_plates(trace: dict) -> tuple[SubsamplePlate, ...]:
    """The plates of a traced model that subsample (``subsample_size < size``), in model order,
    each once (a plate entered twice under one name shares its indices).

    Raises:
        ValueError: a plate name is used with two sizes or batch sizes, or a latent sample
            site lies inside a subsampling plate (a local latent: q is over all of them, while a
            minibatch density sees only the batch's).
    """
    plates: dict[str, SubsamplePlate] = {}
    for site in trace.values():
        if site["type"] != "plate":
            continue
        size, subsample_size = site["args"]
        if subsample_size is None or subsample_size >= size:
            continue
        plate = SubsamplePlate(site["name"], int(size), int(subsample_size))
        if plates.setdefault(plate.name, plate) != plate:
            raise ValueError(
                f"plate {plate.name!r} is entered with size/subsample_size {plates[plate.name][1:]} and "
                f"{plate[1:]}: a plate name must keep one size and one batch size"
            )
    for site in trace.values():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        inside = [f.name for f in site["cond_indep_stack"] if f.name in plates]
        if inside:
            plate = plates[inside[0]]
            raise ValueError(
                f"latent site {site['name']!r} lies inside plate {plate.name!r}, which subsamples "
                f"{plate.subsample_size} of {plate.size}: vitools subsamples the likelihood of global "
                "latents only (q is over every local latent, a minibatch density sees the batch's); "
                f"move {site['name']!r} out of the plate or drop subsample_size"
            )
    return tuple(plates.values())


class CheckedPlates(Messenger):
    """A model whose plates' ``subsample_size`` is checked as each plate is entered, before
    NumPyro draws indices: an integer from 1 to the plate's size, or None.

    Unchecked, a bad size fails deep in NumPyro or JAX (0: an IndexError; -5: "slice_sizes must
    be less than or equal ..."; 2.5: "Shapes must be 1D sequences of concrete values of integer
    type"; more than the rows: "Missing random key ... HMC/NUTS do not support subsampling").
    ``vitools.model.model_density`` traces the model under it.

    Raises:
        ValueError: naming the plate, its size and the subsample size.
    """

    def process_message(self, msg: dict) -> None:
        if msg["type"] != "plate":
            return
        size, subsample_size = msg["args"]
        if subsample_size is None:
            return
        try:
            batch = None if isinstance(subsample_size, bool) else operator.index(subsample_size)
        except TypeError:  # a float, a traced value: NumPyro needs a concrete integer too
            batch = None
        if batch is None or not 1 <= batch <= size:
            raise ValueError(
                f"plate {msg['name']!r} has {size} rows and subsample_size={subsample_size!r}: the "
                f"subsample size must be an integer from 1 to {size} (None, or {size}: every row)"
            )


def _all_rows(msg: dict) -> None:
    """Put a subsampling plate's message on all its rows: ``arange(size)``, scale 1. The indices
    are a concrete array even inside a trace (``Predictive`` maps over draws with ``lax.map``), so
    a model indexing NumPy data (``x[idx]``) runs as it does without subsampling."""
    size, subsample_size = msg["args"]
    if subsample_size is None or subsample_size == size:
        return
    with jax.ensure_compile_time_eval():
        msg["value"] = jnp.arange(size)
    msg["args"] = (size, size)  # NumPyro warns when these two differ


def full_data_model(model: Callable) -> SubsampledModel:
    """The model without data subsampling: every ``numpyro.plate(name, size, subsample_size=B)``
    runs on all its ``size`` rows, unscaled, whatever B (``numpyro.subsample`` returns its data
    whole). This is the model NUTS needs (it cannot draw minibatch indices) and the one that
    predicts or simulates data (a prediction is over every row given).

    Examples:
        >>> mcmc = MCMC(NUTS(vt.full_data_model(model)), num_warmup=500, num_samples=1000)
        >>> mcmc.run(jax.random.key(0), x, y=y)  # vt.compare(fit, mcmc) reads it as the same model
    """
    return SubsampledModel(model, ())


class SubsampledModel(Messenger):
    """A model whose subsampling plates (``numpyro.plate(name, size, subsample_size=B)``) take
    given indices instead of drawing them: ``indices[name]`` (an integer array, the minibatch),
    or every row, ``arange(size)``, when ``indices`` is None (the full data: no scaling, and
    ``numpyro.subsample(x, event_dim=...)`` returns ``x`` whole). Without indices every
    subsampling plate runs on all rows, at the size it has in this call (new data, predictions:
    :func:`full_data_model`), not only the ``plates`` named.

    NumPyro scales a plate's sites by ``size / len(indices)``, so a minibatch of B rows gives the
    likelihood scaled by N / B, unbiased for the full one whatever the indices' distribution as
    long as each is uniform over the rows (:func:`draw_indices`). Without indices it is hashable
    by (model, plates), so compiled programs keyed on the model are reused across targets.
    Effect handlers see through it (``model_name``: its ``fn`` is the user's model).
    """

    def __init__(self, fn: Callable, plates: tuple[SubsamplePlate, ...], indices: dict | None = None):
        self.plates = tuple(plates)
        self.indices = indices
        self._sizes = {p.name: p.size for p in self.plates}
        super().__init__(fn)

    def process_message(self, msg: dict) -> None:
        if msg["type"] != "plate":
            return
        if self.indices is None:
            _all_rows(msg)
        elif msg["name"] in self._sizes:
            index = self.indices[msg["name"]]
            msg["value"] = index
            msg["args"] = (self._sizes[msg["name"]], index.shape[0])  # NumPyro warns when these differ

    def __hash__(self) -> int:
        return hash((type(self), self.fn, self.plates)) if self.indices is None else id(self)

    def __eq__(self, other: object) -> bool:
        if self.indices is not None or not isinstance(other, SubsampledModel):
            return self is other
        return other.indices is None and (self.fn, self.plates) == (other.fn, other.plates)


def draw_subset(key: jax.Array, plates: tuple[SubsamplePlate, ...], num_rows: int) -> dict[str, jax.Array]:
    """A fixed subset: ``min(num_rows, size)`` distinct row indices of each plate (all of them,
    in order, when it has at most ``num_rows``), ``{plate name: (rows,)}``. Drawn once (e.g. for
    the init), so the O(N) permutation behind ``jax.random.choice(replace=False)`` is paid once."""
    keys = jax.random.split(key, len(plates))
    return {
        p.name: jnp.arange(p.size) if p.size <= num_rows else jax.random.choice(k, p.size, (num_rows,), False)
        for p, k in zip(plates, keys, strict=True)
    }


def draw_indices(key: jax.Array, plates: tuple[SubsamplePlate, ...]) -> dict[str, jax.Array]:
    """One minibatch: ``subsample_size`` row indices of each plate, uniform over its rows and
    drawn with replacement, ``{plate name: (subsample_size,)}``.

    With replacement: each index is uniform, so the plate's N/B-scaled sum is unbiased for the
    full sum, at (N - 1)/(N - B) times the variance of NumPyro's draw without replacement (1% more
    at B = N/100). NumPyro's draw (``numpyro.primitives._subsample_fn``: a B-step Fisher-Yates
    scan over ``arange(N)`` on CPU, a permutation of N elsewhere) costs time that grows with N:
    B = 256 on a 2-core CPU, 49/57/139 µs per draw at N = 10^4/10^5/10^6 against 1.8/1.9/7.7 µs
    for ``jax.random.randint`` (measured, inside a compiled loop).
    """
    keys = jax.random.split(key, len(plates))
    return {
        p.name: jax.random.randint(k, (p.subsample_size,), 0, p.size)
        for p, k in zip(plates, keys, strict=True)
    }
