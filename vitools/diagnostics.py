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

from vitools.convert import DIAGNOSTIC_DRAWS, to_datatree
from vitools.trees import flatten_draws

__all__ = [
    "Diagnostics",
    "diagnose",
    "importance_ess",
    "khat_threshold",
    "log_evidence",
    "psis_khat",
    "verdict",
]

MIN_PSIS_DRAWS = 25  # arviz-stats fits the tail to min(S/5, 3 sqrt(S)) draws and needs at least 5
# Tail weights within 1% of each other (a factor exp(1e-2)) are equal for every purpose here: the
# weights are then bounded and PSIS has no tail to fit, yet its k̂ on such noise swung from 0.3 to
# 1.25 between runs of one reverse-KL fit sitting on one mode of a mixture (measured). Log weights
# from float32 log densities of magnitude ~1e3 carry rounding noise ~1e-4.
FLAT_TAIL_TOL = 1e-2

_MEANINGS = {  # {t}: the threshold at this S
    "good": "k̂ < 0.5: importance weights have finite variance; q is a reliable proposal for p",
    "ok": "0.5 ≤ k̂ ≤ {t}: weights have infinite variance but PSIS-corrected estimates are usable",
    "bad": "k̂ > {t}: q misses part of the posterior's mass; do not trust its draws or IS estimates",
    "undefined": "k̂ undefined (tied tail weights): PSIS could not fit the tail; treat the fit as bad",
}


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


def verdict(khat: float, num_draws: int) -> tuple[str, str]:
    """``("good" | "ok" | "bad", one-line meaning)`` for a k̂ at S draws; NaN k̂ reads "bad"."""
    threshold = khat_threshold(num_draws)
    if math.isnan(khat):
        key = "undefined"
    elif khat > threshold:
        key = "bad"
    else:
        key = "good" if khat < 0.5 else "ok"
    return ("bad" if key == "undefined" else key), _MEANINGS[key].format(t=f"{threshold:.2f}")


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

    ``psis_means``/``psis_sds`` map each scalar parameter (``mu``, ``theta[3]``) to its PSIS-corrected
    posterior mean/sd.
    """

    num_draws: int
    khat: float
    khat_threshold: float
    verdict: str
    meaning: str
    ess: float
    ess_fraction: float
    log_evidence: float
    log_evidence_se: float
    elbo: float
    kl_q_p: float
    kl_p_q: float
    psis_means: dict[str, float]
    psis_sds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (nested dicts for the per-parameter moments), e.g. for JSON."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        params = ", ".join(f"{k} {self.psis_means[k]:.3g}±{self.psis_sds[k]:.2g}" for k in self.psis_means)
        return "\n".join(
            [
                f"k̂ {self.khat:.2f} (threshold {self.khat_threshold:.2f}, S={self.num_draws}): "
                f"{self.verdict}: {self.meaning}",
                f"ESS {self.ess:.1f} ({self.ess_fraction:.1%} of S)",
                f"log evidence {self.log_evidence:.3f} ± {self.log_evidence_se:.3f}  ≥  ELBO {self.elbo:.3f}",
                f"KL(q‖p) ≈ {self.kl_q_p:.3f}   KL(p‖q) ≈ {self.kl_p_q:.3f}",
                f"PSIS-corrected mean±sd: {params}",
            ]
        )


def has_log_weights(tree: Any) -> bool:
    """Whether a DataTree carries ``sample_stats.log_weight`` (vitools fits do; MCMC trees do not)."""
    stats = tree.children.get("sample_stats")
    return stats is not None and "log_weight" in stats.data_vars


def diagnose(
    fit_or_tree: Any, num_draws: int = DIAGNOSTIC_DRAWS, seed: int = 0, warn: bool = True
) -> Diagnostics:
    r"""PSIS diagnostics of a fit, from S draws of q.

    With :math:`\hat Z` from :func:`log_evidence`,

    - ELBO :math:`= \frac1S\sum_s \log w_s \le \log Z`;
    - :math:`\mathrm{KL}(q\|p) = \log Z - \mathrm{ELBO}`, estimated as :math:`\log\hat Z - \mathrm{ELBO}`
      (the unknown constant cancels);
    - :math:`\mathrm{KL}(p\|q) = E_p[\log w] - \log Z`, estimated as
      :math:`\sum_s \tilde w_s \log w_s - \log \hat Z` with PSIS-smoothed normalized weights
      :math:`\tilde w` (self-normalized IS: consistent, trustworthy only when k̂ is below threshold);
    - PSIS-corrected means :math:`\sum_s \tilde w_s z_s` and sds of every scalar parameter;
    - ESS is that of the raw weights (:func:`importance_ess`), the efficiency of q as a proposal.

    Args:
        fit_or_tree: a vitools ``Fit`` (drawn from here) or a DataTree with
            ``sample_stats.log_weight`` (from ``vt.to_datatree(fit)``: pass the tree to diagnose
            the draws that compare and the plots read). MCMC draws have no q, hence no importance
            weights.
        num_draws: draws from q when given a fit (a tree's own draws are used as they are).
        seed: seed of those draws.
        warn: emit a ``UserWarning`` when k̂ is above the threshold (or undefined).

    Raises:
        ValueError: the tree has no ``log_weight`` (an MCMC tree, a dict of draws): there is no q to
            diagnose; an MCMC that has not run.

    Example:
        >>> print(vt.diagnose(fit, num_draws=4000))
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
    label, meaning = verdict(khat, num)
    if warn and label == "bad":
        warnings.warn(
            f"k̂={khat:.2f} > {threshold:.2f}: q misses part of the posterior's mass; importance-weighted "
            "estimates are unreliable and the fit's draws should not be trusted for tail quantities",
            UserWarning,
            stacklevel=2,
        )
    ess = importance_ess(log_w)
    log_z, log_z_se = log_evidence(log_w)
    finite = np.isfinite(log_w)
    elbo = float(np.mean(log_w)) if finite.all() else -math.inf
    weights = np.exp(smoothed)
    kl_p_q = float(np.sum(weights[finite] * log_w[finite]) - log_z)
    labels, values = flatten_draws(tree)
    means = weights @ values
    sds = np.sqrt(np.maximum(weights @ (values - means) ** 2, 0.0))
    return Diagnostics(
        num_draws=num,
        khat=khat,
        khat_threshold=threshold,
        verdict=label,
        meaning=meaning,
        ess=ess,
        ess_fraction=ess / num,
        log_evidence=log_z,
        log_evidence_se=log_z_se,
        elbo=elbo,
        kl_q_p=log_z - elbo,
        kl_p_q=kl_p_q,
        psis_means=dict(zip(labels, map(float, means), strict=True)),
        psis_sds=dict(zip(labels, map(float, sds), strict=True)),
    )
