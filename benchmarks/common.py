"""Shared helpers of the benchmark scripts: machine and load notes, markdown tables, zoo access.

The scripts run as ``python benchmarks/<script>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
# "high" load: a 1-minute load average above this many runnable tasks per core. The benchmark itself
# is one of them (about 1 while it runs, and the previous benchmark's in the average at its start).
HIGH_LOAD_PER_CORE = 1.0


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_note() -> dict[str, Any]:
    """Load averages (1, 5, 15 min) now, the core count, and whether the load is high."""
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    return {
        "load_1m": round(load[0], 2),
        "load_5m": round(load[1], 2),
        "load_15m": round(load[2], 2),
        "nproc": cores,
        "high": load[0] > HIGH_LOAD_PER_CORE * cores,
    }


def format_load(note: dict[str, Any]) -> str:
    flag = " — HIGH: other processes compete for the cores, timings are inflated" if note["high"] else ""
    return (
        f"load average at start: {note['load_1m']} / {note['load_5m']} / {note['load_15m']} "
        f"(1/5/15 min) on {note['nproc']} cores{flag}"
    )


def versions() -> dict[str, str]:
    """Versions of the stack the numbers depend on."""
    import arviz
    import jax
    import numpyro
    import optax

    import vitools

    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "numpyro": numpyro.__version__,
        "optax": optax.__version__,
        "arviz": arviz.__version__,
        "vitools": f"{vitools.__version__} ({vitools_commit()})",
    }


def vitools_commit() -> str:
    """The checkout's commit, and whether ``vitools/`` has uncommitted changes (results depend on them)."""
    import subprocess

    root = Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "vitools"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in vitools/" if dirty else "")


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats to 3 significant figures, None/NaN as blank."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def write_text(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def problem(name: str):
    """``(model, args, kwargs, reference)`` of a zoo model (``vitools.models``) or a posterior of the
    posteriordb corpus (``benchmarks/posteriordb``, data passed as one dict)."""
    from vitools.models import MODELS

    if name in MODELS:
        zoo = MODELS[name]
        return zoo.model, zoo.args, dict(zoo.kwargs), zoo.reference()
    from benchmarks.posteriordb import load

    model, data, reference = load(name)
    return model, (data,), {}, reference
