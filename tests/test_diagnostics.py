"""PSIS k̂, importance ESS, log-evidence and KL estimates on targets with known answers."""

from __future__ import annotations

import dataclasses
import math

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import vitools as vt
from vitools.diagnostics import SHIFT_TOL, Diagnostics, bias_reason, diagnose, verdict
from vitools.importance import importance_ess, khat_threshold, log_evidence, psis_khat


def vi_tree(draws: np.ndarray, log_p: np.ndarray, log_q: np.ndarray):
    """A vitools-layout tree of 1-D draws ``x`` with their log densities."""
    stats = {"log_p": log_p, "log_q": log_q, "log_weight": log_p - log_q}
    return az.from_dict(
        {"posterior": {"x": draws[None]}, "sample_stats": {k: v[None] for k, v in stats.items()}}
    )


def gaussian_case(num_draws: int, loc_q: float, scale_q: float, seed: int = 0):
    """Target p̃(x) = exp(-(x-1)²/2) (Z = √(2π)), proposal q = N(loc_q, scale_q²)."""
    x = np.random.default_rng(seed).normal(loc_q, scale_q, size=num_draws)
    return x, -0.5 * (x - 1.0) ** 2, scipy.stats.norm(loc_q, scale_q).logpdf(x)


def kl_normal(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL(N(m1, s1²) ‖ N(m2, s2²))."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


@pytest.mark.parametrize("k", [0.3, 0.8])
def test_khat_recovers_the_shape_of_exact_pareto_weights(k):
    # w = U^(-k) is exactly Pareto with shape k. With S = 1e5 PSIS fits ~950 tail draws and k̂ has
    # sd ~0.04 (20 seeds), so 0.15 is ~3.5 sd. The wrong sign (psislw(+log w)) fits the bounded
    # left tail instead and returns a negative k̂: this test pins the sign convention.
    u = np.random.default_rng(0).uniform(size=100_000)
    _, khat = psis_khat(-k * np.log(u))
    assert abs(khat - k) < 0.15


def test_khat_is_minus_inf_and_weights_uniform_when_q_equals_p_up_to_a_constant():
    smoothed, khat = psis_khat(np.full(100, 3.7))
    assert khat == -math.inf
    np.testing.assert_allclose(np.exp(smoothed), 1 / 100)
    # float32 rounding noise on an exact q (arviz-stats alone returns NaN here: tied tail values)
    x = np.random.default_rng(1).normal(size=2000)
    log_w = np.float32(-0.5) * x.astype(np.float32) ** 2 - scipy.stats.norm.logpdf(x).astype(np.float32)
    assert psis_khat(log_w)[1] == -math.inf


def test_khat_is_small_for_a_wider_proposal():
    x, log_p, log_q = gaussian_case(2000, loc_q=1.0, scale_q=1.5)  # bounded weights
    assert psis_khat(log_p - log_q)[1] < 0.5


def test_khat_is_large_for_a_narrow_normal_on_a_student_t():
    # Student-t(df=2)^4 target, q = N(0, 0.3²)^4: w grows like exp(x²/0.18), k̂ → 1; over 20 seeds
    # the smallest k̂ was 0.82 > threshold 0.70 at S = 2000.
    x = np.random.default_rng(0).normal(0.0, 0.3, size=(2000, 4))
    log_w = (scipy.stats.t(2).logpdf(x) - scipy.stats.norm(0, 0.3).logpdf(x)).sum(axis=1)
    _, khat = psis_khat(log_w)
    assert khat > khat_threshold(2000)
    tree = vi_tree(x[:, 0], log_w, np.zeros(2000))
    with pytest.warns(UserWarning, match=r"verdict bad: k̂ \d\.\d\d ± \d\.\d\d"):
        assert diagnose(tree).verdict == "bad"


def test_tied_unequal_tail_gives_nan_khat_read_as_bad():
    log_w = np.zeros(1000)
    log_w[:10] = 50.0  # ten draws carry all the weight
    _, khat = psis_khat(log_w)
    assert math.isnan(khat)
    assert verdict(khat, 1000)[0] == "bad"
    assert importance_ess(log_w) == pytest.approx(10.0)


def test_khat_threshold_values():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2 / 3)
    assert khat_threshold(10**6) == 0.7
    with pytest.raises(ValueError, match="num_draws must be at least 2"):
        khat_threshold(1)


