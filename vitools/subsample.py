"""Data subsampling: the plates of a model that subsample (``numpyro.plate(name, size,
subsample_size=B)``), the handler that gives them chosen row indices, and the draws of those indices
(a fresh minibatch a step, :meth:`vitools.targets.Target.minibatch`; a fixed subset for the start,
:meth:`vitools.targets.Target.subset`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

__all__ = ["SubsamplePlate", "SubsampledModel", "draw_indices", "draw_subset", "subsample_plates"]


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


class SubsampledModel(Messenger):
    """A model whose subsampling plates (``numpyro.plate(name, size, subsample_size=B)``) take
    given indices instead of drawing them: ``indices[name]`` (an integer array, the minibatch),
    or every row, ``arange(size)``, when ``indices`` is None (the full data: no scaling, and
    ``numpyro.subsample(x, event_dim=...)`` returns ``x`` whole).

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
        if msg["type"] != "plate" or msg["name"] not in self._sizes:
            return
        size = self._sizes[msg["name"]]
        index = jnp.arange(size) if self.indices is None else self.indices[msg["name"]]
        msg["value"] = index
        msg["args"] = (size, index.shape[0])  # NumPyro warns when these two differ

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
