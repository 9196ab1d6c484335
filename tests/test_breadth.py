"""The new objectives and families reach the user by name: each is registered under the name the
table shows; `vitools compare` runs two of them (batch-and-match and Pathfinder) and names and skips
a combination the library refuses. Each one's own fit is tested in its own file; every combination
on five posteriors is benchmarks/results/divergences.md."""

import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

import vitools as vt
from vitools import validate
from vitools.cli import main
from vitools.families import FAMILIES
from vitools.objectives import OBJECTIVES

ISSUE_13_OBJECTIVES = ("iwae", "chi2", "hybrid", "msc", "batch_and_match")
ISSUE_13_FAMILIES = ("coupling", "mixture")


def test_the_new_names_are_registered():
    assert set(ISSUE_13_OBJECTIVES) <= set(OBJECTIVES) and set(ISSUE_13_FAMILIES) <= set(FAMILIES)
    for name in ISSUE_13_OBJECTIVES:
        assert OBJECTIVES[name]().name == name  # the name the table shows is the name the user gave
    for name in ISSUE_13_FAMILIES:
        assert FAMILIES[name]().name == name


def test_batch_and_match_refuses_another_family_before_the_start(monkeypatch):
    """The refusal names the family and comes before the Laplace start compiles anything."""
    import vitools.start

    def no_start(*args, **kwargs):
        raise AssertionError("the start ran before the family was checked")

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    monkeypatch.setattr(vitools.start, "starting_point", no_start)
    with pytest.raises(validate.ArgumentError, match="coupling"):
        vt.fit(model, objective="batch_and_match", family="coupling", progress=False)


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """One `vitools compare` of the banana: batch-and-match (full-rank only) with two families, one of
    them refused, and Pathfinder (one fit whatever the families). Few steps: the run checks the
    plumbing, not the accuracy (benchmarks/results/divergences.md has that)."""
    out = tmp_path_factory.mktemp("breadth")
    argv = ["compare", "banana", "--objectives", "batch_and_match,pathfinder", "--family",
            "fullrank,coupling", "--num-steps", "60", "--num-draws", "500", "--out", str(out), "--quiet",
            "--csv"]  # fmt: skip
    return out, argv


def test_compare_runs_new_objectives_and_skips_a_refused_pair(compare_run, capsys):
    out, argv = compare_run
    assert main(argv) == 0
    printed = capsys.readouterr()
    rows = {line.split(",")[0] for line in printed.out.splitlines()[1:]}
    assert {"batch_and_match/fullrank", "pathfinder/mixture"} <= rows
    assert "batch_and_match/coupling" not in rows and "pathfinder/coupling" not in rows
    report = (out / "report.md").read_text()
    assert "batch_and_match/coupling not fitted" in report and "pathfinder/mixture" in report
    table = pd.read_csv(out / "table.csv", index_col=0)
    assert list(table.index) == ["batch_and_match/fullrank", "pathfinder/mixture"]
    assert np.all(np.isfinite(table["w1"]))
