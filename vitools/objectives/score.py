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

from vitools import validate
from vitools.families.base import Family
from vitools.families.gaussian import FullRank
from vitools.objectives.base import importance_info
from vitools.objectives.loss_fall import LossFallRule
from vitools.targets import Target

__all__ = [
    "AVERAGE_MAX_STEPS",
    "BatchAndMatch",
    "BatchAndMatchState",
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
    ``learning_rate`` and ``optimizer`` options are refused (the step size is this class's own
    ``learning_rate``).

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

    The funnel's neck: on radon (a centred hierarchical model) the float32 Laplace pick lies in
    the funnel's neck (log sigma_a ≈ -4.3; the posterior's mean is -1.4), not at a mode. From it
    BaM crawled: seeds 2 and 3 (B = 6) at 0.05-0.15 nats per 100 steps, ending 2000 steps at w1
    0.66 and 0.71 (the default fit: 0.118 and 0.130, its start race taking the simple start; B
    = 8: seed 3 likewise; B = 16: still there after 2000 steps; measured), and
    :class:`~vitools.objectives.loss_fall.LossFallRule`'s sustained-fall verdict kept them from
    saying "converged" (0.49 ± 0.056 nats over the last 600 steps on seed 2). BaM, which skips
    the race, now starts where the pick is not at a mode from the best-ELBO candidate of the
    L-BFGS path's early iterations (:func:`vitools.laplace.initial_gaussian`, ``early``; log
    sigma_a -0.5 to -1.2): radon seeds 0-3 stop at 300-500 steps, w1 0.114-0.117, 9.7x, 10.0x,
    8.7x and 12.3x fewer evaluations than the default fit; on fresh seeds 8-11 the 5x bar was
    met on 2 (against 1 from the pick; measured, benchmarks/results/score.md). Every other model
    measured is unchanged (its pick is at a mode).
    From the pick ``vt.diagnose`` read k̂ 0.98 (0.80 out of the neck, seed 0); in float64 BaM left
    the neck on seeds 0-7 by step 2000 (measured). What was tried before and not kept: (1) a
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
    stationary for the ELBO too, so no local reading tells it apart (measured, B = 6). (3) A
    larger ``learning_rate`` (3, 5, 10): the walk out ends sooner (seed 0: step ~600 at 1, ~300
    at 3, ~250 at 10; seed 1: past 1500, ~750, ~500) but the fit still stops at 900 and
    1300-1400 (5.3x; 3.8-4.0x), and seed 2 ran off (w1 69 at 3, non-finite at step 3 at 10).
    (4) NumPyro's simple start (``init="median"``): w1 27.8 and 19.8 after 2000 steps (seeds 0,
    1). (5) Picking among the path's candidates by ELBO or by score divergence on 32 draws: both
    prefer the neck (ELBO -129 to -137 against -175 to -259; score divergence 13-29 against 657
    to 1.6e4, seeds 0-3); hence the early candidates only where the pick is not at a mode.

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
        :class:`~vitools.objectives.loss_fall.LossFallRule` with ``tol`` (None: its default, 0.05
        nats per 200 steps, and no stop while the loss falls faster than that over the last 600
        steps)."""
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
