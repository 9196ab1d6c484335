"""Compiled programs kept on disk, so a new process does not compile them again.

vt.fit keeps its compiled programs for the life of the process; a script run again in a new
process compiles them again: the Laplace init (2.6 s for a 10,000-row regression), the loop
(1-2 s) and the model's initial point. JAX's persistent compilation cache stores the compiled
programs on disk, keyed by the program and the JAX version, and a later process loads them
instead. It is a setting of the whole process, so vitools turns it on only when asked:
``vt.enable_compilation_cache()`` in a script, and the ``vitools`` command line by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "default_cache_dir"]

# Programs that compile faster than this are not stored (JAX's default is 1 s, which would skip
# most of vt.fit's: the initial point and the smaller loops compile in 0.1-1 s; measured).
MIN_COMPILE_SECONDS = 0.1


def default_cache_dir() -> Path:
    """``$VITOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitools/jax``, else ``~/.cache/vitools/jax``."""
    if os.environ.get("VITOOLS_CACHE_DIR"):
        return Path(os.environ["VITOOLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitools" / "jax"


def enable_compilation_cache(directory: str | Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache for this process and return its directory.

    If the process already has a cache directory set (``jax_compilation_cache_dir``, e.g. by the
    caller or ``JAX_COMPILATION_CACHE_DIR``), that one is kept and ``directory`` is ignored.

    Args:
        directory: where to store the programs (default: :func:`default_cache_dir`).

    Returns:
        the cache directory in use (the process's own where one was already set).

    Raises:
        OSError: the directory cannot be created.

    Examples:
        >>> import vitools as vt
        >>> vt.enable_compilation_cache()  # at the top of a script that is run again and again
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = Path(directory) if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the compilation cache directory {path}: {err}") from err
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
