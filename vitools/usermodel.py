"""A model named on the command line: ``path/to/file.py:model`` or ``pkg.module:model``, with its data
from a file, so ``vitools compare`` and ``vitools fit`` run any NumPyro model, as CmdStan runs any
Stan program.

Data files: ``.json`` (an object; lists become NumPy arrays, numbers stay Python numbers, so
``int(data["N"])`` works), ``.npz`` (one array per name) or ``.csv`` (one array per column, a header
row naming them). How the data reach the model: as keyword arguments when the model's signature
names every entry (or takes ``**kwargs``), else as one positional dict when it takes exactly one
argument (a Stan-style ``model(data)``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitools import validate

__all__ = [
    "DATA_SUFFIXES",
    "UserModel",
    "load_data",
    "load_model",
    "model_arguments",
    "model_sites",
    "user_model",
]

DATA_SUFFIXES = (".json", ".npz", ".csv")


@dataclass(frozen=True, eq=False)
class UserModel:
    """A model from a user's file with its data; the attributes the commands read of a zoo model.

    Attributes:
        name: the spec as given (``file.py:model``); description: one line naming the data.
        model, args, kwargs: call it as ``model(*args, **kwargs)``.
    """

    name: str
    description: str
    model: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    log_normalizer: None = None
    closed_form: None = None
    nuts: None = None

    def reference(self) -> Any:
        raise FileNotFoundError(
            "a model from a file has no stored reference; use --reference nuts, or a file of draws"
        )


def is_spec(text: str) -> bool:
    """Whether a MODEL argument names a user model (``x.py:f`` or ``pkg.mod:f``), not a zoo model."""
    return ":" in text


def load_model(spec: str) -> Callable:
    """The model function a spec names.

    Args:
        spec: ``path/to/file.py:name`` (the file is run as a module, its folder on ``sys.path`` so
            that its own imports work) or ``pkg.module:name`` (imported).

    Raises:
        ArgumentValueError: no ``:``, the file or module cannot be found or fails to import (the
            error says which and why), or it has no callable of that name.
    """
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise validate.ArgumentValueError(
            f"MODEL {spec!r}: expected file.py:function or package.module:function", "MODEL"
        )
    try:
        if source.endswith(".py") or "/" in source or Path(source).exists():
            module = _module_from_file(Path(source))
        else:
            module = importlib.import_module(source)
    except validate.ArgumentError:
        raise
    except Exception as err:  # the user's code: any error it raises while importing
        raise validate.ArgumentValueError(
            f"MODEL {spec!r}: importing {source} failed: {type(err).__name__}: {err}", "MODEL"
        ) from None
    model = getattr(module, name, None)
    if not callable(model):
        found = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise validate.ArgumentValueError(
            f"MODEL {spec!r}: {source} has no function {name!r} "
            f"(its functions: {', '.join(found) or 'none'})",
            "MODEL",
        )
    return model


def _module_from_file(path: Path) -> Any:
    if not path.is_file():
        raise validate.ArgumentValueError(f"MODEL: no such file {str(path)!r}", "MODEL")
    name = f"vitools_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise validate.ArgumentValueError(f"MODEL: {str(path)!r} is not a Python file", "MODEL")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that the model's module can be found again (pickle, dataclasses)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def load_data(path: str | Path) -> dict[str, Any]:
    """A data file as a dict ``name -> value`` (see the module docstring for the formats).

    Raises:
        ArgumentValueError: the file does not exist, has another suffix, or cannot be parsed (the
            parser's message is kept).
    """
    path = Path(path)
    if path.suffix not in DATA_SUFFIXES:
        raise validate.ArgumentValueError(
            f"--data {str(path)!r}: expected a {', '.join(DATA_SUFFIXES)} file", "--data"
        )
    if not path.is_file():
        raise validate.ArgumentValueError(f"--data: no such file {str(path)!r}", "--data")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
            return {str(k): np.asarray(v) if isinstance(v, list) else v for k, v in raw.items()}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        import pandas as pd

        frame = pd.read_csv(path)
        return {str(column): frame[column].to_numpy() for column in frame.columns}
    except (ValueError, OSError) as err:
        raise validate.ArgumentValueError(f"--data {str(path)!r}: {err}", "--data") from None


def model_arguments(model: Callable, data: dict[str, Any] | None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` to call ``model`` with ``data`` (see the module docstring).

    Raises:
        ArgumentValueError: the data match neither way; the message gives the model's signature.
    """
    if data is None:
        return (), {}
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):  # a builtin or C callable: keyword arguments, as documented
        return (), dict(data)
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or set(data) <= set(params):
        return (), dict(data)
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [
        p for p in params.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(positional) >= 1 and len(required) <= 1:
        return (data,), {}
    unknown = sorted(set(data) - set(params))
    raise validate.ArgumentValueError(
        f"--data: the model's signature {model.__name__}{signature} takes neither the data's entries "
        f"as keywords (it lacks {', '.join(unknown)}) nor one dict of them",
        "--data",
    )


def user_model(spec: str, data_path: str | None) -> UserModel:
    """The :class:`UserModel` of a MODEL spec and an optional ``--data`` file.

    Raises:
        ArgumentValueError: as :func:`load_model`, :func:`load_data`, :func:`model_arguments`.
    """
    model = load_model(spec)
    data = None if data_path is None else load_data(data_path)
    args, kwargs = model_arguments(model, data)
    try:
        model_sites(model, args, kwargs)
    except Exception as err:  # the user's code on the user's data: any error it raises
        given = "without data" if data_path is None else f"on --data {data_path}"
        message = f"MODEL {spec!r}: running it {given} failed: {type(err).__name__}: {err}"
        raise validate.ArgumentValueError(" ".join(message.split()), "MODEL") from None
    described = "no data" if data_path is None else f"data from {data_path}"
    return UserModel(name=spec, description=described, model=model, args=args, kwargs=kwargs)


def model_sites(model: Callable, args: tuple, kwargs: dict) -> list[str]:
    """The sites a user can ask for by name: latent sample sites and deterministic sites, in model
    order, from one run of the model (latent values from NumPyro's ``init_to_uniform``, so improper
    priors run too).

    Raises:
        Whatever the model raises on these arguments.
    """
    from vitools.model import trace_at_uniform

    trace = trace_at_uniform(model, args, kwargs)
    return [
        name
        for name, site in trace.items()
        if (site["type"] == "sample" and not site["is_observed"]) or site["type"] == "deterministic"
    ]
