r"""How far a fit can be trusted: PSIS k̂, importance ESS, log-evidence and KL estimates.

Everything is a function of the importance log weights of S independent draws :math:`z_s \sim q`,

.. math:: \log w_s = \log \tilde p(x, z_s) - \log q(z_s), \qquad
          \bar w_s = w_s / \textstyle\sum_t w_t,

where :math:`\tilde p = Z\, p(z \mid x)` is the unnormalized joint and :math:`Z = p(x)` the evidence.
PSIS (Pareto-smoothed importance sampling; Vehtari, Simpson, Gelman, Yao & Gabry, 2024, JMLR) fits a
generalized Pareto distribution to the largest weights: its shape k̂ says how many moments of w
exist (finite variance iff k < 1/2), and whether importance-weighted estimates can be trusted
(Yao, Vehtari, Simpson & Gelman, 2018, "Yes, but did it work?").

NumPy at the edges: these functions run on host arrays, never under jit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from scipy.special import logsumexp

from vitools.convert import CONVERGED_ATTR, DIAGNOSTIC_DRAWS, to_datatree
from vitools.trees import flatten_draws, site_shapes

__all__ = [
    "Diagnostics",
    "diagnose",
    "importance_ess",
    "khat_se",
    "khat_threshold",
    "log_evidence",
    "psis_khat",
    "psis_resample",
    "psis_shift",
    "verdict",
]

MIN_PSIS_DRAWS = 25  # arviz-stats fits the tail to min(S/5, 3 sqrt(S)) draws and needs at least 5
# Tail weights within 1% of each other (a factor exp(1e-2)) are equal for every purpose here: the
# weights are then bounded and PSIS has no tail to fit, yet its k̂ on such noise swung from 0.3 to
# 1.25 between runs of one reverse-KL fit sitting on one mode of a mixture (measured). Log weights
# from float32 log densities of magnitude ~1e3 carry rounding noise ~1e-4.
FLAT_TAIL_TOL = 1e-2

# k̂'s Monte Carlo uncertainty: the sd of k̂ over KHAT_BOOTSTRAPS resamples of the S draws (with
# replacement). Measured against the spread of k̂ over 20 independent draw seeds, for one fit per zoo
# model and direction at S = 2000-20000 (benchmarks/bench_verdicts.py): the bootstrap sd was 0.8-1.3
# times the seed-to-seed sd (logistic regression S = 2000: 0.131 vs 0.159; funnel 0.155 vs 0.173;
# radon 0.149 vs 0.112), as was the GPD asymptotic sd (1 + k)/sqrt(M) over M tail draws (median
# ratio 0.90-1.03), which, unlike the bootstrap, cannot see a k̂ that hinges on one isolated weight.
# 200 resamples of 10,000 draws take ~0.4 s.
KHAT_BOOTSTRAPS = 200
KHAT_Z = 2.0  # the interval k̂ ± 2 sd; with 1 sd, 4-9 of 26 fits read "good" on one seed and "bad" on another
# A PSIS-reweighted mean (or sd) that moves from q's own by more than this many sds of q, beyond
# twice its Monte Carlo error, says q is biased where it puts its draws (issue 11: "~0.1 sd").
SHIFT_TOL = 0.1
VERDICTS = ("good", "uncertain", "bad")  # in order of severity


def _check_log_weights(log_weights: Any) -> np.ndarray:
    log_w = np.asarray(log_weights, dtype=float)
    if log_w.ndim != 1:
        raise ValueError(f"log_weights must be one-dimensional (S,), got shape {log_w.shape}")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError("log_weights contain NaN or +inf: log p or log q failed at some draws")
    if np.isneginf(log_w).all():
        raise ValueError("every log weight is -inf: no draw of q has positive target density")
    return log_w


def psis_khat(log_weights: Any) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed log weights and the Pareto shape k̂ of :math:`w = \tilde p / q`.

    This is the one place vitools calls arviz-stats' PSIS. ``array_stats.psislw`` is built for LOO,
    where the ratio is :math:`1/p(y_i \mid \theta)`: it smooths the *negated* input, so the call is
    ``psislw(-log_weights)`` (the wrong sign fits the left tail and gave k̂ = 2.22 for a true 0.84).
    ``r_eff = 1`` because draws from q are independent. Log weights of ``-inf`` (draws outside the
    target's support) are weights of zero and stay so.

    Args:
        log_weights: unnormalized log importance weights, shape ``(S,)``, S ≥ 25.

    Returns:
        ``(smoothed, khat)``: smoothed log weights normalized to logsumexp 0, and k̂. k̂ is ``-inf``
        when the tail weights are equal up to ``FLAT_TAIL_TOL`` in log scale (q equal to p up to a
        constant, so w is bounded; arviz-stats would raise or return NaN there), and NaN when ties
        of *unequal* weights make the tail impossible to fit (read as "bad" by :func:`verdict`).

    Raises:
        ValueError: fewer than 25 draws, or NaN/+inf log weights, or all weights zero.
    """
    log_w = _check_log_weights(log_weights)
    if log_w.size < MIN_PSIS_DRAWS:
        raise ValueError(f"PSIS needs at least {MIN_PSIS_DRAWS} draws, got {log_w.size}")
    if _flat_tail(log_w):
        # The largest weights are equal up to rounding: w is bounded (q = p up to a constant), so
        # there is no heavy tail to fit. arviz-stats raises on an exactly flat tail and returns NaN
        # on rounding-level ties (float32 log densities of an exact q), so this case is decided here.
        return log_w - logsumexp(log_w), -math.inf
    from arviz_stats.base import array_stats  # imported on first use: ~1.4 s on its own

    smoothed, khat = array_stats.psislw(-log_w, r_eff=1.0)
    return np.asarray(smoothed), float(khat)


