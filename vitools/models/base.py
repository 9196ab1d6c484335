"""The zoo's value types: `ZooModel`, its `Reference` posterior, and how references are stored.

A reference is either exact (`ClosedForm`: an exact sampler plus closed-form moments) or a long
NUTS run stored as thinned float32 draws in ``vitools/models/references/<name>.npz`` (written by
``benchmarks/make_references.py`` with the settings in `NutsSettings`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform

from vitools.draws import Reference

REFERENCE_DIR = Path(__file__).parent / "references"
CLOSED_FORM_SEED = 20240101
CLOSED_FORM_NUM_DRAWS = 4000

Draws = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClosedForm:
    """An exactly known posterior.

    Attributes:
        sample: ``sample(rng, num_draws) -> draws`` exact independent draws (NumPy generator).
        mean: exact posterior mean per latent site.
        sd: exact posterior standard deviation per latent site.

    Examples:
        >>> closed = get_model("funnel").closed_form  # vitools.models.get_model
        >>> closed.sample(np.random.default_rng(0), 5)["x"].shape, float(closed.sd["v"])
        ((5, 9), 3.0)
    """

    sample: Callable[[np.random.Generator, int], Draws]
    mean: Draws
    sd: Draws


@dataclass(frozen=True)
class NutsSettings:
    """How ``benchmarks/make_references.py`` builds a NUTS reference.

    Attributes:
        num_warmup: warm-up iterations per chain.
        num_draws: kept iterations per chain (diagnostics and moments use all of them).
        num_chains: chains, run sequentially.
        target_accept_prob: NUTS step-size adaptation target.
        max_tree_depth: NUTS maximum tree depth.
        dense_mass: adapt a dense mass matrix.
        num_kept: draws stored in the ``.npz`` after thinning all chains together.
        reparam: NumPyro reparameterizers by site name (e.g. ``{"a": LocScaleReparam(0)}``) applied
            for the NUTS run only; the reparameterized model has the same posterior, and the
            original sites come back as deterministic sites.
        source_model: run NUTS on this zoo model instead (same posterior, better geometry).
        transform: maps ``source_model``'s constrained draws (leading batch axis) to this model's sites.

    Examples:
        >>> settings = get_model("eight_schools_noncentered").nuts  # vitools.models.get_model
        >>> settings.num_chains * settings.num_draws >= settings.num_kept
        True
    """

    num_warmup: int = 1000
    num_draws: int = 2500
    num_chains: int = 4
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    num_kept: int = 2000
    reparam: Mapping[str, Any] | None = None
    source_model: str | None = None
    transform: Callable[[Draws], Draws] | None = None


@dataclass(frozen=True, eq=False)
class ZooModel:
    """A NumPyro model with its data and a trusted reference posterior.

    Attributes:
        name: registry name.
        description: one line.
        model: the NumPyro model; call it as ``model(*args, **kwargs)``.
        args: positional data arguments.
        kwargs: keyword data arguments (NumPy arrays).
        log_normalizer: log of the integral of the unnormalized joint density over the latent
            sites (the log evidence) where known in closed form, else ``None``.
        tags: free-form labels, e.g. ``("multimodal",)``.
        closed_form: the exact posterior, where known.
        nuts: settings of the stored NUTS reference, for models without ``closed_form``.

    Raises:
        ValueError: at construction, not exactly one of ``closed_form`` and ``nuts`` is given.

    Examples:
        >>> from vitools.models import get_model
        >>> zoo = get_model("eight_schools_noncentered")
        >>> ref = zoo.reference()  # stored NUTS draws, (S, *site shape) per site
        >>> {name: draws.shape for name, draws in ref.draws.items()}
        {'mu': (2000,), 'tau': (2000,), 'theta_t': (2000, 8)}
        >>> fit = vt.fit(zoo.model, *zoo.args, **zoo.kwargs, seed=0)  # as any NumPyro model
    """

    name: str
    description: str
    model: Callable
    args: tuple = ()
    kwargs: Mapping = field(default_factory=dict)
    log_normalizer: float | None = None
    tags: tuple[str, ...] = ()
    closed_form: ClosedForm | None = None
    nuts: NutsSettings | None = None

    def __post_init__(self) -> None:
        if (self.closed_form is None) == (self.nuts is None):
            raise ValueError(f"{self.name}: give exactly one of closed_form and nuts")

    def trace(self, key: jax.Array) -> dict:
        """Trace one run of the model; latent values come from NumPyro's ``init_to_uniform``.

        ``init_to_uniform`` draws in the unconstrained space, so models with improper
        (``ImproperUniform``) priors trace too.
        """
        seeded = handlers.seed(self.model, key)
        substituted = handlers.substitute(seeded, substitute_fn=init_to_uniform)
        return handlers.trace(substituted).get_trace(*self.args, **self.kwargs)

    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the latent (unobserved) sample sites of one draw, in the model's
        (constrained) space, in model order.

        The shapes do not depend on the PRNG key used to trace the model.
        """
        trace = self.trace(jax.random.key(0))
        return {
            name: tuple(np.shape(site["value"]))
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }

    def data_fingerprint(self) -> str:
        """A short hash of the data arrays; stored references record the data they were built on."""
        digest = hashlib.sha256()
        leaves = list(self.args) + [self.kwargs[k] for k in sorted(self.kwargs)]
        for leaf in leaves:
            if leaf is None:
                continue
            array = np.ascontiguousarray(np.asarray(leaf, dtype=np.float64))
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]

    def reference(self) -> Reference:
        """The trusted posterior: exact draws (fixed seed) or the stored NUTS draws, site →
        ``(S, *site shape)`` with their means and sds (:class:`~vitools.draws.Reference`).

        Raises:
            FileNotFoundError: the stored reference is missing.
            ValueError: the stored reference was built on different data.
        """
        if self.closed_form is not None:
            rng = np.random.default_rng(CLOSED_FORM_SEED)
            draws = self.closed_form.sample(rng, CLOSED_FORM_NUM_DRAWS)
            return Reference(
                draws=_read_only(draws),
                mean=_read_only(self.closed_form.mean),
                sd=_read_only(self.closed_form.sd),
                source="closed form",
            )
        reference, fingerprint = load_reference(self.name)
        if fingerprint != self.data_fingerprint():
            raise ValueError(
                f"reference for {self.name!r} was built on other data; "
                f"rerun benchmarks/make_references.py {self.name}"
            )
        return reference


