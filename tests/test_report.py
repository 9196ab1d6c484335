"""vt.report: the public report, with every form of reference vt.compare takes."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

import vitools as vt
from vitools.convert import to_datatree


def regression(x, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 5.0))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + beta * x, 1.0), obs=y)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = 0.5 - x + rng.normal(size=25)
    fits = {  # init="median" skips the Laplace start (seconds) to keep the test fast
        name: vt.fit(regression, x, y, family=family, num_steps=num_steps, init="median", progress=False)
        for name, family, num_steps in [("full", "fullrank", 400), ("one step", "meanfield", 1)]
    }
    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(regression), num_warmup=200, num_samples=400, progress_bar=False
    )
    mcmc.run(jax.random.key(0), x, y)
    return fits, mcmc


@pytest.mark.parametrize("form", ["key", "mcmc", "tree", "dict"])
def test_report_takes_every_reference_compare_takes(runs, form, tmp_path):
    fits, mcmc = runs
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    reference = {"key": "NUTS", "mcmc": mcmc, "tree": to_datatree(mcmc), "dict": draws}[form]
    entries = {**fits, "NUTS": mcmc} if form == "key" else dict(fits)
    paths = vt.report(entries, reference=reference, out=tmp_path, num_draws=500)
    expected = vt.compare(entries, reference=reference, num_draws=500)
    pd.testing.assert_frame_equal(paths.table.drop(columns="time_s"), expected.drop(columns="time_s"))
    assert paths.table.loc["one step", "w1"] > paths.table.loc["full", "w1"]
    text = paths.markdown.read_text(encoding="utf-8")
    assert "Closest to the reference: **full**" in text and "furthest: **one step**" in text
    assert "**NUTS**" not in text  # the reference is never named closest to itself
    assert "over the reference (shaded)" in text and "no reference given" not in text
    assert paths.html.exists() and (tmp_path / "table.csv").exists()
    assert all(path.exists() for pages in paths.images.values() for path in pages)
    saved = pd.read_csv(tmp_path / "table.csv", index_col=0)
    np.testing.assert_allclose(saved["w1"], paths.table["w1"])


def test_report_takes_one_fit_named_by_its_objective_and_family(runs, tmp_path):
    fit = runs[0]["full"]
    paths = vt.report(fit, reference=runs[1], out=tmp_path, num_draws=500)
    assert list(paths.table.index) == ["reverse_kl/fullrank"] == [fit.name]
    assert paths.markdown.exists()


def test_a_report_of_one_fit_without_a_reference_names_no_reference_and_no_missed_mass(runs, tmp_path):
    """A re-trial's report of one fit read "over the reference (shaded)" with nothing shaded, and
    missed_mass 0 where there is no other fit to miss mass against; the cost's meaning is said."""
    paths = vt.report(runs[0]["full"], out=tmp_path, num_draws=500)
    assert paths.table["missed_mass"].isna().all()
    for text in (paths.markdown.read_text(encoding="utf-8"), paths.html.read_text(encoding="utf-8")):
        assert "(shaded)" not in text and "grey points" not in text and "no reference given" in text
        assert "missed_mass" not in text and "Missed mass." not in text
        assert "Cost.</strong>" in text or "**Cost.**" in text
        assert "`time_s` is seconds: a fit's start" in text or "<code>time_s</code> is seconds" in text


def test_report_refuses_a_reference_key_that_is_not_a_fit(runs, tmp_path):
    with pytest.raises(KeyError, match="reference 'NUTS' is not one of the fits"):
        vt.report(runs[0], reference="NUTS", out=tmp_path, num_draws=500)


def test_report_plots_the_chosen_parameters_and_gives_next_steps(runs, tmp_path):
    paths = vt.report(runs[0], reference=runs[1], out=tmp_path, num_draws=500, var_names=["beta"])
    text = paths.markdown.read_text(encoding="utf-8")
    # the one-step mean-field fit is far off: it reads bad, with something to try
    assert paths.table.loc["one step", "verdict"] == "bad"
    assert "**Next step for one step** (bad): try `" in text
    assert len(paths.images["marginals"]) == 1


