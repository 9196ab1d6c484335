r"""Score-based Gaussian VI: batch and match (BaM), which moves q in closed form.

Instead of following a noisy gradient of the ELBO, BaM (Cai, Modi, Pillaud-Vivien, Margossian,
Gower, Blei & Saul 2024, ICML) matches the scores of q to those of the target on a batch of draws
from q. Each step solves, in closed form, a proximal problem: the batch's estimate of the
covariance-weighted score divergence :math:`\mathbb{E}_q \|\nabla\log q - \nabla\log p\|^2_{\mathrm{Cov}(q)}`
plus :math:`\frac{2}{\lambda_t}\mathrm{KL}(q_t\|q)`. It runs through ``vt.fit``'s loop as an
objective with an ``update`` hook (:class:`~vitools.objectives.ObjectiveHooks`): no gradient of
the loss is taken and the optimizer is not used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vitools import validate
from vitools.convergence import Convergence, ConvergenceRule
from vitools.families.base import Family
from vitools.families.gaussian import FullRank
from vitools.objectives.base import importance_info
from vitools.targets import Target

__all__ = [
    "AVERAGE_MAX_STEPS",
    "BatchAndMatch",
    "BatchAndMatchState",
    "LossFallRule",
    "average_gaussians",
    "bam_update",
]


# The running average's weight never falls below 1/AVERAGE_MAX_STEPS: past f (t+1) = 50 it is an
# exponential average over ~50 iterates (lag ~50 steps), a quarter of LossFallRule's 200-step window,
# so at a stop the average lies within the flat stretch the rule saw. Without the floor (f = 0.25)
# radon seed 1, whose q walks out of the funnel's neck until step ~1900, stopped at w1 0.228
# against the iterate's 0.120 (the average reached back ~380 steps into the walk; measured).
AVERAGE_MAX_STEPS = 50


class BatchAndMatchState(NamedTuple):
    """What BaM carries between steps: ``step``, the number of updates applied so far (t, the
    index of the λ_t schedule; a step the loop does not apply does not count), and BaM's own
    iterate q_t = N(``loc``, ``scale_tril`` ``scale_tril``ᵀ), from which each batch is drawn. The
    loop's parameters are the average of the iterates (:class:`BatchAndMatch`'s ``average``), or
    the iterate itself with ``average=0``."""

    step: jax.Array
    loc: jax.Array  # (d,)
    scale_tril: jax.Array  # (d, d), lower triangular


class _Batch(NamedTuple):
    """One step's draws of q and what the target says at them."""

    draws: jax.Array  # (B, d), z_b = μ + L ε_b
    scores: jax.Array  # (B, d), ∇ log p(z_b)
    log_weights: jax.Array  # (B,), log p(z_b) - log q(z_b)
    score_divergence: jax.Array  # (), (1/B) Σ_b ‖ε_b + Lᵀ∇log p(z_b)‖²


def _batch(key: jax.Array, loc: jax.Array, scale_tril: jax.Array, target: Target, num_draws: int) -> _Batch:
    """``num_draws`` draws of N(loc, scale_tril scale_trilᵀ), each with one ``value_and_grad`` of
    the target's log density (one density-and-gradient evaluation per draw)."""
    dim = loc.shape[0]
    log_det = jnp.sum(jnp.log(jnp.diagonal(scale_tril)))

    def one(key):
        eps = jax.random.normal(key, (dim,), loc.dtype)
        draw = loc + scale_tril @ eps
        log_p, score = jax.value_and_grad(target.log_density)(draw)
        log_q = -0.5 * eps @ eps - log_det - 0.5 * dim * jnp.log(2.0 * jnp.pi)
        # ∇log q(z) = -Σ⁻¹(z - μ) = -L⁻ᵀε, so ‖∇log q - ∇log p‖²_Σ = ‖Lᵀ(∇log q - ∇log p)‖² = ‖ε + Lᵀg‖²
        mismatch = eps + scale_tril.T @ score
        return draw, score, log_p - log_q, mismatch @ mismatch

    draws, scores, log_weights, divergences = jax.vmap(one)(jax.random.split(key, num_draws))
    return _Batch(draws, scores, log_weights, jnp.mean(divergences))


