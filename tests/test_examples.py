"""The examples run (``--fast``), their printed identities hold, and the docs site builds with --strict.

The examples and the docs build run once, in subprocesses started with the session (conftest's
``background``), into a temporary folder (the committed outputs are the full runs, ``make
docs-examples``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = (
    "kl_vs_cross_entropy", "mode_seeking_vs_mass_covering", "eight_schools", "distill_nuts", "large_data",
    "your_own_model",
)  # fmt: skip
# what each example writes: the concepts page includes these (docs/generated/ holds the full runs)
OUTPUTS = {
    "kl_vs_cross_entropy": (
        "kl_vs_cross_entropy.json", "kl_vs_ce_exact.md", "kl_vs_ce_minibatch.md", "kl_vs_ce_snis.md",
        "kl_vs_ce_dimension.md",
    ),
    "mode_seeking_vs_mass_covering": ("modes.json", "modes.md", "modes_compare.md", "modes.png"),
    "eight_schools": (
        "eight_schools.json", "eight_schools_compare.md", "eight_schools_tau.md",
        "eight_schools_marginals.png",
    ),
    "distill_nuts": ("distill_nuts.json", "distill_nuts.md", "distill_nuts.png"),
    "large_data": ("large_data.json", "large_data.md"),
    "your_own_model": ("your_own_model.json", "your_own_model.md", "your_own_model.png"),
}  # fmt: skip
# folders an example writes next to its outputs and docs/generated/ does not hold: the report of
# vt.report (about 1 MB of HTML with the plots inlined) and the user's files of your_own_model
FOLDERS = {"eight_schools": ("eight_schools_report",), "your_own_model": ("your_own_model",)}
# what `mkdocs build` needs (the docs extra)
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings_handlers.python")
# float64 rounding over a few hundred terms is ~1e-14 (measured: at most 4e-15); 1e-10 is a real gap
EXACT = 1e-10


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def BACKGROUND(folder: Path) -> list:
    """Every example with ``--fast``, then the strict docs build, run in turn from the session's
    start (conftest's ``background``) on the core the rest of the suite leaves idle: the examples
    are about 180 CPU s, mostly each process's compile time (measured)."""
    env = os.environ | {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu", "NO_MKDOCS_2_WARNING": "1"}
    steps = []
    for name in EXAMPLES:
        (folder / name).mkdir()
        command = [
            sys.executable,
            str(ROOT / "examples" / f"{name}.py"),
            "--fast",
            "--out",
            str(folder / name),
        ]
        steps.append((command, dict(cwd=ROOT, env=env, timeout=600)))
    if all(map(importable, DOCS_MODULES)):
        build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder / "site")]
        steps.append((build, dict(cwd=ROOT, env=env, timeout=600)))  # snippet paths are relative to ROOT
    return steps


@pytest.fixture(scope="module")
def runs(background) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """``{example: (its finished --fast process, its --out folder)}``, and ``"docs"``: the build."""
    done = background(__name__)
    out = {name: (result, Path(result.args[-1])) for name, result in zip(EXAMPLES, done, strict=False)}
    if len(done) > len(EXAMPLES):
        out["docs"] = (done[-1], Path(done[-1].args[-1]))
    return out


def check_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("CHECK ")]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_every_printed_check_holds(runs, name):
    result, out = runs[name]
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    checks = check_lines(result.stdout)
    assert len(checks) >= 4, result.stdout
    failed = [line for line in checks if not line.endswith(" ok")]
    assert not failed, "\n".join(failed)
    for filename in OUTPUTS[name]:
        assert (out / filename).stat().st_size > 0, filename


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_write_what_the_docs_include(runs, name):
    """The committed docs/generated/ files are the ones the examples write (by name)."""
    _, out = runs[name]
    written = {path.name for path in out.iterdir()}
    assert written == set(OUTPUTS[name]) | set(FOLDERS.get(name, ()))
    for filename in OUTPUTS[name]:
        assert (ROOT / "docs" / "generated" / filename).is_file(), (
            f"docs/generated/{filename}: run make docs-examples"
        )


def test_cross_entropy_and_kl_differ_by_entropy_with_identical_gradients(runs):
    _, out = runs["kl_vs_cross_entropy"]
    results = json.loads((out / "kl_vs_cross_entropy.json").read_text())
    exact, minibatch, snis = results["exact"], results["minibatch"], results["snis"]
    assert exact["gap"] == pytest.approx(exact["entropy_p"], abs=EXACT)
    assert exact["kl"] > 0.1  # q is far from p: the identity is not checked at a trivial point
    assert exact["max_grad_diff"] <= EXACT
    for label in ("far", "at_p"):
        assert minibatch[label]["max_grad_diff"] <= EXACT
        # each batch's gap is its own entropy estimate: it moves (sd > 0) around H(p); with 50 batches of
        # 32 draws its mean's Monte Carlo sd is gap_sd / sqrt(50), and 4 of those is a 1-in-10^4 miss
        assert minibatch[label]["gap_sd"] > 0.01
        sd_of_mean = minibatch[label]["gap_sd"] / minibatch["num_batches"] ** 0.5
        assert minibatch[label]["gap_mean"] == pytest.approx(exact["entropy_p"], abs=4 * sd_of_mean)
    # at q = p, log p - log q is 0 on every draw: the minibatch KL's value does not move at all
    assert minibatch["at_p"]["kl_value_sd"] <= EXACT
    assert snis["max_diff_forward_kl_vs_hand"] <= EXACT
    assert snis["max_diff_wce_vs_hand"] <= EXACT