def reference_path(name: str) -> Path:
    """Where the stored reference of model ``name`` lives."""
    return REFERENCE_DIR / f"{name}.npz"


def save_reference(path: Path, reference: Reference, fingerprint: str) -> None:
    """Write a reference as compressed ``.npz``: draws in float32, moments in float64."""
    arrays: dict[str, np.ndarray] = {
        "source": np.asarray(reference.source),
        "fingerprint": np.asarray(fingerprint),
    }
    for site, value in reference.draws.items():
        arrays[f"draws__{site}"] = np.asarray(value, dtype=np.float32)
        arrays[f"mean__{site}"] = np.asarray(reference.mean[site], dtype=np.float64)
        arrays[f"sd__{site}"] = np.asarray(reference.sd[site], dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_reference(name: str) -> tuple[Reference, str]:
    """Read the stored reference of model ``name``; returns it with the data fingerprint it records."""
    path = reference_path(name)
    if not path.exists():
        raise FileNotFoundError(f"no stored reference {path}; run benchmarks/make_references.py {name}")
    with np.load(path, allow_pickle=False) as npz:
        groups: dict[str, Draws] = {"draws": {}, "mean": {}, "sd": {}}
        for key in npz.files:
            group, sep, site = key.partition("__")
            if sep:
                groups[group][site] = npz[key]
        source, fingerprint = str(npz["source"]), str(npz["fingerprint"])
    reference = Reference(
        draws=_read_only(groups["draws"]),
        mean=_read_only(groups["mean"]),
        sd=_read_only(groups["sd"]),
        source=source,
    )
    return reference, fingerprint


def _read_only(arrays: Mapping[str, np.ndarray]) -> Draws:
    out = {}
    for site, value in arrays.items():
        array = np.array(value)
        array.setflags(write=False)
        out[site] = array
    return out