def bam_update(
    loc: jax.Array, scale_tril: jax.Array, draws: jax.Array, scores: jax.Array, lam: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""One BaM step from N(μ, Σ = L Lᵀ), a batch of draws and their target scores, and λ > 0.

    Batch step: :math:`\bar z, C` the batch's mean and covariance of the draws, :math:`\bar g,
    \Gamma` those of the scores (both with 1/B). Match step (Cai et al. 2024, eqs. 11-12):

    .. math::
        U = \lambda\Gamma + \tfrac{\lambda}{1+\lambda}\bar g\bar g^\top, \quad
        V = \Sigma + \lambda C + \tfrac{\lambda}{1+\lambda}(\mu-\bar z)(\mu-\bar z)^\top,

    :math:`\Sigma'` the positive-definite solution of :math:`\Sigma' U \Sigma' + \Sigma' = V`
    (the paper writes it :math:`2V(I + (I + 4UV)^{1/2})^{-1}`), and
    :math:`\mu' = \frac{1}{1+\lambda}\mu + \frac{\lambda}{1+\lambda}(\Sigma'\bar g + \bar z)`.

    Computed without forming a matrix square root of the non-symmetric UV, nor a Cholesky that
    could fail: with any factor :math:`V = FF^\top` (from a QR of the stacked factors of V's three
    terms, so V is positive definite by construction), :math:`\Sigma' = F S F^\top` where S solves
    :math:`SMS + S = I`, :math:`M = F^\top U F` (symmetric PSD, a Gram matrix); with
    :math:`M = Q\,\mathrm{diag}(m)\,Q^\top`, :math:`S = Q\,\mathrm{diag}(2/(1+\sqrt{1+4m}))\,Q^\top`.
    The Cholesky factor of Σ' comes from a QR of :math:`(F Q S^{1/2})^\top`. Round-off can make
    an eigenvalue m slightly negative; it is clipped at 0.

    Args:
        loc: ``(d,)`` μ.
        scale_tril: ``(d, d)`` lower-triangular L with a positive diagonal.
        draws: ``(B, d)`` draws of N(μ, Σ).
        scores: ``(B, d)`` :math:`\nabla\log p` at the draws.
        lam: λ, a positive scalar (may be traced).

    Returns:
        ``(loc, scale_tril)`` of the new Gaussian; its factor is lower triangular with a
        non-negative diagonal (a zero on it, from a degenerate batch, makes the family's
        parameters infinite, which the loop's non-finite guard catches).
    """
    num_draws = draws.shape[0]
    mean_draw, mean_score = jnp.mean(draws, axis=0), jnp.mean(scores, axis=0)
    centred_draws, centred_scores = draws - mean_draw[None, :], scores - mean_score[None, :]
    shrink = lam / (1.0 + lam)
    offset = loc - mean_draw
    # V = [L, √(λ/B) Zcᵀ, √(λ/(1+λ)) (μ - z̄)] [...]ᵀ; a QR of the stack's transpose gives V = Rᵀ R.
    stacked = jnp.concatenate(
        [scale_tril.T, jnp.sqrt(lam / num_draws) * centred_draws, jnp.sqrt(shrink) * offset[None, :]], axis=0
    )
    factor = jnp.linalg.qr(stacked, mode="r").T  # F, V = F Fᵀ
    # M = Fᵀ U F = λ (Gc F)ᵀ(Gc F)/B + λ/(1+λ) (Fᵀḡ)(Fᵀḡ)ᵀ, a Gram matrix (symmetric PSD).
    scores_f = centred_scores @ factor
    mean_score_f = factor.T @ mean_score
    gram = (lam / num_draws) * (scores_f.T @ scores_f) + shrink * jnp.outer(mean_score_f, mean_score_f)
    eigvals, eigvecs = jnp.linalg.eigh(0.5 * (gram + gram.T))
    eigvals = jnp.maximum(eigvals, 0.0)
    root_s = jnp.sqrt(2.0 / (1.0 + jnp.sqrt(1.0 + 4.0 * eigvals)))  # s = 2/(1+√(1+4m)) in (0, 1]
    half = (factor @ eigvecs) * root_s[None, :]  # Σ' = half halfᵀ
    upper = jnp.linalg.qr(half.T, mode="r")  # half = Rᵀ Q'ᵀ, so Σ' = Rᵀ R
    signs = jnp.where(jnp.diagonal(upper) < 0, -1.0, 1.0).astype(upper.dtype)
    new_tril = upper.T * signs[None, :]  # flip columns: a non-negative diagonal, same Σ'
    new_loc = loc / (1.0 + lam) + shrink * (new_tril @ (new_tril.T @ mean_score) + mean_draw)
    return new_loc, new_tril


@dataclasses.dataclass(frozen=True)
class LossFallRule:
    r"""Batch and match's stopping rule: the loss has stopped falling when its fitted fall over the
    last ``window`` steps is below ``tol`` nats (a :class:`~vitools.convergence.StoppingRule`).

    The fall :math:`D = -bW` is :class:`~vitools.convergence.ConvergenceRule`'s least-squares slope
    of the per-step losses over the window, here compared with ``tol`` as it is, not as an interval:
    the default rule's equivalence test, :math:`|D| + z s_D <` tol, needs :math:`s_D = \sigma
    \sqrt{12/W}` well under tol, i.e. :math:`W > 12\sigma^2/\text{tol}^2` steps, and one BaM step's
    loss (the negative ELBO on B = 8 draws) has sd σ 0.13-0.15 nats on logistic regression,
    0.2-0.4 on radon and eight schools (measured): 100-600 steps of window, up to 4,800 gradient
    evaluations spent only to show a flat loss is flat, as many as the whole fit. A point estimate
    below tol instead stops on a flat loss within a few checks (each one a coin weighted by
    P(D̂ < tol) ≥ 1/2), and not on a loss that still falls by several standard errors a window:
    radon's BaM fit (B = 8), walking out of the funnel's neck where its Laplace start lies, fell
    0.2-2.0 nats per 100 steps, and with seed 1 it was still in the neck after 1000 steps (w1
    0.64; 0.2 nats per 100 steps against s_D ≈ 0.12): a 100-step window read a fall of -0.002
    at step 400 and stopped there, at w1 0.70; over 200 steps the fall read 0.19-1.7 nats at
    every check to step 1000 (s_D ≈ 0.09; measured): hence 200.
    A rising loss counts as flat: BaM does not descend the ELBO, and its noise is not a trend.

    It also stops, after ``exact_window`` steps, when q matches p: each step's loss is the mean of
    B log weights :math:`\log p(z) - \log q(z)`, so over a window where q holds still its variance
    is :math:`\mathrm{Var}_q[\log w]/B`, and :math:`\tfrac12\mathrm{Var}_q[\log w]` is
    :math:`\mathrm{KL}(q\|p)` to second order as q nears p (the log weights are the constant
    log Z at q = p). The rule reads :math:`\tfrac{B}{2}\widehat{\mathrm{Var}}(\ell)` over the
    last ``exact_window`` losses as that KL (an overestimate when q moves) and stops when it is
    under ``exact_tol`` nats. On gaussian_100, BaM from the Laplace start (B = 8 < d = 100) first
    moves q off (the reading over steps 0-10 is 1.4-2.9 nats) and is exact again by step ~80;
    over steps 50-100 it reads 0.0057 and 0.0034 (seeds 0, 1), over steps 0-100 1.0-1.7, and
    under 0.0002 over any 10 steps after 100. With B = 6 (the default) q returns later: the
    reading over 10-step blocks falls ~2.5x a block, to 0.001 over steps 90-100, and over the
    last 50, 40, 30 steps before step 100 it reads 0.017-0.030, 0.0056-0.0102, 0.0031-0.0062
    (seeds 0, 1, and two compilations, whose float32 round-off BaM's first steps amplify;
    measured): a 50-step window stopped it at step 200 (5.02x fewer evaluations than the
    default fit, on the bar's edge), 40 steps at 100 or 200 by chance, 30 steps at 100.
    Logistic regression, the nearest to Gaussian of the other zoo models, reads 0.070-0.079 at
    its stops (collinear 0.054-0.098, radon 0.32-0.70, eight schools 0.11-7.4; at every check
    over 2000 steps, B = 8, logistic regression and collinear seed 1 read no less than 0.029;
    measured): 0.01 stops only a q
    that matches p to Monte Carlo error, and a 30-step window lets it stop at vt.fit's first check
    (step 100) rather than the fall rule's 200, 600 gradient evaluations sooner at B = 6. A
    30-step variance has a relative se of √(2/29) = 0.26; a q whose reading is 0.05 (the
    least of those models at their stops) reads under 0.01 with the chi-square's probability
    P(χ²₂₉ < 5.8), about 1e-6 a check.

    Sustained fall: neither stop holds while the loss is shown to be still falling, over a
    longer stretch, faster than ``tol`` per window: when the fitted fall over the last
    ``sustained_window`` steps (fewer once the run is shorter, never the first ``burn_in``; only
    when that stretch is longer than ``window``) exceeds ``tol`` x its length / ``window`` by
    more than ``sustained_z`` standard errors, the verdict is "not converged" with that fall.
    This is radon's funnel neck, where BaM's q crawls: from the Laplace start (log sigma_a ≈
    -4.3) seeds 2 and 3 (B = 6) lose 0.05-0.15 nats per 100 steps for all 2000 steps (seed 3:
    133.9 over steps 0-100, 132.2 over 600-700, 131.4 over 1900-2000; out of the neck the loss
    is 122.9), 2-6 times ``tol``'s 0.025, and still w1 0.66-0.71 after 2000 steps; a 200-step
    fall (se ≈ 0.09 nats) read under ``tol`` by chance at steps 1200 and 800 and stopped them
    "converged". Over 600 steps the excess fall read 9.0 and 12.0 se at those stops and 2.1-12
    se at every check where the 200-step rule held on either seed to step 2000. Out of the neck
    the readings at each model's stop (seeds 0-3, B = 6; a stretch longer than 200 steps exists
    from step 400) were -2.1 and -0.7 (collinear seed 3, logistic regression seed 1, both at
    400; every other stop of gaussian_100, logistic regression, collinear and bad_scaling came
    at 100-300), so none moves; on non-centred eight schools 0.1, -0.7 and 2.9 (seeds 0, 2, 3;
    seed 1 stops at 300): seed 3's loss still falls slowly, and its stop moves from 500 to 700. The
    cost is on a fit that has just walked out of the neck: radon seed 0 left it by step ~650
    (loss 124.3 over 400-500, 122.9 from 600) and read 46, 29, 15, 1.2 at steps 800-1100, so it
    stops at 1100 rather than 800 (w1 unchanged). A shorter stretch does not see the crawl:
    over 400 steps seed 0 stops at 900 or 1000 (z 2.5 or 2) but seed 2 reads 1.4 at 1200 and
    seed 3 0.6 at 1500; over 800-1000 steps seed 0 stops at 1300-1500 (measured on the losses of
    2000-step runs, which are those vt.fit's stopping runs see: the same compiled program).
    The rule reads losses only: a q that holds still in a worse place (a flat loss) still
    stops; that is the loss's limit, not this rule's.

    Args:
        window: steps regressed, an integer >= 3.
        tol: the largest fitted fall over the window, nats, that counts as flat; positive.
        min_steps: no stop before this many steps (at least ``window``).
        cooldown: steps run after the rule holds, as a fraction of those done: 0, since BaM's
            λ_t already decays on its own schedule (there is no learning rate to run down).
        batch_size: B, the draws behind each loss (BaM's ``batch_size``), an integer >= 1.
        exact_window: steps whose loss variance estimates KL(q‖p), an integer >= 3.
        exact_tol: the estimate, nats, under which q matches p; positive (0 never stops).
        sustained_window: the longer stretch, steps, an integer > ``window`` (see Sustained fall).
        burn_in: the first steps, left out of that stretch (BaM's first steps, λ_t >> 1, move q
            wholesale), a non-negative integer.
        sustained_z: standard errors by which the fall over the stretch must exceed its share
            of ``tol`` to refuse a stop; positive.

    Raises:
        ValueError, TypeError: an argument is out of range or not a number.
    """

    window: int = 200  # see above: 100 stopped radon in the funnel's neck
    tol: float = 0.05  # nats per window, as ConvergenceRule's default
    min_steps: int = 200
    cooldown: float = 0.0
    batch_size: int = 6  # BatchAndMatch's default
    # see above: with B = 6, 50 stopped gaussian_100 at step 200 (0.017-0.030 nats over steps 50-100)
    exact_window: int = 30
    exact_tol: float = 0.01  # nats of KL(q||p); see above
    # see Sustained fall: 600 steps from step 100, 2 se, kept radon seeds 2-3 in the neck from
    # stopping (readings 2.1-12); out of the neck it moved eight schools seed 3's stop (500 ->
    # 700) and radon's after a walk out of the neck (seed 0: 800 -> 1100)
    sustained_window: int = 600
    burn_in: int = 100
    sustained_z: float = 2.0

    def __post_init__(self):
        self._trend()  # checks window, tol and min_steps
        validate.at_least(self.cooldown, "cooldown", 0.0)
        validate.count(self.batch_size, "batch_size")
        validate.count(self.exact_window, "exact_window", minimum=3)
        validate.at_least(self.exact_tol, "exact_tol", 0.0)
        validate.count(self.sustained_window, "sustained_window", minimum=self.window + 1)
        validate.count(self.burn_in, "burn_in", minimum=0)
        validate.positive(self.sustained_z, "sustained_z")

    def _trend(self) -> ConvergenceRule:
        """The default rule's regression over the same window (its ``check`` gives D and s_D)."""
        return ConvergenceRule(window=self.window, tol=self.tol, min_steps=self.min_steps, cooldown=0.0)

    def check(self, losses: np.ndarray) -> Convergence:
        """The rule on the per-step losses so far, ``(steps,)`` (nats): a :class:`Convergence`
        whose ``decrease`` and ``decrease_se`` are the fitted fall and its standard error (over
        ``exact_window`` steps when q matched p, else over ``window``)."""
        losses = np.asarray(losses, dtype=float)
        if self.exact_kl(losses) < self.exact_tol:
            short = ConvergenceRule(window=self.exact_window, min_steps=self.exact_window, cooldown=0.0)
            verdict = short.check(losses)._replace(converged=True)
        else:
            verdict = self._trend().check(losses)
            if verdict.window == 0:
                return verdict
            verdict = verdict._replace(converged=bool(verdict.decrease < self.tol))
        if verdict.converged:
            falling = self.sustained_fall(losses)
            if falling is not None:
                return falling
        return verdict

    def sustained_fall(self, losses: np.ndarray) -> Convergence | None:
        """The verdict "not converged" over the longer stretch (see Sustained fall) when the loss
        is shown to fall faster than ``tol`` per ``window`` there, else None (also when the run
        is too short for a stretch longer than ``window``, or a loss in it is not finite)."""
        losses = np.asarray(losses, dtype=float)
        stretch = min(self.sustained_window, losses.shape[0] - self.burn_in)
        if stretch <= self.window:
            return None
        verdict = ConvergenceRule(window=stretch, min_steps=stretch, cooldown=0.0).check(losses)
        if verdict.window == 0:
            return None
        excess = verdict.decrease - self.tol * stretch / self.window
        return verdict._replace(converged=False) if excess > self.sustained_z * verdict.decrease_se else None

    def exact_kl(self, losses: np.ndarray) -> float:
        r""":math:`\tfrac{B}{2}\widehat{\mathrm{Var}}` of the last ``exact_window`` losses, nats
        (the KL(q‖p) estimate above); inf before ``exact_window`` steps or on a non-finite loss."""
        tail = np.asarray(losses, dtype=float)[-self.exact_window :]
        if tail.shape[0] < self.exact_window or not np.all(np.isfinite(tail)):
            return np.inf
        return 0.5 * self.batch_size * float(np.var(tail, ddof=1))

    def final(self, losses: np.ndarray) -> Convergence:
        """The verdict after the whole budget: as :meth:`check`, but a 200-step fall over ``tol``
        counts as still falling only when it is also over 2 standard errors (as
        :meth:`ConvergenceRule.final`), while a sustained fall (see Sustained fall) always does.
        A point estimate over ``tol`` is noise one check in several on a flat loss: over the
        2000 steps of radon seeds 5, 8 and 9, out of the neck by step ~1000, it read 0.104 ±
        0.079, 0.089 ± 0.080 and 0.148 ± 0.083 nats, "not converged" as :meth:`check`; in the
        neck (seeds 2, 3) the fall over steps 1400-2000 read 0.49 ± 0.056 and 0.30 ± 0.055
        nats, 6.0 and 2.8 se over its share of ``tol`` (measured, B = 6)."""
        verdict = self.check(losses)
        if verdict.converged or verdict.window == 0:
            return verdict
        falling = self.sustained_fall(losses)
        if falling is not None:
            return falling
        still = verdict.decrease >= self.tol and verdict.decrease > 2.0 * verdict.decrease_se
        return verdict._replace(converged=not still)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BatchAndMatch:
    r"""Batch and match (Cai, Modi, Pillaud-Vivien, Margossian, Gower, Blei & Saul 2024, ICML):
    score-based VI for the full-rank Gaussian family, in closed form (:func:`bam_update`).

    Each step draws a batch :math:`z_1..z_B \sim q_t = N(\mu_t, \Sigma_t)`, evaluates the target's
    score :math:`\nabla\log p(z_b)` at each (one density-and-gradient evaluation per draw), and
    moves q to the minimiser of the batch estimate of the score divergence
    :math:`\mathbb{E}_q\|\nabla\log q - \nabla\log p\|^2_{\Sigma}` plus a KL proximity term
    weighted by :math:`1/\lambda_t`. There is no gradient of a loss and no optimizer: ``vt.fit``'s
    ``learning_rate`` and ``optimizer`` options are not used.

    Step size: the paper's schedule for non-Gaussian targets, :math:`\lambda_t =
    \texttt{learning\_rate}\cdot B d/(t+1)` (t = 0, 1, ... the updates applied; the paper's is
    ``learning_rate = 1``, the default). A large λ trusts the batch (λ → ∞ matches the batch's
    scores exactly); the decay averages out the batch noise on non-Gaussian targets, where each
    batch's fixed point differs. While λ_t >> 1 each step all but replaces q by its batch's
    answer, so the averaging only starts after about ``learning_rate`` x B d steps. Near the
    answer (vt.fit's Laplace start) 0.1 was less noisy: w1 to the reference over steps 40-320
    (seed 0), 0.1 against 1, B = 16: eight_schools_noncentered 0.044-0.056 against 0.042-0.080,
    collinear 0.030-0.033 against 0.035-0.047; logistic regression, B = 8 and 32, 0.040-0.049
    against 0.040-0.071. But far from it q's covariance first shrinks to the local curvature
    and the mean then moves by steps that need λ >> 1: from NumPyro's simple start on logistic
    regression (B = 16), w1 was 0.050 after 80 steps and 0.043 after 320 at 1, still 2.85 and
    2.80 at 0.1 (measured); on radon from vt.fit's (float32) Laplace start, w1 0.76-1.25, it
    was still 0.64-0.68 after 640 steps at 0.1 while 1 reached 0.11-0.14 by step 320-640
    (measured, B = 16); with B = 8, 0.3 left radon at w1 0.52 after 640 steps where 1 and 3
    reached 0.12-0.13 by step 320 (the neck's walk: radon's start sits at log sigma_a = -4.3,
    the reference's mean is -1.4). So the default is the paper's.
    On a Gaussian target the target is a fixed point of every batch's update (for any λ),
    so there is no noise floor; a constant λ converges geometrically there, the decaying one
    more slowly once λ_t < 1.

    Batch size: the default B = 6 rather than 8 or 16. Once λ_t < 1 a step moves q by about
    λ_t/(1+λ_t) of the way to its batch's answer, so q averages about 2t/(``learning_rate`` d)
    batches' answers whatever B: at equal steps, B = 4, 8 and 16 gave the same w1 on logistic
    regression (0.046-0.061 over steps 80-640, lr 1), collinear (0.031-0.044) and non-centred
    eight schools (0.042-0.066), so gradient evaluations scale with B. But B = 4 did not leave
    radon's funnel neck (w1 0.63-0.69 over steps 5-640, learning_rate 1 or 3) where B = 8 and
    16 did by step 320 (w1 0.12-0.13; seed 0, float32, measured). B = 6 leaves it too, later
    (seed 0: a stop at step 800 against 500 at B = 8, w1 0.124 against 0.115; 1100 and 900 under
    the sustained-fall verdict, w1 0.121, 0.120), and costs 3/4 of
    B = 8's evaluations at the same stops elsewhere: as vt.fit runs it (seeds 0, 1; evaluations
    per default-fit evaluations, benchmarks/results/score.md), logistic regression stopped at
    steps 300 and 400 with either B, w1 0.041, 0.041 (B = 8) and 0.041, 0.041 (B = 6) at 5.4x,
    4.3x -> 6.7x, 5.4x; collinear 0.034, 0.034 -> 0.033, 0.036 at 5.2x -> 6.5x; eight schools
    0.052, 0.044 -> 0.053, 0.046 at 11.7x -> 9.8x, 14.5x; gaussian_100 5.7x -> 6.1x, bad_scaling
    12.5x -> 15.1x (both stop at step 100). B = 16 cost more than it saved: 3.0-4.3x on logistic
    regression and collinear, 4.1x and 6.6x on eight schools, although it left radon's neck on
    seed 1 by step ~400 (w1 0.27 at step 300, 0.11 at 500), where B = 8 took until ~1900 and B
    = 6 all 2000 steps (measured).

    Averaging: the fit's q (the loop's parameters) is a running average of BaM's iterates, each
    batch being drawn from the iterate itself (kept in :class:`BatchAndMatchState`): the mean and
    the covariance (:func:`average_gaussians`) with the (t+1)-th iterate weighted 1/(f (t+1))
    (capped at 1), f = ``average``, so iterate t weighs ∝ t^(1/f - 1): about the last f of the
    steps, lagging by f/(1+f) of them (Polyak-Ruppert averaging; Polyak & Juditsky 1992), and
    reaching back no further than about the last :data:`AVERAGE_MAX_STEPS` (exponential from there). At
    its stop (300-400 steps) the iterate still carries batch noise; averaging removes much of
    it without more evaluations. w1 at the same stops, f = 0 -> 0.25 (vt.fit's defaults then, B =
    8, seeds 0 and 1; the default fit's in brackets): logistic regression 0.043, 0.044 -> 0.041, 0.041
    (0.041, 0.039); collinear 0.039, 0.041 -> 0.034, 0.034 (0.032, 0.031); eight schools 0.064,
    0.047 -> 0.052, 0.044 (0.054, 0.054); radon 0.125, 0.120 -> 0.115, 0.119 (0.124, 0.111);
    gaussian_100 and bad_scaling unchanged (measured; benchmarks/results/score.md). f = 0.5
    (without the floor) reached into BaM's first, moving steps on gaussian_100, stopped at step
    100: 0.025 against 0.024; an exponential average over ~50 steps from the start, 0.028.

    Under ``vt.fit``: BaM stops on its own rule (:meth:`stopping_rule`, a fall of the loss under
    ``tol`` nats over 200 steps, or q matching p over 30, unless the loss is shown to be still
    falling over the last 600) rather than on the default one built
    for Adam's 500-step windows, and it skips the start race (``races_start``): the race's 2 x
    100 pilot steps would cost 1,200 evaluations at B = 6, more than BaM's fit, and the simple start it
    races against sent BaM's q far off on radon (w1 8-191 over steps 5-320, B = 4-16, measured).
    Nor does it do without the Laplace start, although a fit from NumPyro's simple start
    (``init="median"``) costs no start evaluations: from there (the exponential average above,
    seed 0, 2000 steps at most) gaussian_100 ended at w1 3.6 after 2000 steps, bad_scaling at 233, logistic
    regression at 0.044 after 2000 (16,000 evaluations); only collinear matched (0.034 after
    300; measured).

    Known failure: on radon (a centred hierarchical model) the float32 Laplace start lies in the
    funnel's neck (log sigma_a ≈ -4.3; the posterior's mean is -1.4), and BaM may not leave it:
    seeds 2 and 3 (B = 6) crawl at 0.05-0.15 nats per 100 steps and end 2000 steps at w1 0.66
    and 0.71, q's mean of log sigma_a at -3.5 and -8.4 (the default fit: 0.118, and 0.925 for
    seed 3, whose default fit sits in the neck too, log sigma_a -10.6; B = 8: seed 3 likewise;
    B = 16: still there after 2000 steps; learning_rate 3 left it on seeds 0-2, not 3;
    measured). Before :class:`LossFallRule`'s sustained-fall verdict they stopped "converged"
    at steps 1200 and 800; now they run the budget, status ``"completed"``, and ``fit.convergence`` says "not
    converged" with the fall over the last 600 steps (0.49 ± 0.056 nats on seed 2).
    ``vt.diagnose`` reads k̂ 0.98 there (0.80 out of the neck, seed 0). In float64 BaM left the
    neck on seeds 0-7 by step 2000 (measured). What was tried to leave it and not kept: (1) a
    wider start, q_0 = N(μ, c² Σ) of the Laplace start: c = 2 let seeds 0 and 2 out sooner
    (stops at 500 and 1100, w1 0.115, 0.120) but not seed 3 (any c up to 3), stopped
    gaussian_100 at step 200 instead of 100 (the bar at 5.02x), and c = 1.5 made non-centred
    eight schools seed 3 non-finite at step 2, c = 4 sent radon seed 0 to w1 351; widening only
    when the first batch's log weights read KL > 1 nat (gaussian_100 untouched) sent radon seed
    2 to w1 1533 (c = 2) or non-finite (c = 3). (2) A stationarity check: the ELBO's
    natural-gradient gain ½ gᵀF⁻¹g, estimated without bias from each batch (whitened mismatches
    r_b = ε_b + Lᵀ∇log p(z_b): ½‖E r‖² + ¼‖E sym(r εᵀ)‖²_F, a U-statistic; it is KL to the ELBO's
    optimum to second order), read 0.04-0.23 nats per 100-step block in the neck (seeds 2, 3,
    steps 300-2000) and 0.03-0.14 out of it (seed 0, steps 600-2000): the neck is nearly
    stationary for the ELBO too, so no local reading tells it apart (measured, B = 6).

    Bias: the fixed point is the Gaussian whose scores best match p's under the score divergence,
    not the reverse-KL optimum of the ELBO fits; they coincide when p is Gaussian. Measured near
    that fixed point (B = 64, 1000 steps, 64,000 evaluations; w1 over 4 redraws of q): collinear
    seed 1 0.032-0.035 against the default fit's 0.031-0.032 over seeds 0-5; radon 0.117-0.122
    (seeds 0, 1) against 0.111-0.141; logistic regression seed 1 0.039-0.041 against 0.039.

    Reported loss (the loop's convergence rule reads it): the negative ELBO estimate
    :math:`-\frac1B\sum_b[\log p(z_b) - \log q_t(z_b)]` on the step's batch, with ``info`` the
    importance ESS and log-evidence estimate of that batch (:func:`importance_info`) and
    ``score_divergence``, the batch estimate :math:`\frac1B\sum_b\|\epsilon_b + L^\top\nabla\log
    p(z_b)\|^2` of the divergence BaM minimises (0 at q = p; :math:`z_b = \mu + L\epsilon_b`).
    All of them describe q_t, before the step's update.

    Args:
        batch_size: draws per step (B), an integer >= 2 (a batch covariance needs two draws).
        learning_rate: scale of the λ_t schedule above, a finite positive number (the paper: 1).
        average: f, the fraction of the steps whose iterates the fit's q averages (see
            Averaging), in [0, 1]; 0: q is BaM's last iterate, as in the paper.

    Raises:
        ValueError: ``batch_size`` is not an integer >= 2; ``learning_rate`` is not positive, NaN
            or infinite; ``average`` is not in [0, 1]; from :meth:`resolve`, the model has
            ``numpyro.param`` sites (BaM moves q only); from :meth:`init_state` (before the loop
            compiles), the family is not :class:`~vitools.families.FullRank`.
        TypeError: ``learning_rate`` or ``average`` is not a number.

    Examples:
        >>> fit = vt.fit(model, objective=BatchAndMatch())  # its own stop: 100-700 steps (radon: 1100-2000)
    """

    batch_size: int = dataclasses.field(default=6, metadata=dict(static=True))  # see Batch size
    learning_rate: float = dataclasses.field(default=1.0, metadata=dict(static=True))  # see Step size
    average: float = dataclasses.field(default=0.25, metadata=dict(static=True))  # see Averaging
    name: str = dataclasses.field(default="batch_and_match", metadata=dict(static=True))
    # The update is quadratic in the scores (their batch covariance): minibatch noise in the
    # scores inflates it, so the fixed point moves; it needs the full-data scores.
    full_joint: ClassVar[bool] = True
    races_start: ClassVar[bool] = False  # see Under vt.fit

    def __post_init__(self):
        object.__setattr__(
            self, "batch_size", validate.count(self.batch_size, "BatchAndMatch batch_size", minimum=2)
        )
        object.__setattr__(
            self, "learning_rate", validate.positive(self.learning_rate, "BatchAndMatch learning_rate")
        )
        average = validate.at_least(self.average, "BatchAndMatch average", 0.0)
        if average > 1.0:
            raise validate.ArgumentValueError(
                f"BatchAndMatch average must be a fraction of the steps in [0, 1], got {self.average!r}",
                "BatchAndMatch average",
            )
        object.__setattr__(self, "average", float(average))

    def num_density_evals(self, dim: int) -> int:
        return self.batch_size

    def stopping_rule(self, tol: float | None) -> LossFallRule:
        """The rule ``vt.fit`` stops on (``converge=True``) or reports (``converge=False``):
        :class:`LossFallRule` with ``tol`` (None: its default, 0.05 nats per 200 steps, and no
        stop while the loss falls faster than that over the last 600 steps)."""
        rule = LossFallRule(batch_size=self.batch_size)
        return rule if tol is None else dataclasses.replace(rule, tol=tol)

    def resolve(self, target: Target) -> BatchAndMatch:
        """Check the target before anything compiles: BaM cannot fit ``numpyro.param`` sites."""
        why = "it moves q in closed form, without gradients"
        validate.no_param_sites(target.param_sites, "batch_and_match", why, "objective")
        return self

    def check_family(self, family: Family) -> None:
        """Refuse any family but :class:`~vitools.FullRank` (``vt.fit`` calls this first)."""
        _check_family(family)

    def init_state(self, key: jax.Array, params: Any, family: Family, target: Target) -> BatchAndMatchState:
        """``step = 0`` and the iterate q_0 = q(``params``); checks the family first (for callers
        of the loop other than ``vt.fit``)."""
        _check_family(family)
        return BatchAndMatchState(jnp.zeros((), jnp.int32), params.loc, family.scale_tril(params))

    def schedule(self, step: jax.Array, dim: int) -> jax.Array:
        """λ_t = learning_rate · B d / (t + 1)."""
        return self.learning_rate * self.batch_size * dim / (step + 1.0)

    def loss(self, key, params, family, target):
        """The negative ELBO estimate and ``info`` that a step reports (its gradient, through the
        reparameterized draws, is the plain ELBO gradient; the loop does not use it)."""
        _check_family(family)
        batch = _batch(key, params.loc, family.scale_tril(params), target, self.batch_size)
        return _report(batch)

    def update(self, key, params, family, target, state, progress):
        """One BaM step: ``(new params, loss, info, new state)``; see :func:`bam_update`. The
        batch is drawn from the iterate in ``state``; the new params are the new iterate's
        average with ``params`` (see Averaging), or the new iterate with ``average=0``."""
        _check_family(family)
        loc, scale_tril = state.loc, state.scale_tril
        batch = _batch(key, loc, scale_tril, target, self.batch_size)
        lam = self.schedule(state.step, loc.shape[0]).astype(loc.dtype)
        new_loc, new_tril = bam_update(loc, scale_tril, batch.draws, batch.scores, lam)
        shown_loc, shown_tril = new_loc, new_tril
        if self.average:
            # The (t+1)-th iterate's weight 1/(f (t+1)) in [1/AVERAGE_MAX_STEPS, 1] (see Averaging).
            weight = jnp.clip(1.0 / (self.average * (state.step + 1.0)), 1.0 / AVERAGE_MAX_STEPS, 1.0)
            weight = weight.astype(loc.dtype)
            shown_loc, shown_tril = average_gaussians(
                params.loc, family.scale_tril(params), new_loc, new_tril, weight
            )
        new_params = family.init(key, target, shown_loc, shown_tril)  # the family's (loc, L) -> params
        loss, info = _report(batch)
        return new_params, loss, info, BatchAndMatchState(state.step + 1, new_loc, new_tril)


def average_gaussians(
    loc_a: jax.Array, tril_a: jax.Array, loc_b: jax.Array, tril_b: jax.Array, weight: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""The Gaussian with mean :math:`(1-w)\mu_a + w\mu_b` and covariance :math:`(1-w)\Sigma_a +
    w\Sigma_b` (the average of the parameters, not the mixture), ``(loc (d,), scale_tril (d, d))``.

    The factor comes from a QR of the stacked :math:`[\sqrt{1-w}L_a, \sqrt{w}L_b]^\top`, so no
    Cholesky of a sum that could fail; its diagonal is made non-negative. ``weight`` w in [0, 1].
    """
    stacked = jnp.concatenate([jnp.sqrt(1.0 - weight) * tril_a.T, jnp.sqrt(weight) * tril_b.T], axis=0)
    upper = jnp.linalg.qr(stacked, mode="r")
    signs = jnp.where(jnp.diagonal(upper) < 0, -1.0, 1.0).astype(upper.dtype)
    return (1.0 - weight) * loc_a + weight * loc_b, upper.T * signs[None, :]


def _report(batch: _Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    return -jnp.mean(batch.log_weights), importance_info(batch.log_weights) | {
        "score_divergence": batch.score_divergence
    }


def _check_family(family: Family) -> None:
    if not isinstance(family, FullRank):
        raise validate.ArgumentValueError(
            f"batch_and_match fits a full-rank Gaussian only (family 'fullrank'), got family "
            f"{getattr(family, 'name', type(family).__name__)!r}: its closed-form update gives a "
            "mean and a full covariance",
            "family",
        )
