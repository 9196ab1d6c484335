r"""How far a fit can be trusted: a verdict (good, uncertain or bad) with its reasons in words,
and the importance-weighted numbers behind it (:class:`Diagnostics`, :func:`diagnose`).

The verdict reads three signals of S draws from q (Yao, Vehtari, Simpson & Gelman, 2018, "Yes, but
did it work?"): PSIS k̂ with its Monte Carlo sd, the mean-shift check (does PSIS reweighting move
q's means or sds?) and the fit's own convergence. The estimators themselves are
:mod:`vitools.importance`'s.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from scipy.special import logsumexp

from vitools.convert import CONVERGED_ATTR, DIAGNOSTIC_DRAWS, to_datatree
from vitools.importance import (
    importance_ess,
    khat_se,
    khat_threshold,
    log_evidence,
    psis_khat,
    psis_shift,
)
from vitools.trees import flatten_draws, site_shapes

__all__ = ["Diagnostics", "bias_reason", "diagnose", "verdict"]

KHAT_Z = 2.0  # the interval k̂ ± 2 sd; with 1 sd, 4-9 of 26 fits read "good" on one seed and "bad" on another
# A PSIS-reweighted mean (or sd) that moves from q's own by more than this many sds of q, beyond
# twice its Monte Carlo error, says q is biased where it puts its draws (issue 11: "~0.1 sd").
SHIFT_TOL = 0.1
VERDICTS = ("good", "uncertain", "bad")  # in order of severity
# bias_reason's words where PSIS-resampled draws correct q's bias (k̂ below threshold); advice reads them
CORRECTABLE = "PSIS-resampled draws correct it"


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
        return "good", (
            "the largest importance weights are equal (k̂ = -inf): where q puts its draws, q equals p up "
            "to a constant; mass where q never draws (another mode far away) is not seen"
        )
    low, high = khat - KHAT_Z * khat_se, khat + KHAT_Z * khat_se
    if low > threshold:
        return "bad", (
            f"{shown} > {threshold:.2f}: q misses part of the posterior's mass; do not trust its draws "
            "or importance-weighted estimates"
        )
    if high <= threshold:
        if high < 0.5:
            weights = "finite variance"
        elif low >= 0.5:
            weights = "infinite variance, but PSIS estimates are usable"
        else:  # the interval spans 1/2, where the variance stops being finite: say no more than that
            weights = (
                "a variance that may be infinite (k̂'s interval spans 0.5), but PSIS estimates are usable"
            )
        return "good", f"{shown} < {threshold:.2f}: importance weights have {weights}"
    return "uncertain", (
        f"{shown} straddles the threshold {threshold:.2f} at S = {num_draws}: more draws "
        "(num_draws) can decide whether q covers p's tails"
    )


def bias_reason(
    labels: list[str], shift: dict[str, np.ndarray], reliable: bool = True
) -> tuple[str, str] | None:
    """``(label, sentence)`` of the mean-shift check (:func:`psis_shift`), or None when q passes.

    ``"bad"`` when a parameter's mean or sd moves by more than ``SHIFT_TOL`` sds of q beyond twice
    its Monte Carlo sd; ``"uncertain"`` when the move itself exceeds ``SHIFT_TOL`` but not by twice
    its sd (a threshold test on a noisy estimate, read as k̂'s is: on 20 draw seeds of non-centred
    eight schools, forward KL, the strict test alone read 1-5 seeds good and the rest bad). Names
    the parameter that moves most. ``reliable``: k̂ is at or below its threshold, where
    PSIS-resampled draws correct such a bias (the sentence says so only then).
    """
    found: list[tuple[int, float, str, str]] = []  # (severity, size, label, sentence)
    for kind in ("mean", "sd"):
        size, error = np.abs(shift[kind]), shift[f"{kind}_se"]
        size = np.where(np.isnan(size) | np.isnan(error), 0.0, size)
        if not size.size or size.max() <= SHIFT_TOL:
            continue
        excess = size - 2.0 * np.nan_to_num(error)
        j = int(np.argmax(excess)) if excess.max() > SHIFT_TOL else int(np.argmax(size))
        label = "bad" if excess[j] > SHIFT_TOL else "uncertain"
        text = (
            f"PSIS moves the {kind} of {labels[j]} by {_above(size[j], SHIFT_TOL)} sd of q (± {error[j]:.2f})"
        )
        if label == "bad" and reliable:
            text += (
                ": q is biased where it puts its draws (when k̂ is below its threshold, "
                f"{CORRECTABLE}: fit.sample(..., resample='psis'))"
            )
        elif label == "bad":  # a fresh user read the hint above as advice where it did not apply
            text += ": q is biased where it puts its draws (k̂ is above its threshold: resampling cannot help)"
        else:
            text += f": more than {SHIFT_TOL} but within its Monte Carlo error; more draws can tell"
        found.append((VERDICTS.index(label), float(size[j]), label, text))
    return max(found)[2:] if found else None


def _above(value: float, cut: float) -> str:
    """``value`` (> ``cut``) to two decimals, or to as many more as it takes to print a number above
    ``cut``: forward KL's 3-Gaussian mixture on the banana moved the sd of y by 0.1025 sd of q,
    which read "by 0.10 sd of q (± 0.02): more than 0.1 ..." and now reads "by 0.102" (measured)."""
    for digits in range(2, 8):
        text = f"{value:.{digits}f}"
        if float(text) > cut:
            return text
    return repr(float(value))


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Importance-sampling diagnostics of one fit from S draws (see :func:`diagnose`, which
    defines each estimate). Printing it gives a short report.

    Attributes:
        num_draws: S, the draws of q behind every number.
        khat: the Pareto k̂ of the importance weights p/q (Vehtari, Simpson, Gelman, Yao & Gabry
            2024, "Pareto smoothed importance sampling", JMLR).
        khat_se: k̂'s Monte Carlo standard deviation (:func:`khat_se`).
        khat_threshold: the largest k̂ PSIS can be trusted at with S draws,
            ``min(1 - 1/log10 S, 0.7)``.
        verdict: ``"good"``, ``"uncertain"`` or ``"bad"``, the worst of the signals.
        reasons: why, one sentence per signal (k̂, the mean-shift check, convergence).
        ess: the importance effective sample size of the raw weights, in draws (0 to S).
        ess_fraction: ``ess / S``.
        log_evidence: log Ẑ, the importance estimate of log Z (nats).
        log_evidence_se: its Monte Carlo standard error (nats).
        elbo: the ELBO estimate (nats), a lower bound of log Z.
        cubo: the CUBO₂ estimate (nats); ELBO ≤ log Ẑ ≤ CUBO on any draws.
        kl_q_p: KL(q‖p) ≈ log Ẑ - ELBO (nats).
        kl_p_q: KL(p‖q), self-normalized with PSIS-smoothed weights (nats).
        psis_means: scalar parameter (``"mu"``, ``"theta[3]"``) -> its PSIS-corrected posterior
            mean, in the parameter's own (constrained) units.
        psis_sds: scalar parameter -> its PSIS-corrected posterior sd, in the same units.
        mean_shift: scalar parameter -> how far PSIS moves q's mean, in sds of q
            (:func:`psis_shift`).
        sd_shift: scalar parameter -> how far PSIS moves q's sd, ``s_p / s_q - 1``.
        converged: the fit's own convergence flag (None: not recorded, e.g. a tree made
            elsewhere).

    Examples:
        >>> diag = vt.diagnose(fit)
        >>> diag.num_draws, diag.khat_threshold, sorted(diag.psis_means)
        (10000, 0.7, ['alpha', 'beta', 'sigma'])
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
    cubo: float
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
        caveat = "" if self.reliable else f"  (unreliable: k̂ {self.khat:.2f} is above its threshold)"
        evidence = (
            f"ELBO {self.elbo:.3f}  ≤  log evidence {self.log_evidence:.3f} ± {self.log_evidence_se:.3f}"
            f"  ≤  CUBO {self.cubo:.3f}"
        )
        if not self.khat < 0.5:  # E_q[w²] is infinite for k ≥ 1/2: CUBO bounds nothing
            evidence += "  (CUBO: k̂ ≥ 0.5, E[w²] may be infinite)"
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
    - CUBO :math:`= \frac12 \log \frac1S \sum_s w_s^2`, the estimate of the χ upper bound
      :math:`\mathrm{CUBO}_2 = \frac12 \log E_q[w^2] = \log Z + \frac12 \log(1 + \chi^2(p\|q))
      \ge \log Z` (Dieng, Tran, Ranganath, Paisley & Blei 2017), from the same log weights. On
      any draws ELBO ≤ :math:`\log \hat Z` ≤ CUBO (Jensen on the draws), so the three always read
      in order; whether CUBO bounds the *true* log Z is another matter: the estimate is biased low
      (Jensen again: :math:`E \log \hat L \le \log E \hat L`), most where the weights are
      heavy-tailed, and when :math:`k \ge 1/2` :math:`E_q[w^2]` is infinite, so CUBO₂ is infinite
      and any finite estimate falls below it and can fall below log Z. Read
      :math:`[\mathrm{ELBO}, \mathrm{CUBO}]` as an interval for log Z only when k̂ < 0.5 (printing
      says so otherwise); CUBO − log Ẑ then estimates :math:`\frac12\log(1 + \chi^2(p\|q))`;
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

    Returns:
        The verdict, its reasons and the numbers above (:class:`Diagnostics`).

    Raises:
        ValueError: the tree has no ``log_weight`` (an MCMC tree, a dict of draws): there is no q to
            diagnose; an MCMC that has not run; fewer than 25 draws; NaN/+inf log weights.
        TypeError: ``fit_or_tree`` is of a kind :func:`vitools.convert.to_datatree` cannot read.

    Examples:
        >>> diag = vt.diagnose(fit)
        >>> diag.verdict in ("good", "uncertain", "bad"), diag.num_draws
        (True, 10000)
        >>> print(diag)  # the verdict, its reasons and the numbers
        verdict: ...
          - k̂ ...
        ESS ...
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
    moved = {k: v[checked] for k, v in shift.items()}
    biased = bias_reason([labels[j] for j in checked], moved, reliable=bool(khat <= threshold))
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
    cubo = float(0.5 * (logsumexp(2.0 * log_w) - math.log(num)))  # -inf weights are zero: fine
    weights = np.exp(smoothed)
    kl_p_q = float(np.sum(weights[finite] * log_w[finite]) - log_z)

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
        cubo=cubo,
        kl_q_p=log_z - elbo,
        kl_p_q=kl_p_q,
        psis_means=by_label(shift["psis_mean"]),
        psis_sds=by_label(shift["psis_sd"]),
        mean_shift=by_label(shift["mean"]),
        sd_shift=by_label(shift["sd"]),
        converged=converged,
    )
