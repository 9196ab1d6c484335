"""``python -m vitools`` runs the command line (the brief and the docs use it)."""

import sys
from pathlib import Path

import vitools


def BACKGROUND(folder: Path) -> list:
    """The fresh process (its import of JAX and vitools: a few CPU seconds the test waited for), run
    in conftest's background queue from the session's start, on the core the suite leaves idle."""
    return [([sys.executable, "-m", "vitools", "--version"], dict(timeout=120))]


def test_python_dash_m_vitools_prints_the_version(background):
    (result,) = background(__name__)
    assert result.returncode == 0, result.stderr
    assert vitools.__version__ in result.stdout
