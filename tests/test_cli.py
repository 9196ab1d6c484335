"""The ``vitools`` command line: an end-to-end report run; bad input exits 2, Ctrl-C exits 130."""

from __future__ import annotations

import contextlib
import io
import os
from types import SimpleNamespace

import arviz as az
import jax
import numpy as np
import pandas as pd
import pytest

import vitools
from vitools import validate
from vitools.cli import main
from vitools.comparison import compare
from vitools.report import how_to_read, write_report
from vitools.result import Fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("marginals", "pair", "khat", "traces")
FIT_NAMES = ("forward_kl/fullrank", "forward_kl/iaf")  # the demo's


@pytest.fixture
def no_fit(monkeypatch):
    """``vt.fit`` (what the commands call) fails the test if anything is fitted."""

    def fail(*args, **kwargs):
        raise AssertionError("fitted despite bad input")

    monkeypatch.setattr(vitools, "fit", fail)


def count_draws(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record ``(method, fit name)`` for every call that draws from a Fit's q."""
    calls: list[tuple[str, str]] = []
    for method in ("sample_with_log_densities", "sample", "sample_flat"):
        original = getattr(Fit, method)

        def counted(self, *args, _method=method, _original=original, **kwargs):
            calls.append((_method, self.name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Fit, method, counted)
    return calls


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """One ``vitools demo`` run (banana, zoo reference, exact; a smaller budget than the demo's
    own), shared by the end-to-end tests, with every draw from a fit recorded."""
    out = tmp_path_factory.mktemp("cli") / "report"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["demo", "--num-steps", "1200", "--num-draws", "4000", "--quiet", "--out", str(out)]
    with pytest.MonkeyPatch.context() as monkeypatch:
        draws = count_draws(monkeypatch)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    return code, stdout.getvalue(), out, draws


def test_compare_prints_the_table_and_where_the_report_is(compare_run):
    code, stdout, out, _ = compare_run
    assert code == 0
    assert "khat" in stdout and "verdict" in stdout and "w1" in stdout
    assert all(name in stdout for name in FIT_NAMES)
    assert f"report written: {out / 'report.md'} and {out / 'report.html'}" in stdout


def test_compare_writes_markdown_with_table_and_linked_images(compare_run):
    _, _, out, _ = compare_run
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| khat " in text and "|---" in text  # the markdown table
    for name in FIT_NAMES:
        assert f"| {name} " in text
    for figure in FIGURES:
        assert f"]({figure}.png)" in text
        assert (out / f"{figure}.png").read_bytes()[:8] == PNG_MAGIC
    assert "How to read this" in text and "Closest to the reference" in text


def test_compare_writes_self_contained_html(compare_run):
    _, _, out, _ = compare_run
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<table>" in text and "<th>khat</th>" in text
    assert all(f"<td>{name}</td>" in text for name in FIT_NAMES)
    assert text.count('src="data:image/png;base64,') == len(FIGURES)
    assert ".png" not in text  # embedded, not linked


def test_compare_draws_from_each_fit_once_for_the_table_the_plots_and_the_report(compare_run):
    *_, draws = compare_run
    assert draws == [("sample_with_log_densities", name) for name in FIT_NAMES]


def test_compare_measures_missed_mass_against_the_zoo_models_known_log_evidence(compare_run):
    """The banana's log evidence is known (0): the command passes it to compare, so missed_mass is
    measured against it, not against a fit's noisy estimate (a user's run anchored on 0.137 ± 0.135)."""
    text = (compare_run[2] / "report.md").read_text(encoding="utf-8")
    assert "true log evidence (known for this model): 0; missed_mass is measured against it" in text
    assert "falls short of the model's true log evidence (0, given) by g" in text


def test_fit_prints_the_fit_diagnostics_and_distances_from_one_set_of_draws(capsys, monkeypatch):
    draws = count_draws(monkeypatch)
    assert main(["fit", "bimodal", "--num-steps", "300", "--num-draws", "500", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "Fit(reverse_kl/fullrank" in stdout
    assert "k̂" in stdout and "ESS" in stdout and "w1" in stdout
    assert draws == [("sample_with_log_densities", "reverse_kl/fullrank")]  # diagnose and compare share it


def test_help_and_models(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "vitools compare" in text and "demo" in text
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bimodal") and any(
        line.startswith("eight_schools_noncentered") for line in lines
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "nope"], "unknown model 'nope'; known models: bimodal, banana"),
        (
            ["compare", "bimodal", "--objectives", "reverse_kl,bogus"],
            "--objectives must be one of 'reverse_kl', 'forward_kl', 'renyi', 'iwae', 'chi2', 'hybrid', "
            "'msc', 'batch_and_match', 'forward_kl_draws', 'pathfinder'; got 'bogus'",
        ),
        (["compare", "bimodal", "--objectives", ","], "--objectives is empty"),
        (["compare", "bimodal", "--family", "diagonal"], "--family must be one of 'meanfield', "),
        (["compare", "bimodal", "--num-steps", "0"], "--num-steps must be a positive integer, got 0"),
        (["fit", "bimodal", "--num-steps", "-5"], "--num-steps must be a positive integer, got -5"),
        (["fit", "bimodal", "--num-steps", str(2**40)], "--num-steps must be at most 2147483647"),
        (["compare", "bimodal", "--num-steps", str(2**40)], "--num-steps must be at most 2147483647"),
        (["compare", "bimodal", "--num-steps", "many"], "invalid int value: 'many'"),
        (["compare", "bimodal", "--num-draws", "10"], "--num-draws must be an integer >= 25, got 10"),
        (["fit", "bimodal", "--num-draws", str(2**40)], "--num-draws must be at most 2147483647"),
        (["fit", "bimodal", "--seed", str(2**32)], "--seed must be an integer in [0, 2**32), got 4294967296"),
        (["compare", "bimodal", "--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
        (["fit", "bimodal", "--seed", "0.5"], "invalid int value: '0.5'"),
        (
            ["compare", "bimodal", "--reference", "mcmc"],
            "--reference 'mcmc': expected zoo, nuts, none, or a .nc, .npz or .json file of draws",
        ),
        (["compare", "bimodal", "--reference", "nope.nc"], "--reference: no such file 'nope.nc'"),
        (
            ["compare", "bimodal", "--reference", "none", "--objectives", "forward_kl_draws"],
            "fits q to the reference's draws",
        ),
        (
            ["compare", "bimodal", "--var-names", "z,tau"],
            "--var-names tau: not sites of the model (z)",
        ),
        (["compare", "bimodal", "--data", "d.json"], "--data is for a model from a file"),
        (["fit", "bimodal", "--family", "fullrank,iaf"], "vitools fit takes one --family"),
        (["compare", "nope.py:model"], "MODEL: no such file 'nope.py'"),
        (["compare", "bimodal", "--nuts-chains", "0"], "--nuts-chains must be a positive integer, got 0"),
        (["compare", "bimodal", "--target-accept", "1.5"], "--target-accept must be in [0.0, 1.0), got 1.5"),
        (["fit", "bimodal", "--objective", "kl"], "--objective must be one of 'reverse_kl', "),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_fit(argv, message, capsys, tmp_path, no_fit):
    if argv[0] == "compare":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vitools: error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not (tmp_path / "out").exists()  # nothing is created before the input is known to be good


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_an_argument_error_from_the_library_exits_2_with_one_line(command, capsys, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise validate.ArgumentValueError(
            "learning_rate must be a finite positive number, got 0", "learning_rate"
        )

    monkeypatch.setattr(vitools, "fit", refuse)
    argv = [command, "bimodal", "--quiet"] + (["--out", str(tmp_path)] if command == "compare" else [])
    assert main(argv) == 2
    assert (
        capsys.readouterr().err == "vitools: error: learning_rate must be a finite positive number, got 0\n"
    )


def _interrupted(calls: list[str], how: str):
    """A ``vt.fit`` stand-in for Ctrl-C during a fit: the engine catches it and returns the fit so far
    (status "interrupted"), or, outside the engine's loop (tracing, compiling), it propagates."""

    def fit(model, *args, objective, family, **kwargs):
        calls.append(objective)
        if how == "raised":
            raise KeyboardInterrupt
        return SimpleNamespace(name=f"{objective}/{family}", status="interrupted")

    return fit


@pytest.mark.parametrize("how", ["returned", "raised"])
def test_ctrl_c_in_the_first_fit_stops_compare_with_status_130(how, capsys, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(vitools, "fit", _interrupted(calls, how))
    out = tmp_path / "report"
    assert main(["compare", "bimodal", "--reference", "none", "--quiet", "--out", str(out)]) == 130
    assert calls == ["reverse_kl"]  # forward_kl is not started
    assert capsys.readouterr().err == "vitools: interrupted\n"
    assert list(out.iterdir()) == []  # no report from part of the fits


@pytest.mark.parametrize("how", ["returned", "raised"])
def test_ctrl_c_in_vitools_fit_exits_130(how, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(vitools, "fit", _interrupted(calls, how))
    assert main(["fit", "bimodal", "--quiet"]) == 130
    assert calls == ["reverse_kl"]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "vitools: interrupted\n"


def test_out_under_a_file_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["compare", "bimodal", "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitools: error: cannot write the report to") and "Not a directory" in err


def test_out_under_a_read_only_folder_exits_2(capsys, tmp_path):
    if os.geteuid() == 0:  # root writes into chmod-read-only folders; sysfs refuses even root
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("running as root without a read-only /sys")
        assert main(["compare", "bimodal", "--out", "/sys/kernel/vitools-report"]) == 2
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert main(["compare", "bimodal", "--out", str(locked / "report")]) == 2
        finally:
            locked.chmod(0o700)
    assert "cannot write the report to" in capsys.readouterr().err


def test_how_to_read_names_the_closest_fit_but_not_the_reference_row():
    table = pd.DataFrame(
        {"verdict": ["good", "bad", None], "w1": [0.3, 0.1, 0.0], "sd_ratio": [1.1, 0.5, 1.0]},
        index=["wide", "narrow", "NUTS"],
    )
    text = " ".join(how_to_read(table, num_draws=1000, candidates=["wide", "narrow"]))
    assert "Closest to the reference: **narrow** (w1 0.1, sd_ratio 0.5)" in text
    assert "furthest: **wide**" in text and "NUTS" not in text
    assert "**Read as bad:** narrow (reasons under the table)" in text


def test_how_to_read_says_what_missed_mass_is_measured_against():
    """The missed-mass paragraph names the anchor compare chose (table.attrs) and its estimate."""
    table = pd.DataFrame(
        {"verdict": ["good", "bad"], "missed_mass": [0.0, 0.5], "log_evidence": [0.001, -0.69]},
        index=["good", "half"],
    )
    table.attrs["missed_mass_anchor"] = {"fit": "good", "log_evidence": 0.00129, "log_evidence_se": 0.0022}
    text = " ".join(how_to_read(table, num_draws=1000))
    assert "falls short of that of **good** (0.00129 ± 0.0022: of the fits whose k̂ is under" in text
    table.attrs["missed_mass_anchor"] = {"fit": None, "log_evidence": -31.25, "log_evidence_se": 0.0}
    text = " ".join(how_to_read(table, num_draws=1000))
    assert "falls short of the model's true log evidence (-31.2, given) by g" in text


def test_report_says_which_plot_could_not_be_drawn(tmp_path):
    rng = np.random.default_rng(0)
    fits = {  # one parameter: no pair plot; trees without an optimisation trace
        name: az.from_dict({"posterior": {"x": rng.normal(loc, 1.0, size=(1, 200))}})
        for name, loc in (("a", 0.0), ("b", 0.5))
    }
    table = compare(fits, reference={"x": rng.normal(size=500)})
    paths = write_report(fits, table, tmp_path / "r", reference={"x": rng.normal(size=500)})
    text = paths.markdown.read_text(encoding="utf-8")
    assert "*Not drawn: a pair plot needs two scalar parameters" in text
    assert sorted(paths.images) == ["marginals", "traces"]  # no k̂ without q: not drawn either
    assert "<em>Not drawn:" in paths.html.read_text(encoding="utf-8")


def test_fitting_commands_keep_compiled_programs_on_disk(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("vitools.cli._enable_cache", lambda: calls.append(1))
    assert main(["fit", "bimodal", "--num-steps", "10", "--num-draws", "100", "--quiet"]) == 0
    assert (
        main(
            ["fit", "bimodal", "--num-steps", "10", "--num-draws", "100", "--quiet", "--no-compilation-cache"]
        )
        == 0
    )
    assert main(["models"]) == 0
    assert calls == [1]


def test_the_cache_goes_where_vitools_cache_dir_says(capsys):
    # conftest points VITOOLS_CACHE_DIR at a throw-away folder and turns the cache on there for the
    # suite: unset here, so that it is the command that sets it.
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        assert main(["fit", "bimodal", "--num-steps", "10", "--num-draws", "100", "--quiet"]) == 0
        assert jax.config.jax_compilation_cache_dir == os.environ["VITOOLS_CACHE_DIR"]
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_the_demo_ends_on_which_fit_to_trust(compare_run):
    """The demo compares a full-rank Gaussian with a flow on the curved banana: the Gaussian reads
    bad (k̂ 1.57 at the default 2000 steps) and the flow good (0.21, W1 0.03 to the exact reference),
    and the command says to trust the flow; at the smaller budget here the Gaussian reads uncertain
    (k̂ 0.87 ± 0.13) or bad."""
    stdout = compare_run[1]
    assert "Trust forward_kl/iaf: it reads good" in stdout
    assert "forward_kl/fullrank does not read good" in stdout
    assert "forward_kl/fullrank reads " in stdout and ": use forward_kl/iaf instead" in stdout