def test_verdicts_read_the_khat_interval_against_the_threshold():
    # threshold 0.67 at S = 1000; the interval is k̂ ± 2 sd
    assert verdict(0.2, 1000)[0] == "good" and "finite variance" in verdict(0.2, 1000)[1]
    assert verdict(0.6, 1000, 0.03)[0] == "good" and "infinite variance" in verdict(0.6, 1000, 0.03)[1]
    # k̂ 0.48 ± 0.08: the interval spans 1/2, so neither claim holds; the reason says "may be"
    # (a fresh user read "0.48 < 0.70: infinite variance" as a contradiction)
    assert "may be infinite" in verdict(0.48, 10_000, 0.08)[1]
    assert verdict(0.6, 1000, 0.1)[0] == "uncertain" and "straddles" in verdict(0.6, 1000, 0.1)[1]
    assert verdict(0.9, 1000, 0.1)[0] == "bad" and "0.67" in verdict(0.9, 1000, 0.1)[1]
    assert verdict(0.9, 1000, 0.2)[0] == "uncertain"
    assert verdict(-math.inf, 1000)[0] == "good" and verdict(math.nan, 1000)[0] == "bad"


@pytest.mark.parametrize(
    "size, error, label, shown",
    [
        (0.1025, 0.02, "uncertain", "by 0.102 sd of q (± 0.02): more than 0.1 but within"),  # a user's banana
        (0.10004, 0.01, "uncertain", "by 0.10004 sd of q (± 0.01)"),  # "0.100" and "0.1000" are not > 0.1
        (0.1049, 0.0, "bad", "by 0.105 sd of q (± 0.00): q is biased"),
        (0.4123, 0.03, "bad", "by 0.41 sd of q (± 0.03)"),  # two decimals where they exceed the cut
    ],
)  # fmt: skip
def test_the_shift_sentence_prints_a_move_that_visibly_exceeds_the_cut(size, error, label, shown):
    """A move of 0.1025 sd read "by 0.10 sd of q ...: more than 0.1": the printed number equalled
    the cut it was said to exceed. It gets the decimals it takes to print above SHIFT_TOL."""
    zero = np.zeros(1)
    shift = {"mean": zero, "mean_se": zero, "sd": np.array([size]), "sd_se": np.array([error])}
    found = bias_reason(["y"], shift)
    assert found is not None and found[0] == label and shown in found[1]
    assert float(found[1].split(" by ")[1].split(" ")[0]) > SHIFT_TOL


def test_ess_is_num_draws_for_equal_weights_and_one_for_a_single_weight():
    assert importance_ess(np.full(500, -2.0)) == pytest.approx(500.0)
    log_w = np.full(500, -np.inf)
    log_w[7] = 0.0
    assert importance_ess(log_w) == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-1e3, 1e3, allow_nan=False), seed=st.integers(0, 2**16))
def test_ess_and_khat_are_invariant_to_shifting_log_weights(shift, seed):
    log_w = np.random.default_rng(seed).standard_t(3, size=200)
    assert importance_ess(log_w + shift) == pytest.approx(importance_ess(log_w), rel=1e-9)
    assert psis_khat(log_w + shift)[1] == pytest.approx(psis_khat(log_w)[1], abs=1e-6)


def test_log_evidence_is_within_its_standard_error_of_the_true_normalizer():
    # Z = √(2π) for p̃(x) = exp(-(x-1)²/2); q = N(0.5, 1.3²) gives bounded weights (finite variance),
    # so log Ẑ is asymptotically normal with sd = se; 4 se is a 6e-5 two-sided miss probability,
    # and the Jensen bias se²/2 ~ 1e-4 is negligible next to it.
    x, log_p, log_q = gaussian_case(4000, loc_q=0.5, scale_q=1.3)
    log_z, se = log_evidence(log_p - log_q)
    assert 0 < se < 0.05
    assert abs(log_z - 0.5 * math.log(2 * math.pi)) < 4 * se


def test_log_evidence_is_unbiased_and_its_se_calibrated_over_replications():
    # 400 replications of S = 500: Ẑ/Z must average 1 within 4 standard errors of that mean, and
    # the delta-method se must match the spread of log Ẑ within 15% (sd of a sd over 400 reps ~4%).
    true_log_z = 0.5 * math.log(2 * math.pi)
    estimates = [log_evidence(np.subtract(*gaussian_case(500, 0.5, 1.3, seed)[1:])) for seed in range(400)]
    log_z, se = np.array(estimates).T
    ratio = np.exp(log_z - true_log_z)
    assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert np.std(log_z, ddof=1) == pytest.approx(se.mean(), rel=0.15)