def _flat_tail(log_w: np.ndarray) -> bool:
    """Whether the ~3√S largest log weights (PSIS's tail) lie within ``FLAT_TAIL_TOL`` of each other."""
    finite = np.sort(log_w[np.isfinite(log_w)])
    num_tail = max(5, math.ceil(min(log_w.size / 5, 3 * math.sqrt(log_w.size))))
    tail = finite[-num_tail:]
    return tail.size < 2 or bool(tail[-1] - tail[0] < FLAT_TAIL_TOL)


def khat_threshold(num_draws: int) -> float:
    r"""Sample-size-dependent k̂ threshold :math:`\min(1 - 1/\log_{10} S,\ 0.7)`.

    Above it, PSIS estimates with S draws are unreliable (Vehtari et al., 2024, §3); S = 1000 gives
    2/3, S = 100 gives 1/2.

    Raises:
        ValueError: ``num_draws`` < 2.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be at least 2, got {num_draws}")
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def khat_se(log_weights: Any, num_bootstraps: int = KHAT_BOOTSTRAPS, seed: int = 0) -> float:
    """Monte Carlo sd of k̂ at S draws: its sd over ``num_bootstraps`` resamples of the draws.

    Deterministic for given log weights and ``seed`` (the resampling has its own generator), so a
    fit's verdict depends on its draws only. Resamples whose tail is flat (k̂ = -inf, bounded
    weights) count as k̂ = -1, the lower end of the GPD shapes PSIS fits. 0 when k̂ itself is -inf.
    Bootstrap of a tail estimator: Efron & Tibshirani (1993), ch. 6; see ``KHAT_BOOTSTRAPS`` for
    the measured agreement with the spread over independent draws.

    Args:
        log_weights: unnormalized log importance weights, shape ``(S,)``, S ≥ 25.

    Returns:
        The sd, in units of k̂; NaN when fewer than half of the resamples give a k̂.

    Raises:
        ValueError: as :func:`psis_khat`.
    """
    log_w = _check_log_weights(log_weights)
    if psis_khat(log_w)[1] == -math.inf:
        return 0.0
    rng = np.random.default_rng(seed)
    khats = np.array(
        [psis_khat(log_w[rng.integers(0, log_w.size, log_w.size)])[1] for _ in range(num_bootstraps)]
    )
    khats = np.maximum(khats[~np.isnan(khats)], -1.0)
    return float(np.std(khats, ddof=1)) if khats.size >= num_bootstraps / 2 else math.nan


def verdict(khat: float, num_draws: int, khat_se: float = 0.0) -> tuple[str, str]:
    """``(label, reason)``: what k̂ ± its Monte Carlo sd says of q as a proposal for p.

    With t = :func:`khat_threshold` and the interval k̂ ± ``KHAT_Z`` sd: ``"good"`` when the
    interval lies below t, ``"bad"`` when it lies above (or k̂ is NaN: PSIS could not fit the
    tail), ``"uncertain"`` when it straddles t (more draws can decide: the sd shrinks as S^-1/4).
    PSIS thresholds: Vehtari, Simpson, Gelman, Yao & Gabry (2024), JMLR.
    """
    threshold = khat_threshold(num_draws)
    shown = f"k̂ {khat:.2f} ± {khat_se:.2f}" if khat_se > 0 else f"k̂ {khat:.2f}"
    if math.isnan(khat) or math.isnan(khat_se):
        return (
            "bad",
            "k̂ undefined (tied tail weights): PSIS could not fit the tail; treat q as a bad proposal",
        )
    if khat == -math.inf:
        return "good", "the largest importance weights are equal: q equals p up to a constant (k̂ = -inf)"
    low, high = khat - KHAT_Z * khat_se, khat + KHAT_Z * khat_se
    if low > threshold:
        return "bad", (
            f"{shown} > {threshold:.2f}: q misses part of the posterior's mass; do not trust its draws "
            "or importance-weighted estimates"
        )
    if high <= threshold:
        weights = "finite variance" if high < 0.5 else "infinite variance, but PSIS estimates are usable"
        return "good", f"{shown} < {threshold:.2f}: importance weights have {weights}"
    return "uncertain", (
        f"{shown} straddles the threshold {threshold:.2f} at S = {num_draws}: more draws "
        "(num_draws) can decide whether q covers p's tails"
    )


def psis_shift(values: Any, smoothed_log_weights: Any) -> dict[str, np.ndarray]:
    r"""How far PSIS reweighting moves each parameter's mean and sd from q's own, in sds of q.

    With draws :math:`z_s \sim q` (one column of ``values``), q's moments :math:`m_q, s_q` (plain
    average, ddof 1) and the PSIS ones :math:`m_p = \sum_s \tilde w_s z_s`,
    :math:`s_p^2 = \sum_s \tilde w_s (z_s - m_p)^2`:

    - ``mean``: :math:`(m_p - m_q) / s_q`; ``sd``: :math:`s_p / s_q - 1`;
    - their Monte Carlo sds ``mean_se``/``sd_se``, from :math:`d_s = \tilde w_s - 1/S` (the
      difference of two averages over the same draws): :math:`\sqrt{\sum_s d_s^2 (z_s - m_p)^2} / s_q`
      and, by the delta method, :math:`\sqrt{\sum_s d_s^2 ((z_s - m_p)^2 - s_p^2)^2} / (2 s_p s_q)`.

    When q equals p the weights are equal and every entry is 0. Self-normalized importance
    sampling error: Owen (2013), *Monte Carlo theory, methods and examples*, ch. 9.

    Args:
        values: draws ``(S, P)``, one column per scalar parameter.
        smoothed_log_weights: PSIS-smoothed log weights ``(S,)`` normalized to logsumexp 0.

    Returns:
        ``{"mean", "mean_se", "sd", "sd_se"}``, each ``(P,)``; NaN for a constant column.
    """
    values = np.asarray(values, dtype=float)
    weights = np.exp(np.asarray(smoothed_log_weights, dtype=float))
    num = values.shape[0]
    sd_q = values.std(axis=0, ddof=1)
    sd_q = np.where(sd_q > 0, sd_q, np.nan)
    mean_p = weights @ values
    centred = (values - mean_p) ** 2
    var_p = weights @ centred
    sd_p = np.sqrt(np.maximum(var_p, 0.0))
    d2 = (weights - 1.0 / num) ** 2
    return {
        "mean": (mean_p - values.mean(axis=0)) / sd_q,
        "mean_se": np.sqrt(d2 @ centred) / sd_q,
        "sd": sd_p / sd_q - 1.0,
        "sd_se": np.sqrt(d2 @ (centred - var_p) ** 2) / (2.0 * np.where(sd_p > 0, sd_p, np.nan) * sd_q),
    }


def bias_reason(labels: list[str], shift: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """``(label, sentence)`` of the mean-shift check (:func:`psis_shift`), or None when q passes.

    ``"bad"`` when a parameter's mean or sd moves by more than ``SHIFT_TOL`` sds of q beyond twice
    its Monte Carlo sd; ``"uncertain"`` when the move itself exceeds ``SHIFT_TOL`` but not by twice
    its sd (a threshold test on a noisy estimate, read as k̂'s is: on 20 draw seeds of non-centred
    eight schools, forward KL, the strict test alone read 1-5 seeds good and the rest bad). Names
    the parameter that moves most.
    """
    found: list[tuple[float, str, str]] = []
    for kind in ("mean", "sd"):
        size, error = np.abs(shift[kind]), shift[f"{kind}_se"]
        size = np.where(np.isnan(size) | np.isnan(error), 0.0, size)
        if not size.size or size.max() <= SHIFT_TOL:
            continue
        excess = size - 2.0 * np.nan_to_num(error)
        j = int(np.argmax(excess)) if excess.max() > SHIFT_TOL else int(np.argmax(size))
        label = "bad" if excess[j] > SHIFT_TOL else "uncertain"
        text = f"PSIS moves the {kind} of {labels[j]} by {size[j]:.2f} sd of q (± {error[j]:.2f})"
        if label == "bad":
            text += (
                ": q is biased where it puts its draws (while k̂ is good, PSIS-resampled draws "
                "correct it: fit.sample(..., resample='psis'))"
            )
        else:
            text += f": more than {SHIFT_TOL} but within its Monte Carlo error; more draws can tell"
        found.append((VERDICTS.index(label) + size[j] / 1e6, label, text))
    if not found:
        return None
    _, label, text = max(found)
    return label, text


def importance_ess(log_weights: Any) -> float:
    r"""Importance-sampling effective sample size :math:`1 / \sum_s \bar w_s^2` (absolute, in [1, S]).

    Invariant to adding a constant to every log weight; equals S for equal weights (Kong, 1992).
    """
    log_w = _check_log_weights(log_weights)
    return float(np.exp(-logsumexp(2.0 * (log_w - logsumexp(log_w)))))


def log_evidence(log_weights: Any) -> tuple[float, float]:
    r"""Importance-sampling estimate of :math:`\log Z` and its Monte Carlo standard error.

    :math:`\hat Z = \frac1S \sum_s w_s` is unbiased for :math:`Z = \int \tilde p`, so
    :math:`\log \hat Z` = logmeanexp(log w) (biased low by about se²/2, Jensen). By the delta method,
    :math:`\mathrm{se}(\log \hat Z) \approx \mathrm{sd}(w) / (\sqrt S\, \bar w)`, computed on
    :math:`w / \max w` for stability. It is an upper-tail-sensitive estimate: trust it only when k̂ is
    below threshold (the se itself is unreliable when the variance of w is infinite).

    Returns:
        ``(log_Z_hat, se)``.
    """
    log_w = _check_log_weights(log_weights)
    num_draws = log_w.size
    log_z = float(logsumexp(log_w) - math.log(num_draws))
    scaled = np.exp(log_w - log_w.max())
    se = float(np.std(scaled, ddof=1) / (math.sqrt(num_draws) * scaled.mean())) if num_draws > 1 else math.inf
    return log_z, se


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Importance-sampling diagnostics of one fit from S draws (see :func:`diagnose`).

    ``verdict`` is ``"good"``, ``"uncertain"`` or ``"bad"``; ``reasons`` says why, one sentence per
    signal (k̂, the mean-shift check, convergence). ``psis_means``/``psis_sds`` map each scalar
    parameter (``mu``, ``theta[3]``) to its PSIS-corrected posterior mean/sd; ``mean_shift``/
    ``sd_shift`` to how far PSIS moves q's mean/sd, in sds of q (:func:`psis_shift`). ``converged``
    is the fit's own flag (None: not recorded, e.g. a tree made elsewhere).
    """

    num_draws: int
    khat: float
    khat_se: float
    khat_threshold: float
    verdict: str
    reasons: tuple[str, ...]
    ess: float
    ess_fraction: float
    log_evidence: float
    log_evidence_se: float
    elbo: float
    kl_q_p: float
    kl_p_q: float
    psis_means: dict[str, float]
    psis_sds: dict[str, float]
    mean_shift: dict[str, float]
    sd_shift: dict[str, float]
    converged: bool | None

    @property
    def reliable(self) -> bool:
        """Whether importance-weighted numbers (ESS, log evidence ± se, KL(p‖q), PSIS moments) can be
        trusted: k̂ at or below its threshold (Vehtari et al., 2024)."""
        return bool(self.khat <= self.khat_threshold)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (nested dicts for the per-parameter moments), e.g. for JSON."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        params = ", ".join(f"{k} {self.psis_means[k]:.3g}±{self.psis_sds[k]:.2g}" for k in self.psis_means)
        caveat = "" if self.reliable else "  (unreliable: k̂ above threshold)"
        evidence = (
            f"log evidence {self.log_evidence:.3f} ± {self.log_evidence_se:.3f}  ≥  ELBO {self.elbo:.3f}"
        )
        return "\n".join(
            [f"verdict: {self.verdict}"]
            + [f"  - {reason}" for reason in self.reasons]
            + [
                f"ESS {self.ess:.1f} ({self.ess_fraction:.1%} of S={self.num_draws}){caveat}",
                evidence + caveat,
                f"KL(q‖p) ≈ {self.kl_q_p:.3f}   KL(p‖q) ≈ {self.kl_p_q:.3f}{caveat}",
                f"PSIS-corrected mean±sd: {params}{caveat}",
            ]
        )


