r"""Save a :class:`~vitools.result.Fit` to one file and load it back with its model.

A pickled ``Fit`` holds its model function by reference, so it loads only where that function
can be imported (not from a script's or a notebook's ``__main__``). A vitools file holds no code:
the caller gives the model and its data again, exactly as to ``vt.fit``, and the file everything
else. It is an ``.npz`` archive (``numpy.load(path, allow_pickle=False)`` reads it) of

- ``header``: a JSON string: ``format`` (``"vitools.fit"``) and ``format_version``, the versions
  of vitools, jax, jaxlib, numpyro, numpy and Python that wrote it, the model's name, the
  **fingerprint** of the model's sites (``dim``; per latent site its name, shape, unconstrained
  shape, support and transform; per ``numpyro.param`` site its name, unconstrained shape and
  constraint), the family and the objective (class ``"module:qualname"`` and dataclass fields),
  the names and tree structure of q's parameters, and the fit's record (``num_steps``,
  ``num_grad_evals``, ``init_grad_evals``, ``elapsed``, ``compile_time``, ``init_time``,
  ``status``, ``seed``, ``convergence``);
- the arrays, bit for bit: ``params.<path>`` (q's parameters, e.g. ``params.loc`` or
  ``params.layers[0][2][0]``), ``frame/shift``, ``frame/scale``, ``target/initial_point``,
  ``model_params/<site>`` (unconstrained ``numpyro.param`` values, the ones the fit uses) and
  ``point_estimates/<site>`` (the same, constrained, for readers), ``losses``,
  ``trace/<name>``, and ``family/<field>`` / ``objective/<field>`` for array fields
  (``ForwardKLFromDraws``' draws).

:func:`load` rebuilds the target from the model (as ``vt.fit`` does), refuses a model whose
sites differ from the fingerprint, and puts the saved frame, parameters and record back: the
loaded fit draws the same draws as the saved one, bit for bit, for the same seed (in the same
floating-point precision). Classes are found in ``vitools`` or among the modules already
imported (a family defined in ``__main__`` is found there); nothing else is imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from vitools.autopath import Attempt, AutoPath
from vitools.convergence import Convergence
from vitools.families import get_family
from vitools.fingerprint import differences as site_differences
from vitools.fingerprint import fingerprint
from vitools.frame import Frame
from vitools.objectives import get_objective
from vitools.result import Fit
from vitools.targets import Target

__all__ = ["FORMAT", "FORMAT_VERSION", "fingerprint", "load", "save"]

FORMAT = "vitools.fit"
FORMAT_VERSION = 1
# The Fit's record fields kept in the header (JSON scalars), besides its convergence.
_RECORD = ("num_steps", "num_grad_evals", "init_grad_evals", "elapsed", "compile_time", "init_time",
           "status", "seed", "layout")  # fmt: skip


def save(fit: Fit, path: str | os.PathLike) -> Path:
    """Write a fit to one file (an ``.npz`` archive with a JSON header; no pickled code).

    Args:
        fit: the fit (any family whose configuration is numbers, strings, booleans, None,
            tuples and arrays: meanfield, fullrank, lowrank, iaf, or one of your own).
        path: where to write, used as given (no suffix is added; ``.vitools.npz`` is a good
            one). An existing file is replaced; the file is written whole or not at all.

    Returns:
        The path written.

    Raises:
        TypeError: the family or the objective is not a dataclass, or has a field a file
            cannot hold (e.g. :class:`~vitools.families.AutoGuideFamily`, whose guide is code).

    Examples:
        >>> fit = vt.fit(model, x, y=y, family="fullrank")
        >>> vt.save(fit, "model.vitools.npz")  # or fit.save("model.vitools.npz")
        PosixPath('model.vitools.npz')
        >>> fit = vt.load("model.vitools.npz", model, x, y=y)  # in another process
    """
    from vitools import __version__
    from vitools.convert import model_name  # it imports arviz: imported on use

    path, target = Path(path), fit.target
    leaves, treedef = jax.tree_util.tree_flatten_with_path(jax.device_get(fit.params))
    params = {"params" + jax.tree_util.keystr(key): leaf for key, leaf in leaves}
    arrays = {
        name: np.asarray(value)
        for name, value in {
            **params,
            "frame/shift": target.frame.shift,
            "frame/scale": target.frame.scale,
            "target/initial_point": target.initial_point,
            **{f"model_params/{name}": v for name, v in target.model_params.items()},
            **{f"point_estimates/{name}": v for name, v in fit.point_estimates.items()},
            "losses": fit.losses,
            **{f"trace/{name}": v for name, v in fit.trace.items()},
        }.items()
    }
    convergence = fit.convergence
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(__version__),
        "model": None if target.model is None else model_name(target.model),
        "fingerprint": fingerprint(target),
        "family": _config(fit.family, "family", arrays),
        "objective": (
            {"class": None, "name": fit.objective, "fields": {}}
            if isinstance(fit.objective, str)
            else _config(fit.objective, "objective", arrays)
        ),
        "params": {"structure": str(treedef), "arrays": list(params)},
        "trace": list(fit.trace),
        "fit": {
            **{name: _scalar(getattr(fit, name)) for name in _RECORD},
            "convergence": None
            if convergence is None
            else {name: _scalar(value) for name, value in convergence._asdict().items()},
            "auto": None if fit.auto is None else _auto_record(fit.auto),
        },
    }
    arrays["header"] = np.array(json.dumps(header, indent=1))
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:  # a file object: np.savez would append ".npz" to a name
            np.savez(file, **arrays)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, model: Any, /, *model_args: Any, **model_kwargs: Any) -> Fit:
    """Read a fit written by :func:`save`, given its model and data as ``vt.fit`` takes them.

    The target is rebuilt from the model and its arguments as ``vt.fit`` builds it (a
    :class:`~vitools.targets.Target` is taken as it is); the file gives q's parameters, the
    frame, the ``numpyro.param`` values, the family, the objective and the record, so the loaded
    fit's ``sample``, ``log_prob``, ``mean_and_covariance``, ``vt.diagnose`` and
    ``vt.to_datatree`` give what the saved fit's gave. The data are not checked (only the sites'
    layout): pass the data the fit was made with.

    Args:
        path: a file written by :func:`save` (or ``Fit.save``).
        model: the NumPyro model (it may be defined anew, e.g. in another script's
            ``__main__``), or the Target that was fitted.
        *model_args: the model's positional arguments (its data), as given to ``vt.fit``.
        **model_kwargs: the model's keyword arguments, as given to ``vt.fit``.

    Returns:
        The fit (:class:`~vitools.result.Fit`). Its objective is rebuilt where its class is
            found (else, with a warning, only its name is kept, as for a Gaussian fitted
            elsewhere).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a vitools fit file, or of a newer format version than this
            vitools reads; the model's sites differ from those in the file (the message names
            each differing site, e.g. "site 'tau': shape () in the file, (3,) in the model"); the
            family cannot be rebuilt (its class is neither in vitools nor in an imported module)
            or its parameters do not fit the file's.
        TypeError: the model cannot be traced with its arguments (as ``vt.fit``).

    Examples:
        >>> vt.fit(model, x, y=y, seed=0).save("model.vitools.npz")
        PosixPath('model.vitools.npz')
        >>> fit = vt.load("model.vitools.npz", model, x, y=y)  # in another process
        >>> fit.sample(1000, seed=3)["beta"].shape
        (1000,)
    """
    header, arrays = _read(path)
    target = model if isinstance(model, Target) else Target.from_model(model, *model_args, **model_kwargs)
    differences = site_differences(header["fingerprint"], fingerprint(target))
    if differences:
        raise ValueError(f"the model does not match the fit in {path}: " + "; ".join(differences))
    if any(a.dtype == np.float64 for a in arrays.values()) and not jax.config.jax_enable_x64:
        warnings.warn(
            f"{path} holds float64 values and jax_enable_x64 is off: they are rounded to float32, "
            "so the loaded fit's draws are not those of the saved fit",
            UserWarning,
            stacklevel=2,
        )
    family = _family(header["family"], arrays)
    objective = _objective(header["objective"], arrays)
    frame = Frame(jnp.asarray(arrays["frame/shift"]), jnp.asarray(arrays["frame/scale"]))
    target = dataclasses.replace(
        target.in_frame(frame), initial_point=jnp.asarray(arrays["target/initial_point"])
    )
    target = target.with_model_params(
        {name: jnp.asarray(arrays[f"model_params/{name}"]) for name, _ in target.param_sites}
    )
    record = dict(header["fit"])
    if record["convergence"] is not None:  # JSON null for a NaN (not assessed)
        fields = {k: float("nan") if v is None else v for k, v in record["convergence"].items()}
        record["convergence"] = Convergence(**fields)
    if record.get("auto") is not None:  # files written before the automatic mode have no entry
        record["auto"] = _auto_path(record["auto"])
    return Fit(
        target=target,
        family=family,
        objective=objective,
        params=_params(family, target, header["params"]["arrays"], arrays),
        losses=arrays["losses"],
        trace={name: arrays[f"trace/{name}"] for name in header["trace"]},
        **record,
    )


def _auto_record(path: Any) -> dict:
    """The automatic mode's path (:class:`vitools.auto.AutoPath`) as JSON values."""
    record = dataclasses.asdict(path)
    # floats as they are: json writes -inf/nan as -Infinity/NaN and reads them back (k̂ = -inf says
    # something NaN does not)
    record["attempts"] = [{k: _float_or_scalar(v) for k, v in a.items()} for a in record["attempts"]]
    return record