def test_snis_weights_collapse_as_the_dimension_grows(runs):
    _, out = runs["kl_vs_cross_entropy"]
    dimension = json.loads((out / "kl_vs_cross_entropy.json").read_text())["dimension"]
    ess = dimension["ess_fraction"]
    # d = 1, 10, 100 with q at 0.8x p's scale: the fraction falls ~0.85, ~0.3, ~0.01 (measured), a
    # factor of 3 or more per step, far beyond its Monte Carlo spread over 20 repeats of 1000 draws
    assert all(a > 2 * b for a, b in zip(ess, ess[1:], strict=False))
    assert dimension["khat"][-1] > dimension["khat"][0]


def test_reverse_kl_sits_on_a_mode_forward_kl_covers_both(runs):
    _, out = runs["mode_seeking_vs_mass_covering"]
    fits = json.loads((out / "modes.json").read_text())["fits"]
    reverse, forward = fits["reverse KL"], fits["forward KL"]
    # the modes are ±(2.5, 2.5), 7.1 apart; 0.5 separates "on a mode" from "between the modes"
    assert min(abs(reverse["mean"][0] - 2.5), abs(reverse["mean"][0] + 2.5)) < 0.5
    assert abs(forward["mean"][0]) < 0.5 and abs(forward["mean"][1]) < 0.5
    # forward KL's q is wide (p's variance is 7.25 per coordinate), reverse KL's has one mode's (1)
    assert forward["cov"][0][0] > 4.0 and reverse["cov"][0][0] < 2.0
    assert reverse["missed_mass"] > 0.3 and forward["missed_mass"] < 0.1
    assert reverse["verdict"] == "bad"


def test_eight_schools_forward_kl_reaches_taus_tail_and_the_report_is_written(runs):
    _, out = runs["eight_schools"]
    results = json.loads((out / "eight_schools.json").read_text())
    fits = results["fits"]
    assert list(fits) == ["reverse KL", "forward KL", "flow (IAF)"]
    # sd of log tau over NUTS's: reverse KL ~0.5-0.7, forward KL ~0.9-1.1 (measured, fast and full)
    assert fits["forward KL"]["log_tau_sd_ratio"] > fits["reverse KL"]["log_tau_sd_ratio"]
    assert results["nuts"]["divergences"] == 0
    report = out / "eight_schools_report"
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "flow (IAF)" in html and "forward KL" in html
    assert (report / "report.md").is_file() and (report / "table.csv").is_file()


def test_distilled_q_is_an_importance_sampler_that_agrees_with_nuts(runs):
    _, out = runs["distill_nuts"]
    results = json.loads((out / "distill_nuts.json").read_text())
    assert results["importance"]["khat"] < results["importance"]["khat_threshold"]
    assert results["fit"]["density_evals_per_step"] == 0
    for row in results["estimates"].values():
        # independent Monte Carlo errors: 4 combined ses is a 1-in-10^4 miss for a correct estimate
        assert abs(row["snis"] - row["nuts"]) < 4 * (row["nuts_se"] ** 2 + row["snis_se"] ** 2) ** 0.5


def test_subsampled_fit_agrees_with_the_full_data_fit(runs):
    _, out = runs["large_data"]
    results = json.loads((out / "large_data.json").read_text())
    assert results["batch_size"] < results["num_rows"]
    # in posterior sds: bench_subsample measured at most 1.0 over 10 seeds at N / B = 244 (here 20)
    assert max(abs(e) for e in results["subsampled_vs_all_rows_sd"]) < 1.0
    assert max(abs(e) for e in results["fits"]["all rows"]["mean_error_sd"]) < 0.2


def test_your_own_model_through_the_command_line_and_python(runs):
    _, out = runs["your_own_model"]
    results = json.loads((out / "your_own_model.json").read_text())
    assert [line.split()[2] for line in results["commands"]] == ["fit", "compare"]
    assert list(results["compare_table"]) == ["reverse_kl/fullrank", "forward_kl/fullrank", "NUTS"]
    # `vitools fit` and vt.fit with the same options and seed are one computation (float32 rounding)
    assert results["api"]["max_mean_difference_cli_vs_api"] < 1e-4
    assert results["api"]["max_draw_difference_after_load"] < 1e-5
    user = out / "your_own_model"
    assert (user / "my_model.py").is_file() and (user / "report" / "report.html").is_file()


def test_docs_build_with_strict(runs):
    for module in DOCS_MODULES:
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")
    result, site = runs["docs"]
    assert result.returncode == 0, result.stderr[-3000:]
    concepts = (site / "concepts" / "index.html").read_text()
    assert "--8&lt;--" not in concepts and "--8<--" not in concepts  # every snippet was included
    committed = json.loads((ROOT / "docs" / "generated" / "kl_vs_cross_entropy.json").read_text())
    assert f"{committed['exact']['kl']:.6f}" in concepts  # the page shows the example's numbers
    assert (site / "generated" / "modes.png").is_file()
    assert 'id="vitools.fit"' in (site / "api" / "index.html").read_text()