def test_which_to_trust_names_the_good_fit_closest_to_the_reference():
    from vitools.advice import which_to_trust

    table = pd.DataFrame(
        {
            "objective": ["forward_kl", "forward_kl", "reverse_kl", "mcmc"],
            "verdict": ["good", "good", "bad", None],
            "khat": [0.3, 0.2, 0.9, np.nan],
            "w1": [0.05, 0.2, 0.01, 0.0],
        },
        index=["iaf", "fullrank", "mode", "NUTS"],
    )
    text = which_to_trust(table)
    assert text.startswith("Trust iaf: it reads good and is the closest of those to the reference (w1 0.05)")
    assert "mode does not read good" in text and "NUTS" not in text
    assert which_to_trust(table.drop(columns="w1")).startswith(
        "Trust fullrank: it reads good with the lowest k̂"
    )
    assert which_to_trust(table.assign(verdict="bad")).startswith("No fit reads good")
    assert "resample" not in which_to_trust(table.assign(verdict="bad"))
    # a bias PSIS corrects (k̂ below threshold): its resampled draws are named usable, not q's
    from vitools.diagnostics import bias_reason

    moved = {"mean": np.array([0.44]), "mean_se": np.array([0.01]), "sd": np.zeros(1), "sd_se": np.zeros(1)}
    _, correctable = bias_reason(["beta"], moved, reliable=True)
    reasons = ["k̂ 0.30 ± 0.05 < 0.70; " + correctable, "k̂ 0.2", "k̂ 0.9", ""]
    text = which_to_trust(table.assign(verdict="bad", reasons=reasons))
    assert text.startswith("No fit reads good: do not use their draws as posterior draws; iaf: PSIS-")


def test_a_next_step_already_in_the_table_points_to_that_fit():
    from vitools.advice import next_steps

    table = pd.DataFrame(
        {
            "objective": ["forward_kl", "forward_kl"],
            "family": ["fullrank", "iaf"],
            "verdict": ["bad", "good"],
            "khat": [1.57, 0.21],
            "khat_se": [0.17, 0.06],
            "reasons": ["k̂ 1.57 ± 0.17 > 0.70: q misses part of the posterior's mass", ""],
            "steps": [2000, 1900],
        },
        index=["forward_kl/fullrank", "forward_kl/iaf"],
    )
    table.attrs["num_draws"] = 10_000
    step = next_steps(table)["forward_kl/fullrank"]
    assert step.options == {} and step.why.startswith("use forward_kl/iaf instead")
    alone = next_steps(table.iloc[:1])["forward_kl/fullrank"]  # without the flow beside it
    assert alone.options == {"family": "iaf"} and alone.as_flags() == "--family iaf"


def test_past_fifty_parameters_no_forward_kl_flow_is_suggested():
    from vitools.advice import next_steps

    table = pd.DataFrame(
        {
            "objective": ["forward_kl", "reverse_kl"],
            "family": ["fullrank", "fullrank"],
            "verdict": ["bad", "bad"],
            "khat": [1.2, 0.3],
            "khat_se": [0.1, 0.1],
            "reasons": ["k̂ 1.20 ± 0.10 > 0.70", "misses ~30% of the posterior mass that 'x' covers"],
            "steps": [2000, 2000],
        },
        index=["f", "r"],
    )
    table.attrs.update(num_draws=10_000, num_params=103)
    steps = next_steps(table)
    # forward KL with a flow is too slow in 103 dimensions, and a reverse-KL flow hurt (measured)
    assert steps["f"].options == {} and "MCMC" in steps["f"].why
    assert steps["r"].options == {"objective": "forward_kl"}
    table.attrs["num_params"] = 3
    assert next_steps(table)["r"].options == {"objective": "forward_kl", "family": "iaf"}