def _float_or_scalar(value: Any) -> Any:
    return value if isinstance(value, float) else _scalar(value)


def _auto_path(record: dict) -> Any:
    attempts = tuple(
        Attempt(**{k: float("nan") if v is None else v for k, v in a.items()}) for a in record["attempts"]
    )
    return AutoPath(**{**record, "attempts": attempts})


# ---------------------------------------------------------------------------------------------
# families and objectives: a class name and its dataclass fields


def _config(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"class", "name", "fields"}`` of a family or objective (a dataclass); array fields go
    to ``arrays`` under ``prefix/field``."""
    kind = type(obj)
    if not dataclasses.is_dataclass(obj):
        raise TypeError(f"cannot save a fit whose {prefix} ({kind.__name__}) is not a dataclass")
    fields = {
        f.name: _encode(getattr(obj, f.name), f"{prefix}/{f.name}", arrays, prefix)
        for f in dataclasses.fields(obj)
        if f.init
    }
    return {"class": f"{kind.__module__}:{kind.__qualname__}", "name": obj.name, "fields": fields}


def _encode(value: Any, key: str, arrays: dict[str, np.ndarray], what: str) -> Any:
    """A field as JSON: numbers, strings, booleans, None, lists (tuples), dicts with string keys;
    arrays as ``{"__array__": key}`` with the array in ``arrays``; a dataclass field (e.g. the
    ``Hybrid`` objective's two parts) as ``{"__dataclass__": its class, name and fields}``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": _config(value, key, arrays)}
    if isinstance(value, np.generic) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        arrays[key] = np.asarray(value)
        return {"__array__": key}
    if isinstance(value, (tuple, list)):
        return [_encode(v, f"{key}/{i}", arrays, what) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{key}/{k}", arrays, what) for k, v in value.items()}
    raise TypeError(
        f"cannot save a fit whose {what} has field {key.split('/')[1]!r} of type {type(value).__name__}: "
        "a vitools file holds numbers, strings, booleans, None, tuples, dicts and arrays, not code"
    )


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`_encode`; JSON lists come back as tuples (hashable configuration)."""
    if isinstance(value, list):
        return tuple(_decode(v, arrays) for v in value)
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        if set(value) == {"__dataclass__"}:
            return _build(value["__dataclass__"], arrays)
        return {k: _decode(v, arrays) for k, v in value.items()}
    return value


def _find_class(spec: str) -> type:
    """The class named ``module:qualname``: from vitools, or from a module already imported
    (``__main__`` included). No other module is imported, so a file cannot run code."""
    module_name, _, qualname = spec.partition(":")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] == "vitools":
        module = importlib.import_module(module_name)
    if module is None:
        raise LookupError(f"module {module_name!r} is not imported")
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise LookupError(f"module {module_name!r} has no class {qualname!r}")
    return found


def _build(entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    fields = {name: _decode(value, arrays) for name, value in entry["fields"].items()}
    return _find_class(entry["class"])(**fields)


def _family(entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    try:
        return get_family(_build(entry, arrays))
    except (LookupError, TypeError, ValueError) as err:
        raise ValueError(
            f"the file's family {entry['name']!r} ({entry['class']}) cannot be rebuilt: {err}; "
            "import or define its class before loading"
        ) from err


def _objective(entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    """The objective, or its name (with a warning) where its class cannot be found or built."""
    if entry["class"] is None:  # a Gaussian fitted elsewhere: a name only
        return entry["name"]
    try:
        return get_objective(_build(entry, arrays))
    except (LookupError, TypeError, ValueError) as err:
        warnings.warn(
            f"the objective {entry['name']!r} ({entry['class']}) cannot be rebuilt ({err}); the "
            "loaded fit keeps its name only",
            UserWarning,
            stacklevel=3,
        )
        return entry["name"]


def _params(family: Any, target: Target, names: list[str], arrays: dict[str, np.ndarray]) -> Any:
    """q's parameters: the file's arrays in the tree of the family's ``init`` (run abstractly)."""
    dtype = target.initial_point.dtype
    template = jax.eval_shape(
        family.init,
        jax.ShapeDtypeStruct((2,), jnp.uint32),  # shapes only: no key is drawn from
        target,
        jax.ShapeDtypeStruct((target.dim,), dtype),
        jax.ShapeDtypeStruct((target.dim, target.dim), dtype),
    )
    leaves, treedef = jax.tree.flatten(template)
    expected = [tuple(leaf.shape) for leaf in leaves]
    found = [tuple(arrays[n].shape) if n in arrays else None for n in names]
    if found != expected:
        raise ValueError(
            f"the file's {family.name} parameters (shapes {found}) do not fit this vitools' "
            f"{family.name} family (shapes {expected}); was the file written by another version?"
        )
    return jax.tree.unflatten(treedef, [jnp.asarray(arrays[n]) for n in names])


# ---------------------------------------------------------------------------------------------
# the file


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a vitools fit file, after checking its format and version."""
    not_ours = f"{path} is not a vitools fit file"
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{not_ours} (not an .npz archive: {type(err).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours} (a .npy array, not an .npz archive)")
    with archive:
        if "header" not in archive.files:
            raise ValueError(f"{not_ours} (an .npz archive without a vitools header)")
        try:
            header = json.loads(str(archive["header"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{not_ours} (its header is not JSON: {err})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{not_ours} (its header's format is not {FORMAT!r})")
        version = header.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"{not_ours} (format_version {version!r})")
        if version > FORMAT_VERSION:
            written = header.get("versions", {}).get("vitools", "?")
            raise ValueError(
                f"{path} is a vitools fit file of format version {version} (written by vitools "
                f"{written}); this vitools reads format version {FORMAT_VERSION} and older: upgrade vitools"
            )
        arrays = {name: archive[name] for name in archive.files if name != "header"}
    return header, arrays


def _versions(vitools_version: str) -> dict[str, str | None]:
    """The versions of what wrote the file (jaxlib None where its metadata is missing)."""
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = None
    return {"vitools": vitools_version, "jax": jax.__version__, "jaxlib": jaxlib,
            "numpyro": numpyro.__version__, "numpy": np.__version__,
            "python": platform.python_version()}  # fmt: skip


def _scalar(value: Any) -> Any:
    """A record's value as a JSON scalar: Python int, float, bool, str or None (NaN as null)."""
    if value is None or isinstance(value, str):
        return value
    value = np.asarray(value).item()
    return None if isinstance(value, float) and not np.isfinite(value) else value