def test_diagnose_kl_estimates_and_psis_moments_on_a_gaussian():
    # p = N(1, 1), q = N(0.5, 1.3²): both KLs known. Over 40 seeds at S = 4000 the estimates' sds were
    # KL(q‖p) 0.007, KL(p‖q) 0.004, PSIS mean 0.017, PSIS sd 0.009 (biases < 0.002): the tolerances
    # below are ≥ 3.5 sd.
    x, log_p, log_q = gaussian_case(4000, loc_q=0.5, scale_q=1.3)
    diag = diagnose(vi_tree(x, log_p, log_q), warn=False)
    assert isinstance(diag, Diagnostics) and diag.num_draws == 4000
    # bounded weights (q wider than p): k̂ is fine, but PSIS moves q's mean 0.5 to 1, by 0.38 sd of q
    assert diag.khat < 0.5 and diag.verdict == "bad" and "PSIS moves the mean of x" in diag.reasons[1]
    assert diag.mean_shift["x"] == pytest.approx(0.5 / 1.3, abs=0.06)
    assert diag.kl_q_p == pytest.approx(kl_normal(0.5, 1.3, 1.0, 1.0), abs=0.03)
    assert diag.kl_p_q == pytest.approx(kl_normal(1.0, 1.0, 0.5, 1.3), abs=0.03)
    assert diag.elbo < diag.log_evidence
    assert diag.psis_means["x"] == pytest.approx(1.0, abs=0.06)  # PSIS corrects q's mean 0.5
    assert diag.psis_sds["x"] == pytest.approx(1.0, abs=0.04)
    assert diag.ess_fraction == pytest.approx(diag.ess / 4000)
    as_dict = diag.to_dict()
    assert as_dict["psis_means"] == {"x": diag.psis_means["x"]} and as_dict["verdict"] == "bad"
    text = str(diag)
    assert "k̂" in text and "verdict: bad" in text and "KL(q‖p)" in text and "x " in text


def test_bad_log_weights_raise():
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        psis_khat(np.array([0.0] * 30 + [np.nan]))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        importance_ess(np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match="every log weight is -inf"):
        log_evidence(np.full(30, -np.inf))
    with pytest.raises(ValueError, match="one-dimensional"):
        importance_ess(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="PSIS needs at least 25 draws, got 10"):
        psis_khat(np.zeros(10))


def test_diagnose_refuses_a_tree_without_log_weights():
    mcmc_like = az.from_dict({"posterior": {"x": np.zeros((2, 50))}})
    with pytest.raises(ValueError, match="no sample_stats.log_weight"):
        diagnose(mcmc_like)


def test_diagnose_refuses_an_mcmc_that_has_not_run():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=10, num_samples=10, progress_bar=False)
    with pytest.raises(ValueError, match=r"the MCMC has no draws: call mcmc\.run"):
        diagnose(mcmc)


def test_diagnose_a_real_fit_of_a_normalized_gaussian_model():
    def model():
        with numpyro.plate("dim", 2):  # scalar parameters: numpyro's vector-loc sampling trips rank promotion
            numpyro.sample("x", dist.Normal(1.0, 2.0))

    fit = vt.fit(model, num_steps=300, progress=False)
    diag = diagnose(fit, num_draws=1000, seed=1)
    # A prior-only model is normalized: log Z = 0, and a full-rank Gaussian q can equal it.
    assert diag.verdict == "good"
    assert abs(diag.log_evidence) < 4 * diag.log_evidence_se + 1e-3
    assert diag.psis_means["x[0]"] == pytest.approx(1.0, abs=0.3)