def has_log_weights(tree: Any) -> bool:
    """Whether a DataTree carries ``sample_stats.log_weight`` (vitools fits do; MCMC trees do not)."""
    stats = tree.children.get("sample_stats")
    return stats is not None and "log_weight" in stats.data_vars


def worst(*labels: str) -> str:
    """The most severe of verdict labels (``VERDICTS`` order)."""
    return max(labels, key=VERDICTS.index)


def diagnose(
    fit_or_tree: Any, num_draws: int = DIAGNOSTIC_DRAWS, seed: int = 0, warn: bool = True
) -> Diagnostics:
    r"""How far a fit can be trusted, from S draws of q: a verdict with its reasons, and the numbers.

    The verdict is the worst of three signals (Yao, Vehtari, Simpson & Gelman, 2018, "Yes, but did
    it work?"):

    - **k̂** with its Monte Carlo sd (:func:`khat_se`, :func:`verdict`): good, uncertain or bad;
    - **the mean-shift check** (:func:`psis_shift`, :func:`bias_reason`): when PSIS moves a latent
      parameter's mean or sd by more than ``SHIFT_TOL`` sds of q beyond twice its Monte Carlo
      error, q is biased: "bad" even when k̂ is good (a Gaussian shifted by 1 sd has light-tailed
      weights and a low k̂); "uncertain" when the move exceeds ``SHIFT_TOL`` within its error;
    - **convergence**: a fit that used its whole budget with its loss still falling reads at best
      "uncertain" (one too short to assess, under the rule's minimum steps, is only said to be).

    With :math:`\hat Z` from :func:`log_evidence`,

    - ELBO :math:`= \frac1S\sum_s \log w_s \le \log Z`;
    - :math:`\mathrm{KL}(q\|p) = \log Z - \mathrm{ELBO}`, estimated as :math:`\log\hat Z - \mathrm{ELBO}`
      (the unknown constant cancels);
    - :math:`\mathrm{KL}(p\|q) = E_p[\log w] - \log Z`, estimated as
      :math:`\sum_s \tilde w_s \log w_s - \log \hat Z` with PSIS-smoothed normalized weights
      :math:`\tilde w` (self-normalized IS: consistent, trustworthy only when k̂ is below threshold);
    - PSIS-corrected means :math:`\sum_s \tilde w_s z_s` and sds of every scalar parameter;
    - ESS is that of the raw weights (:func:`importance_ess`), the efficiency of q as a proposal.

    Every importance-weighted number is unreliable when k̂ is above its threshold
    (:attr:`Diagnostics.reliable`; printing says so).

    Args:
        fit_or_tree: a vitools ``Fit`` (drawn from here) or a DataTree with
            ``sample_stats.log_weight`` (from ``vt.to_datatree(fit)``: pass the tree to diagnose
            the draws that compare and the plots read). MCMC draws have no q, hence no importance
            weights.
        num_draws: draws from q when given a fit (a tree's own draws are used as they are).
        seed: seed of those draws.
        warn: emit a ``UserWarning`` when the verdict is "bad".

    Raises:
        ValueError: the tree has no ``log_weight`` (an MCMC tree, a dict of draws): there is no q to
            diagnose; an MCMC that has not run; fewer than 25 draws; NaN/+inf log weights.

    Example:
        >>> print(vt.diagnose(fit))
    """
    tree = to_datatree(fit_or_tree, num_draws=num_draws, seed=seed)
    if not has_log_weights(tree):
        raise ValueError(
            "this tree has no sample_stats.log_weight (MCMC draws, a dict of draws or a tree not made "
            "by vitools): importance diagnostics need the fit's q; pass the Fit or vt.to_datatree(fit)"
        )
    log_w = np.asarray(tree["sample_stats"]["log_weight"].transpose("chain", "draw").values).ravel()
    smoothed, khat = psis_khat(log_w)
    num = log_w.size
    threshold = khat_threshold(num)
    se = khat_se(log_w)
    label, reason = verdict(khat, num, se)
    reasons = [reason]
    labels, values = flatten_draws(tree)
    shift = psis_shift(values, smoothed)
    # The check reads latent sites only: a deterministic site can be any nonlinear function of them,
    # whose heavy-tailed sd moved under reweighting where every latent one held (measured on the
    # zoo's stochastic-volatility path h and GP values f at S = 10,000: sd shifts 0.3-0.4).
    latent = site_shapes(tree).latent
    checked = [j for j, label in enumerate(labels) if latent is None or label.split("[")[0] in latent]
    biased = bias_reason([labels[j] for j in checked], {k: v[checked] for k, v in shift.items()})
    if biased is not None and label != "bad":
        label, reasons = worst(label, biased[0]), reasons + [biased[1]]
    converged = tree.attrs.get(CONVERGED_ATTR)
    converged = None if converged is None else bool(converged)
    evidence = tree.attrs.get("vitools_convergence")
    if converged is False:
        label = worst(label, "uncertain")
        reasons.append(f"the optimisation used its whole budget: {evidence}; fit longer (num_steps)")
    elif converged is None and evidence is not None:  # too few steps to tell: said, not held against it
        reasons.append(f"convergence not assessed: {evidence}")
    if warn and label == "bad":
        warnings.warn(f"verdict bad: {'; '.join(reasons)}", UserWarning, stacklevel=2)
    ess = importance_ess(log_w)
    log_z, log_z_se = log_evidence(log_w)
    finite = np.isfinite(log_w)
    elbo = float(np.mean(log_w)) if finite.all() else -math.inf
    weights = np.exp(smoothed)
    kl_p_q = float(np.sum(weights[finite] * log_w[finite]) - log_z)
    means = weights @ values
    sds = np.sqrt(np.maximum(weights @ (values - means) ** 2, 0.0))

    def by_label(column: np.ndarray) -> dict[str, float]:
        return dict(zip(labels, map(float, column), strict=True))

    return Diagnostics(
        num_draws=num,
        khat=khat,
        khat_se=se,
        khat_threshold=threshold,
        verdict=label,
        reasons=tuple(reasons),
        ess=ess,
        ess_fraction=ess / num,
        log_evidence=log_z,
        log_evidence_se=log_z_se,
        elbo=elbo,
        kl_q_p=log_z - elbo,
        kl_p_q=kl_p_q,
        psis_means=by_label(means),
        psis_sds=by_label(sds),
        mean_shift=by_label(shift["mean"]),
        sd_shift=by_label(shift["sd"]),
        converged=converged,
    )


