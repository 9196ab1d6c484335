"""Batch and match's stopping rule (:class:`LossFallRule`), on the per-step losses that
:func:`vitools.engine.optimize` checks on the host, as :mod:`vitools.convergence`'s rules.

Kept next to :mod:`vitools.objectives.score` rather than in :mod:`vitools.convergence`: its
defaults and their measured reasons are those of BaM's loss (B draws a step, its own λ_t schedule),
which only :meth:`vitools.objectives.score.BatchAndMatch.stopping_rule` uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vitools import validate
from vitools.convergence import Convergence, ConvergenceRule

__all__ = ["LossFallRule"]


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
        return verdict._replace(converged=not still, flat=False)
