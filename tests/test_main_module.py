"""``python -m vitools`` runs the command line (the brief and the docs use it)."""

import subprocess
import sys

import vitools


def test_python_dash_m_vitools_prints_the_version():
    result = subprocess.run(
        [sys.executable, "-m", "vitools", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert vitools.__version__ in result.stdout