def test_a_float32_fit_whose_log_joint_is_large_keeps_its_log_weights_apart():
    """A log joint of -85,000 nats (the size of a 200,000-row likelihood) has a float32 spacing of
    0.0078 nats, while a near-exact q's log weights spread over ~0.1: in float32 they took a few
    dozen distinct values, PSIS's tail was tied and the fit read "bad, k̂ undefined" (a user's
    trial, 200,000 rows: 1,061 distinct values of 10,000). The diagnostics evaluate log p in
    float64 at q's float32 draws, so every draw keeps its own weight and the fit reads good."""

    def model():
        with numpyro.plate("dim", 2):
            numpyro.sample("x", dist.Normal(1.0, 2.0))
        numpyro.factor("likelihood_size", -85_000.0)  # moves log Z, not the posterior

    with jax.enable_x64(False):
        fit = vt.fit(model, num_steps=300, progress=False)
        _, log_p, log_q = fit.sample_with_log_densities(1000, seed=1)
        diag = diagnose(fit, num_draws=1000, seed=1)
    assert len(np.unique(log_p - log_q)) == 1000
    assert diag.verdict == "good", diag
    assert fit.params.loc.dtype == np.float32 and log_p.dtype == np.float64
    # log Z = -85,000 exactly (a normalized prior times the factor); its se from 1000 draws of a
    # near-exact q is ~0.01 nats; 4 se and float32's spacing of q's own log density leave 0.05
    assert diag.log_evidence == pytest.approx(-85_000.0, abs=0.05)


def test_the_per_draw_programs_batch_fewer_draws_over_large_data_with_the_same_numbers(monkeypatch, capsys):
    """Memory of the diagnostics' per-draw programs is one batch of draws: over large data the
    batch shrinks (a 10^6-row fit peaked at 12.5 GB with 1000 draws a batch), and the numbers do
    not depend on it."""
    from vitools import batched

    def model(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with numpyro.plate("rows", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    fit = vt.fit(model, x, y=x @ np.array([0.5, -1.0]) + rng.normal(size=300), num_steps=200, progress=False)
    size = sum(np.size(leaf) for leaf in jax.tree.leaves(fit.target))  # the data's 900 and the frame's
    assert batched.draw_batch(fit.target) == batched.DRAW_BATCH  # no need to shrink
    before = fit.sample_with_log_densities(40, seed=2)
    monkeypatch.setattr(batched, "DRAW_NUMBERS", 7 * size)  # as if the data were 10^6 rows: 7 draws a batch
    assert batched.draw_batch(fit.target) == 7
    after = dataclasses.replace(fit).sample_with_log_densities(40, seed=2)  # a copy: nothing kept
    np.testing.assert_allclose(after[0]["w"], before[0]["w"], rtol=1e-12)
    for a, b in zip(after[1:], before[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # and evaluated in pieces with a progress line, as over large data: 6 pieces of 7 draws, the
    # last padded with 2 draws that are cut off
    monkeypatch.setattr(batched, "PROGRESS_NUMBERS", 10 * size)
    pieced = dataclasses.replace(fit).sample_with_log_densities(40, seed=2)
    assert "log p at 40 draws of q" in capsys.readouterr().err
    np.testing.assert_allclose(pieced[0]["w"], before[0]["w"], rtol=1e-12)
    for a, b in zip(pieced[1:], before[1:], strict=True):
        assert a.shape == (40,)
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_diagnostics_draws_are_evaluated_once_per_fit_and_seed(monkeypatch):
    """diagnose, summary, to_datatree and report read the same draws: a fit keeps the latest
    ``(num_draws, seed)``'s densities (over 10^5 rows each evaluation took ~23 CPU s). A key's
    draws, another seed, or a copy of the fit with other parameters evaluate again; what a
    caller does to the arrays returned does not reach the kept ones."""
    from vitools import batched

    calls = []
    evaluate = batched.densities_in_pieces
    monkeypatch.setattr(batched, "densities_in_pieces", lambda *a: calls.append(1) or evaluate(*a))

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("rows", 20):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    fit = vt.fit(model, y=np.linspace(-1.0, 2.0, 20), num_steps=100, progress=False)
    first = vt.diagnose(fit, num_draws=500, warn=False)
    assert len(calls) == 1
    draws, log_p, _ = fit.sample_with_log_densities(500, seed=0)
    log_p[:] = 0.0
    draws["mu"][:] = 0.0
    again = vt.diagnose(fit, num_draws=500, warn=False)
    assert (again.khat, again.elbo, again.psis_means) == (first.khat, first.elbo, first.psis_means)
    assert len(calls) == 1
    vt.diagnose(fit, num_draws=500, seed=1, warn=False)
    fit.sample_with_log_densities(500, key=jax.random.key(0))
    assert len(calls) == 3
    moved = dataclasses.replace(fit, params=jax.tree.map(lambda x: x + 0.1, fit.params))
    assert vt.diagnose(moved, num_draws=500, warn=False).elbo != first.elbo
    assert len(calls) == 4