def bimodal_1d_table() -> pd.DataFrame:
    """The comparison of a user's 1-D bimodal report (0.3 N(-3, 0.7) + 0.7 N(2, 1)), its figures
    rounded: a reverse-KL Gaussian on one mode, a chi2 Gaussian and a forward-KL IAF each one hump
    over both modes (good by k̂), and 8-path Pathfinder, a mixture, closest to the reference."""
    missed = "misses ~28% of the posterior mass that 'fwd_iaf' covers (log evidence -0.327 ± 0.018 against"
    table = pd.DataFrame(
        {
            "objective": ["reverse_kl", "chi2", "forward_kl", "pathfinder"],
            "family": ["fullrank", "fullrank", "iaf", "mixture"],
            "steps": [700, 900, 800, 22],
            "khat": [2.47, -1.73, -1.79, -np.inf],
            "khat_se": [0.38, 0.0, 0.0, 0.0],
            "verdict": ["bad", "good", "good", "good"],
            "missed_mass": [0.279, 0.002, 0.0, 0.001],
            "reasons": [f"k̂ 2.47 ± 0.38 > 0.70: q misses part of the posterior's mass; {missed}", "", "", ""],
            "w1": [0.597, 0.314, 0.303, 0.0504],
        },
        index=["reverse", "chi2", "fwd_iaf", "pf8"],
    )
    table.attrs.update(num_draws=10_000, num_params=1)
    return table


def use_instead(step) -> str | None:
    """The fit a "use X instead" step names (None for a step of options)."""
    return step.why.split(" instead")[0].removeprefix("use ") if step.why.startswith("use ") else None


def test_a_step_that_says_use_another_fit_names_the_fit_to_trust():
    from vitools.advice import next_steps, which_to_trust

    table = bimodal_1d_table()
    # the report trusted pf8 and told the reverse-KL fit to use fwd_iaf, the configuration its rule
    # suggested (forward KL + IAF): one hump over both modes, w1 0.30 against pf8's 0.050
    assert which_to_trust(table).startswith("Trust pf8:")
    step = next_steps(table)["reverse"]
    assert step.options == {} and use_instead(step) == "pf8"
    assert "closest of those to the reference (w1 0.0504)" in step.why and "a mixture" in step.why
    # without a reference both rank by k̂: pf8's -inf again
    unreferenced = table.drop(columns="w1")
    assert which_to_trust(unreferenced).startswith("Trust pf8:")
    assert use_instead(next_steps(unreferenced)["reverse"]) == "pf8"
    # in two dimensions, where forward KL + IAF is the step, and the trusted fit is no mixture: the
    # step's configuration reads good beside it, and the step names the trusted fit, not that row
    two_d = table.drop(index="pf8").assign(w1=[0.597, 0.05, 0.303])
    two_d.attrs.update(num_draws=10_000, num_params=2)
    assert which_to_trust(two_d).startswith("Trust chi2:")
    step = next_steps(two_d)["reverse"]
    assert (
        use_instead(step) == "chi2" and "fwd_iaf (forward_kl/iaf, what this step would suggest)" in step.why
    )
    # where the trusted fit is that configuration, the step names it as before
    assert use_instead(next_steps(two_d.assign(w1=[0.597, 0.314, 0.05]))["reverse"]) == "fwd_iaf"


def test_in_one_dimension_several_modes_or_a_bad_gaussian_get_a_mixture_not_an_iaf():
    from vitools.advice import next_steps, which_to_trust

    # none reads good but the Gaussians: nothing to use instead; forward KL + IAF would be one
    # hump again (an IAF is affine in one dimension), a mixture by forward KL holds the modes
    table = bimodal_1d_table().drop(index=["chi2", "fwd_iaf", "pf8"])
    step = next_steps(table)["reverse"]
    assert step.options == {"objective": "forward_kl", "family": "mixture"}
    assert "an IAF is only an affine map" in step.why
    assert which_to_trust(table).startswith("No fit reads good")
    # rule 3: a Gaussian (or, in 1-D, an IAF) whose k̂ is above its threshold
    khat_high = "k̂ 4.99 ± 0.84 > 0.70: q misses part of the posterior's mass"
    for family in ("fullrank", "iaf"):
        one = table.assign(family=family, reasons=khat_high)
        assert next_steps(one)["reverse"].options == {"objective": "forward_kl", "family": "mixture"}
    # the same rows in two dimensions keep the flow
    table.attrs["num_params"] = 2
    assert next_steps(table)["reverse"].options == {"objective": "forward_kl", "family": "iaf"}
    assert next_steps(table.assign(reasons=khat_high))["reverse"].options == {"family": "iaf"}