def psis_resample(
    fit: Any, num_draws: int, seed: int | None = None, *, key: Any = None
) -> dict[str, np.ndarray]:
    r"""Draws from q resampled by their PSIS weights: approximate draws from p.

    Draws S = ``num_draws`` proposals :math:`z_s \sim q`, smooths their importance weights with PSIS
    and resamples S of them with replacement, with probabilities :math:`\tilde w_s`, as Stan's and
    PyMC's Pathfinder do (Zhang, Carpenter, Gelman & Vehtari, 2022, JMLR, "Pathfinder"). This
    corrects a q that is off-centre or too narrow where it puts its draws; it cannot create mass
    where q puts none, so when k̂ is above its threshold it warns that resampling will not fix
    the fit. Resampled draws repeat: their effective size is about the importance ESS.

    Args:
        fit: a vitools ``Fit``.
        num_draws: S, proposals and returned draws.
        seed, key: as :meth:`vitools.result.Fit.sample` (give one; None: seed 0).

    Returns:
        Constrained draws: site name → array ``(num_draws, *site shape)`` (deterministic sites too).

    Raises:
        ValueError: ``num_draws`` < 25 (PSIS needs 25), or both ``seed`` and ``key``; NaN/+inf log
            weights.

    Example:
        >>> draws = fit.sample(4000, resample="psis")
        >>> tree = vt.to_datatree(draws)  # a tree of the resampled draws
    """
    import jax

    from vitools import validate

    num_draws = validate.count(num_draws, "num_draws")
    if key is not None and seed is not None:
        raise validate.ArgumentValueError("give seed or key, not both (a key replaces the seed)", "key")
    key = validate.key(key) if key is not None else jax.random.PRNGKey(validate.seed(seed or 0))
    draws, log_p, log_q = fit.sample_with_log_densities(num_draws, key=key)
    smoothed, khat = psis_khat(log_p - log_q)
    threshold = khat_threshold(num_draws)
    if khat > threshold or math.isnan(khat):
        warnings.warn(
            f"k̂={khat:.2f} > {threshold:.2f}: q misses part of the posterior's mass, and resampling "
            "its draws will not fix the fit (it cannot add mass where q puts none)",
            UserWarning,
            stacklevel=3,
        )
    chosen = jax.random.choice(
        jax.random.fold_in(key, 1), num_draws, (num_draws,), replace=True, p=np.exp(smoothed)
    )
    chosen = np.asarray(chosen)
    return {name: np.asarray(value)[chosen] for name, value in draws.items()}
