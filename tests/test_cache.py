"""vitools.cache: compiled programs kept on disk for the next process."""

import os
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from vitools.cache import default_cache_dir, enable_compilation_cache


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITOOLS_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("VITOOLS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vitools" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "vitools" / "jax"


def test_an_existing_cache_setting_is_kept(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    try:
        assert enable_compilation_cache(tmp_path / "ours") == tmp_path / "theirs"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert not (tmp_path / "ours").exists()


SCRIPT = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
    import vitools as vt
    vt.enable_compilation_cache(sys.argv[1])
    target = vt.Target.from_log_density(lambda u: -0.5 * (u @ u), 3)
    vt.fit(target, num_steps=200, progress=False)
    """
)


def BACKGROUND(folder: Path) -> list:
    """The two fresh processes of the test below, run in turn from the session's start
    (conftest's ``background``): 12.9 s of the suite on 2 cores when run in the test (measured)."""
    command = [sys.executable, "-c", SCRIPT, str(folder / "cache")]
    return [(command, dict(env=dict(os.environ, JAX_PLATFORMS="cpu")))] * 2


@pytest.mark.slow
def test_a_second_process_loads_the_compiled_fit(background):
    """Two fresh processes run the same fit: the first stores the init and loop programs, the
    second loads them (JAX logs each persistent-cache hit at DEBUG level)."""
    runs = background(__name__)
    assert len(runs) == 2 and all(done.returncode == 0 for done in runs), runs[-1].stderr[-2000:]
    hit = "Persistent compilation cache hit"
    first, second = ([line for line in done.stderr.splitlines() if hit in line] for done in runs)
    assert first == []
    assert any(Path(runs[0].args[-1]).iterdir())  # programs were stored
    assert any("_path_laplace" in line for line in second) and any("run_chunks" in line for line in second)
