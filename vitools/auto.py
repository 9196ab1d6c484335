"""Choose for the user: fit the cheap default, read its verdict, escalate until it can be trusted.

:func:`auto_fit` (also ``vt.fit(model, ..., objective="auto", family="auto")``) runs a short ladder
of ``vt.fit`` attempts. After each, every attempt so far is compared
(:func:`vitools.comparison.compare`: k̂ with its interval, the mean-shift check, convergence, and the
mass one attempt misses that another covers), and the next attempt is what
:func:`vitools.advice.next_steps` suggests for the latest one: the rules the report and
``vitools compare`` print as next steps, so the automatic mode does what the report would tell a
user to do, and its path reads in the same words. In short (the measured rules are in
:mod:`vitools.advice`):

1. reverse KL with a full-rank Gaussian (the default fit);
   not trusted -> an 8-path Pathfinder probe (:data:`PROBE_PATHS`), once: its mixture's log
   evidence covers every mode a path found, so the comparison flags a fit on one of several modes
   (bimodal: the probe itself read good, W1 0.034); then, for the latest fit:
2. its loss still falling when the budget ran out -> the same fit with twice the steps;
3. a fit that misses mass another covers, or a Gaussian whose k̂ or mean-shift check fails -> a
   flow, by forward KL where the model is small enough for it (``advice.FLOW_FORWARD_MAX_DIM``):
   the IAF with :data:`FLOW_LAYERS` layers there, given :data:`FLOW_STEPS_FACTOR` times
   ``num_steps``, the coupling flow above;
4. k̂ straddling its threshold, or a PSIS move within its Monte Carlo error (both "more draws can
   decide") -> the same fits diagnosed from four times the draws, once;
5. a suggestion already tried -> the first untried configuration of :data:`FALLBACK`.

Before any of these, for any model: an attempt whose loss or gradient became non-finite (NaN/inf;
``vt.fit`` keeps the parameters of its last finite step, status ``"nonfinite"``) is tried again once,
the same configuration, seed and steps, at :data:`NONFINITE_RATE_FACTOR` times its learning rate. The
failed attempt stays in the path (its status and last finite step said in its line, its gradient
evaluations counted in the budget and its try in ``max_attempts``, its last finite q compared with the
others; a q whose log density is NaN at some of its draws reads "failed", below every verdict), and the
retry says why it was made. Measured (3-D funnel seed 0, one_comp, bball_drive; figures next to
:data:`NONFINITE_RATE_FACTOR`): the retry ran to its end where the first try had turned NaN, so a NaN
no longer ends a configuration early; it did not make the returned fit better (one_comp's returned
W1 went from 0.071 to 0.141: the retry read uncertain with the lowest k̂, and is returned).

Under data subsampling (a model with ``numpyro.plate(..., subsample_size=B)``) the ladder keeps to
what ``vt.fit`` takes there (objectives that need the full-data log joint, ``ObjectiveHooks.full_joint``,
forward KL among them, are refused) and reads a q that is off as a q that has not settled from the
minibatches' noise, which grows like sqrt(N / B), before it reads it as the wrong family (the
subsampled rules of :mod:`vitools.advice`):

1. reverse KL with a full-rank Gaussian (the default fit);
2. the same with twice the steps (more steps once per configuration);
3. a flow by reverse KL (the IAF with :data:`FLOW_LAYERS` layers, :data:`FLOW_STEPS_FACTOR` times
   ``num_steps``), then that flow with twice its steps; then no step is left.

No mode probe there unless ``probe="always"``: Pathfinder runs on all rows, each of its ~5,000
gradient evaluations costing N / B minibatch steps. A larger ``subsample_size`` is the user's to
give (it is in the model): the path's reasons say so. Measured on the 5,000-row logistic regression
of a user's trial (B = 256, seeds 0-2; the largest PSIS mean move): full rank read bad at 1000 steps
(0.44/0.64/0.19 sd), good/bad/bad at 2000 (-/0.22/0.22), bad/uncertain/bad at 4000 (0.22/0.10/0.12);
B = 1024 at 1000 steps good/bad/uncertain (-/0.19/0.10); the IAF by reverse KL at 2000 steps
uncertain/bad (0.11/0.28, seeds 0/1): the noise, not the family. Any configuration ``vt.fit``
refuses all the same (a :class:`vitools.validate.ArgumentError` from its checks, before anything
runs) is recorded as ``"refused"`` with its message, not counted in ``max_attempts``, and the
ladder goes on from the fits so far (a user's ladder on a subsampling model crashed at its fourth
attempt, forward KL, losing three fits).

It stops at the first attempt that reads good, when no step is left to try, after ``max_attempts``,
or when the budget (``max_grad_evals``, ``max_time``) is spent, and returns the best attempt (good
before uncertain before bad, then a fit before the probe, then the lowest k̂) with the path it took in
:attr:`Fit.auto`.

Measured on the zoo and the posteriordb corpus: ``benchmarks/bench_auto.py``
(``benchmarks/results/auto.md``): of 19 posteriors, auto read good where the default did not on
banana, bimodal and one corpus regression, and improved W1 without a trusted fit on radon
(0.131 -> 0.058), a GP Poisson model and a pharmacokinetic ODE; k̂ cannot see a wrong local mode
(Lotka-Volterra read good at W1 7.9). Verdicts of a path that asked for more draws are those at
:attr:`AutoPath.num_draws` draws. Those figures predate :data:`FLOW_LAYERS`, :data:`FLOW_STEPS_FACTOR`
and the draws for an uncertain PSIS move; with them (measured by ``vt.auto_fit`` and ``vt.compare`` at
each seed; ``bench_auto.py --models funnel --seeds 0,1,2 --out auto_funnel`` reruns it): the
10-D funnel ends on forward KL with the 4-layer IAF at seeds 0/1/2, k̂ 0.41 (good) / 0.48 (good, from
40,000 draws) / 0.59 (uncertain from 40,000 draws: an sd move of 0.19 ± 0.09), W1 0.031/0.029/0.034
(the default's 0.255; before, 0.040 "uncertain" at seed 0), 3.2e5/4.0e5/5.2e5 gradient
evaluations; the banana (seed 0) ends good on reverse KL with the 4-layer IAF, k̂ 0.30, W1 0.037,
1.2e5 gradient evaluations (before: good on forward KL with the 2-layer IAF, W1 0.030, 1.3e5).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from vitools import validate
from vitools.advice import FLOW_FORWARD_MAX_DIM, next_steps
from vitools.autopath import Attempt, AutoPath
from vitools.comparison import compare
from vitools.convert import DIAGNOSTIC_DRAWS, to_datatree
from vitools.diagnostics import VERDICTS
from vitools.families.flow import IAF
from vitools.objectives import get_objective, objective_hooks
from vitools.pathfinder import max_grad_evals as pathfinder_max_grad_evals
from vitools.result import Fit
from vitools.targets import Target

__all__ = ["FALLBACK", "NONFINITE_RATE_FACTOR", "PROBE_PATHS", "Attempt", "AutoPath", "auto_fit"]

# Tried in this order when advice's suggestion was tried already (a flow by forward KL failed, say):
# the flow by the other direction, then a mixture by forward KL (several modes).
FALLBACK = (("forward_kl", "flow"), ("reverse_kl", "flow"), ("forward_kl", "mixture"))
# Paths of the mode probe run after a first fit that is not trusted (vitools.pathfinder). Paths start
# at NumPyro's uniform(-2, 2) init: on the zoo's bimodal target each path ends at one of the two modes,
# so 4 paths all miss one mode with probability 1/8 (seen at seed 0 with x64: the probe read bad at
# k̂ 0.88) and 8 paths with 1/128; 8-path Pathfinder reads good there at seeds 0-2
# (tests/test_pathfinder.py), 4 paths cost 5,218 gradient evaluations against the default fit's 14,705.
PROBE_PATHS = 8
# Where k̂ straddles its threshold, advice asks for 4x the draws; once only (each comparison draws every
# attempt again, and 160,000 draws of a flow took longer than the fits).
MAX_DRAWS_FACTOR = 4
# The automatic mode's IAF (for "iaf" at any step of the ladder): 4 layers, not the family's default 2.
# With the coordinates reversed between layers, only every other layer conditions the later
# coordinates on the first, and each scales a coordinate by at most e^3 up, e^-5 down (its soft
# clip): on the 10-D funnel (x's scale exp(v / 2) spans e^±4.5 over v's ±3 sd) 2 layers read k̂
# 0.68/0.83/0.66 and 4 layers 0.41/0.62/0.49 at seeds 0/1/2, 10^4 draws, W1 0.040/0.042/0.048 ->
# 0.031/0.033/0.037, both by forward KL at FLOW_STEPS_FACTOR x 2000 steps; 6 layers (2000 steps)
# read no better than 4: 0.55/0.66 at seeds 0/1 (measured).
FLOW_LAYERS = 4
# An IAF attempt's steps are this multiple of ``num_steps``: its networks start at the identity and
# learn the bend from noisy importance-weighted gradients. On the 10-D funnel, forward KL with the
# 4-layer IAF, 2000 -> 4000 steps: k̂ 0.58/0.49/0.64 -> 0.41/0.62/0.49 at seeds 0/1/2; the same
# gradient evaluations spent on 256 draws a step for 2000 steps instead read 0.46/0.62 at seeds
# 0/1 (measured). The coupling flow (above FLOW_FORWARD_MAX_DIM) keeps num_steps: not measured there.
FLOW_STEPS_FACTOR = 2
# An attempt whose loss turned non-finite is tried again once at this times its learning rate (module
# docstring). A half: Adam's step is about the rate on every coordinate, so half the rate halves the
# largest move that sent q's draws where log p or log q is NaN. Measured, forward KL + 4-layer IAF at
# auto_fit's defaults, seed 0: a 3-D funnel (v ~ N(0, 3), x[2] ~ N(0, exp(v / 2))) turned NaN after step
# 1318 at rate 0.1 and ran its 4000 steps at 0.05 (uncertain, k̂ 0.60 at 40,000 draws; without the retry
# the ladder returned a bad reverse KL + IAF fit, k̂ 0.51); one_comp NaN after step 282 at 0.1, converged
# at step 800 at 0.05 (uncertain, k̂ 0.42, W1 0.141); bball_drive NaN after step 585 at 0.083, converged
# at step 3000 at 0.042 (uncertain, k̂ 0.55, W1 0.060). Whole ladders: results/auto_nonfinite.md.
NONFINITE_RATE_FACTOR = 0.5
# An attempt the budget leaves fewer steps than this is not started: it could not converge
# (the convergence rule reads the last 500 steps; vitools.convergence).
MIN_STEPS = 500


def auto_fit(
    model: Callable | Target,
    *model_args: Any,
    max_grad_evals: int | None = 1_000_000,
    max_time: float | None = None,
    max_attempts: int = 5,
    probe: str = "untrusted",
    num_steps: int = 2000,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int | None = None,
    key: jax.Array | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Fit:
    """Fit the default, then escalate objective, family and budget until the fit reads good.

    The rules are in the module docstring (:mod:`vitools.auto`); each attempt is a ``vt.fit`` with
    the same seed, diagnosed from ``num_draws`` draws of q with that seed.

    Args:
        model: as :func:`vitools.fit`.
        *model_args: as :func:`vitools.fit`.
        **kwargs: as :func:`vitools.fit`.
        model_kwargs: as :func:`vitools.fit`.
        max_grad_evals: the budget in log-density gradient evaluations, starts included (None: no
            cap). An attempt is started only with at least 500 steps' worth left (``MIN_STEPS``), its
            steps cut to what is left after its start; a start's cost is known after it ran, so
            the first attempt reserves its start's worst case (L-BFGS with full line searches, a
            Hessian, the start race's pilots: ``2500 + 9 dim + 200 x`` the objective's draws), and
            the probe runs only when its worst case fits (:func:`vitools.pathfinder.max_grad_evals`).
            The total can pass the cap only by what a start costs beyond its reserve.
        max_time: the budget in seconds of wall time, checked between attempts (None: no cap); an
            attempt is not started once the time is spent, or when the last attempt's pace says
            it would not end in time. An attempt in progress is not cut.
        max_attempts: at most this many fits (the probe included; a configuration ``vt.fit``
            refused is not a fit).
        probe: when to run the mode probe (8-path Pathfinder): ``"untrusted"`` after a first
            fit that does not read good (not for a model that subsamples data: the probe runs on
            all rows); ``"always"`` after the first fit whatever it reads (a good verdict cannot
            see a mode far from q's draws: k̂ reads q's draws only); ``"never"``.
        num_steps: the first attempt's budget of steps (later ones double it where advised).
        num_draws: draws of q per diagnosis (the k̂ threshold depends on it).
        seed: as :func:`vitools.fit` (one seed for every attempt).
        key: as :func:`vitools.fit`.
        progress: each fit's progress, and a line per attempt on stderr.

    Returns:
        the best attempt's :class:`~vitools.result.Fit`, with ``fit.auto`` (:class:`AutoPath`)
            holding every attempt: its configuration, verdict, gradient evaluations and time.

    Raises:
        vitools.validate.ArgumentError: an option is invalid (the message names it), or
            ``max_grad_evals`` cannot pay for the first fit (the message says what would).
        ValueError: ``max_time`` was spent before the first fit started.
        FloatingPointError: every attempt failed at its first step (an attempt whose loss turns
            non-finite later is recorded with its last finite parameters, status ``"nonfinite"``,
            and tried again once at :data:`NONFINITE_RATE_FACTOR` times its learning rate).
        Exception: any error of :func:`vitools.fit` on the first attempt (a bad model or
            arguments); a later attempt's refusal (:class:`vitools.validate.ArgumentError`) is
            recorded in the path instead (status ``"refused"``).

    Examples:
        >>> fit = vt.auto_fit(model, x, y=y, max_grad_evals=300_000)
        >>> print(fit.auto)
    """
    from vitools.fitting import target_of  # fitting routes objective="auto" here: imported on use

    max_grad_evals = None if max_grad_evals is None else validate.count(max_grad_evals, "max_grad_evals")
    max_time = None if max_time is None else validate.positive(max_time, "max_time")
    max_attempts = validate.count(max_attempts, "max_attempts")
    num_steps = validate.count(num_steps, "num_steps")
    num_draws = validate.count(num_draws, "num_draws")
    probe = validate.choice(probe, "probe", ("untrusted", "always", "never"))
    seed = 0 if seed is None and key is None else seed
    key = validate.seed_or_key(seed, key)
    target = target_of(model, model_args, kwargs, model_kwargs)
    _check_budget(max_grad_evals, target.dim, num_steps)
    path = _Path(num_draws, 0 if seed is None else seed, progress)
    tic = time.perf_counter()
    # (objective, family, steps, why, learning-rate factor: 1 but on a non-finite attempt's retry)
    config = ("reverse_kl", "fullrank", num_steps, "the default fit", 1.0)
    tried: set[tuple[str, str, int]] = set()
    stopped, probed, step, current = "attempts", False, None, None
    # Under data subsampling the mode probe (Pathfinder) runs on all rows: each of its ~5,000
    # gradient evaluations costs N / B minibatch steps; it runs there only when asked ("always").
    probing = probe == "always" or (probe == "untrusted" and not target.subsamples)
    while path.num_fits < max_attempts:
        objective, family, wanted, why, factor = config
        tried.add((objective, family, wanted))
        steps, stop = _afford(wanted, objective, target.dim, path.attempts, max_grad_evals, max_time, tic)
        if stop is not None:
            stopped = stop
            break
        name = path.next_name(f"{objective}/{family}")
        rate = factor * _default_rate(objective, family, target.dim)
        path.say(f"{name}, {steps} steps, learning rate {rate:.3g} ({why})")
        given = None if factor == 1 else rate  # None: vt.fit's default (the same rate)
        try:
            fit, seconds = _attempt(target, objective, family, steps, key, progress, given)
        except validate.ArgumentError as refusal:
            if current is None:  # the first fit: the user's options are refused, nothing is lost
                raise
            path.refuse(name, objective, family, steps, why, refusal)  # the fits so far are kept
            config = _next_config(step, current, tried, target, num_steps)
            if config is None:
                stopped = "no step left"
                break
            config = (*config, 1.0)
            continue
        current = path.add(name, fit, objective, family, steps, why, seconds, rate)
        retry = current.status == "nonfinite" and factor == 1  # once: a failed retry goes on as below
        step = None if path.trusted or retry else path.advice(name)  # more draws may decide it reads good
        if path.trusted and (probed or probe != "always"):
            stopped = "trusted"
            break
        if retry:  # before the probe and the advice: the configuration has not had its try yet
            config = (objective, family, wanted, _retry_why(current), NONFINITE_RATE_FACTOR)
            continue
        if (
            not probed
            and probing
            and name in path.fits  # a fit of no step has nothing to compare the probe with
            and _probe_affordable(target.dim, path, max_grad_evals, max_time, tic)
        ):
            probed = True  # the first fit is not trusted: look for other modes before escalating
            probe, seconds = _probe(target, key, progress)
            why = "a search for other modes (its paths start apart)"
            path.add(path.next_name(f"pathfinder x{PROBE_PATHS}"), probe, "pathfinder", probe.family.name, 0,
                     why, seconds)  # fmt: skip
            step = path.advice(name)  # the fit's advice, now beside the probe's mass
            if path.trusted:
                stopped = "trusted"
                break
        config = _next_config(step, current, tried, target, num_steps)
        if config is None:
            stopped = "no step left"
            break
        config = (*config, 1.0)
    return path.result(stopped)


class _Path:
    """The attempts so far, their draws (one tree per fit, drawn once) and their comparison."""

    def __init__(self, num_draws: int, seed: int, progress: bool):
        self.num_draws, self.seed, self.progress = num_draws, seed, progress
        self.initial_draws = num_draws
        self.attempts: list[Attempt] = []
        self.fits: dict[str, Fit] = {}
        self.trees: dict[str, Any] = {}
        self.table = None

    def say(self, text: str) -> None:
        if self.progress:
            print(f"vitools auto: {text}", file=sys.stderr, flush=True)

    def next_name(self, what: str) -> str:
        return f"{len(self.attempts) + 1}: {what}"

    @property
    def num_fits(self) -> int:
        """Attempts that ran (the probe included; a configuration ``vt.fit`` refused did not)."""
        return sum(a.status != "refused" for a in self.attempts)

    def refuse(self, name, objective, family, num_steps, why, refusal: Exception) -> None:
        """Record a configuration ``vt.fit`` refused (status ``"refused"``, its message as the
        reason): nothing ran, nothing is compared, the fits so far are kept."""
        attempt = Attempt(name, objective, family, num_steps, why, "refused", math.nan, str(refusal), 0,
                          "refused", 0, 0.0)  # fmt: skip
        self.attempts.append(attempt)
        self.say(str(attempt))

    def add(self, name, fit, objective, family, num_steps, why, seconds, rate=math.nan) -> Attempt:
        """Record an attempt and compare it with the rest. A fit of no step (its loss non-finite at
        the first) has only its start to show: it is recorded, its start's cost counted, not compared."""
        if fit.num_steps == 0:
            failed = "the loss became non-finite at the first step"
            attempt = Attempt(name, objective, family, num_steps, why, "bad", math.nan, failed, 0,
                              fit.status, fit.num_grad_evals, seconds, rate)  # fmt: skip
        else:
            self.fits[name] = fit
            self.trees[name] = to_datatree(fit, num_draws=self.num_draws, seed=self.seed)
            attempt = Attempt(name, objective, family, num_steps, why, "", math.nan, "", fit.num_steps,
                              fit.status, fit.num_grad_evals, seconds, rate)  # fmt: skip
        self.attempts.append(attempt)
        self._compare()
        self.say(str(self.attempts[-1]))
        return self.attempts[-1]

    def advice(self, name: str) -> Any:
        """:func:`vitools.advice.next_steps`' step for ``name`` (None: none); where it asks for more
        draws (k̂ straddles its threshold), or ``name`` reads uncertain on a PSIS move within its
        error (:func:`_more_draws_decide`), every fit is drawn again with them first."""
        if name not in self.fits:
            return None
        step = next_steps(self.table).get(name)
        more = None if step is None else step.options.get("num_draws")
        if more is None and _more_draws_decide(self.table.loc[name]):
            more = MAX_DRAWS_FACTOR * self.num_draws
        if more is not None and self.num_draws < more <= MAX_DRAWS_FACTOR * self.initial_draws:
            self.num_draws = int(more)
            self.say(f"more draws can decide: every attempt diagnosed again from {self.num_draws} draws")
            self.trees = {
                n: to_datatree(f, num_draws=self.num_draws, seed=self.seed) for n, f in self.fits.items()
            }
            self._compare()
            step = next_steps(self.table).get(name)
        return step

    @property
    def trusted(self) -> bool:
        return self.table is not None and bool((self.table["verdict"] == "good").any())

    def _compare(self) -> None:
        if self.trees:
            self.table = compare(self.trees, num_draws=self.num_draws, seed=self.seed)
            self.attempts = [self._reread(a) for a in self.attempts]

    def _reread(self, attempt: Attempt) -> Attempt:
        """The attempt with the latest comparison's verdict (more draws may have changed it)."""
        if attempt.name not in self.table.index:
            return attempt
        row = self.table.loc[attempt.name]
        reasons = row.get("reasons")
        if not isinstance(reasons, str):  # a "failed" row: compare's warning says why, the row does not
            reasons = "no importance diagnostics: log p or log q is NaN or +inf at some of q's draws"
        return dataclasses.replace(
            attempt, verdict=str(row["verdict"]), khat=float(row["khat"]), reasons=reasons
        )

    def result(self, stopped: str) -> Fit:
        """The best attempt's fit (good before uncertain before bad, then a fit before the probe, then
        the lowest k̂), its path attached. The probe's mixture is a search, its Gaussians Laplace's at
        L-BFGS points, not a q optimised on the target: under a budget a user's probe read bad at k̂
        0.75 (KL(q‖p) ≈ 3.1) and was returned over the default fit, bad at k̂ 0.76 (KL ≈ 0.025)."""
        if not self.attempts:  # max_time spent before the first fit (max_grad_evals is checked before)
            raise ValueError(f"the automatic mode's budget ({stopped}) was spent before its first fit")
        if not self.fits:
            raise FloatingPointError(
                f"no attempt of the automatic mode produced a fit: {'; '.join(map(str, self.attempts))}"
            )
        rank = {v: i for i, v in enumerate(VERDICTS)}
        chosen = min(
            (a for a in self.attempts if a.name in self.fits),
            key=lambda a: (
                rank.get(a.verdict, len(VERDICTS)),
                a.objective == "pathfinder",
                math.inf if math.isnan(a.khat) else a.khat,
            ),
        ).name
        path = AutoPath(tuple(self.attempts), chosen, stopped, self.num_draws)
        return dataclasses.replace(self.fits[chosen], auto=path)


def _more_draws_decide(row: Any) -> bool:
    """Whether a row reads uncertain only on checks that more draws can decide: k̂'s interval or a
    PSIS move within its Monte Carlo error (advice asks for draws on the first alone). On the 10-D
    funnel, forward KL with the 4-layer IAF at seed 2 read k̂ 0.49 ± 0.09 and uncertain on an sd move
    of 0.15 ± 0.11 (measured)."""
    if row.get("verdict") != "uncertain":
        return False
    reasons = str(row.get("reasons", ""))
    decidable = "straddles" in reasons or "more draws can tell" in reasons
    return decidable and "used its whole budget" not in reasons  # a fit still falling needs steps


def _check_budget(max_grad_evals: int | None, dim: int, num_steps: int) -> None:
    """Refuse a budget that cannot pay for the first fit: its start's reserve and ``MIN_STEPS``
    steps (or ``num_steps``, if fewer) of the default reverse KL."""
    if max_grad_evals is None:
        return
    steps = min(num_steps, MIN_STEPS)
    needed = _first_start_reserve(dim) + steps * get_objective("reverse_kl").num_density_evals(dim)
    if max_grad_evals < needed:
        raise validate.ArgumentValueError(
            f"max_grad_evals={max_grad_evals} cannot pay for the first fit of this {dim}-parameter model: "
            f"its start reserves {_first_start_reserve(dim)} gradient evaluations and {steps} steps of the "
            f"default reverse KL take {needed - _first_start_reserve(dim)}; give at least {needed}",
            "max_grad_evals",
        )


def _probe(target: Target, key: jax.Array, progress: bool) -> tuple[Fit, float]:
    """Multi-path Pathfinder from dispersed starts (:func:`vitools.pathfinder`): cheap, and its
    mixture's log evidence covers every mode a path found, so the comparison's missed-mass check
    flags a fit that sits on one of several modes (k̂ alone cannot see mass q never draws)."""
    from vitools.pathfinder import pathfinder

    tic = time.perf_counter()
    probe = pathfinder(target, num_paths=PROBE_PATHS, key=jax.random.fold_in(key, 7), progress=progress)
    return probe, time.perf_counter() - tic


def _probe_affordable(dim, path, max_grad_evals, max_time, tic) -> bool:
    """Whether the budget leaves room for the probe's worst case (:func:`vitools.pathfinder.max_grad_evals`).
    The estimate it replaced left out the ELBO and weight draws: a budget of 80,000 on a 3-parameter
    regression started the probe with ~45,000 left, it spent 61,678 (found by a user's trial)."""
    if max_time is not None and time.perf_counter() - tic >= max_time:
        return False
    cost = pathfinder_max_grad_evals(dim, PROBE_PATHS)
    return max_grad_evals is None or max_grad_evals - sum(a.grad_evals for a in path.attempts) >= cost


def _flow(dim: int) -> str:
    """The flow for a model of ``dim`` parameters: the IAF at small size, the coupling flow (cheap
    in both directions) above it; in one dimension, where an IAF is an affine map (a Gaussian) and
    the coupling flow refuses, the mixture (measured: :data:`vitools.advice.ONE_DIM_MIXTURE`)."""
    if dim == 1:
        return "mixture"
    return "iaf" if dim <= FLOW_FORWARD_MAX_DIM else "coupling"


def _afford(
    steps: int,
    objective: str,
    dim: int,
    attempts: list[Attempt],
    max_grad_evals: int | None,
    max_time: float | None,
    tic: float,
) -> tuple[int, str | None]:
    """The steps the budget allows for the next attempt, or why none can start."""
    attempts = [a for a in attempts if a.status != "refused"]  # nothing ran, nothing spent
    if max_time is not None:
        spent = time.perf_counter() - tic
        pace = attempts[-1].seconds / max(attempts[-1].steps, 1) if attempts else 0.0
        if spent >= max_time or spent + pace * min(steps, MIN_STEPS) > max_time:
            return steps, "time"
    if max_grad_evals is None:
        return steps, None
    per_step = get_objective(objective).num_density_evals(dim)
    fits = [a for a in attempts if a.objective != "pathfinder"]  # the probe has no steps
    start = max((_start_cost(a, dim) for a in fits), default=_first_start_reserve(dim))
    left = max_grad_evals - sum(a.grad_evals for a in attempts) - start
    affordable = left // max(per_step, 1)
    if affordable < min(steps, MIN_STEPS):
        return steps, "budget"
    return min(steps, affordable), None


def _start_cost(attempt: Attempt, dim: int) -> int:
    """What an attempt spent besides its steps (start and pilots), an estimate of the next's."""
    per_step = get_objective(attempt.objective).num_density_evals(dim)
    return max(attempt.grad_evals - attempt.steps * per_step, 0)


def _first_start_reserve(dim: int) -> int:
    """Gradient evaluations set aside for the first attempt's start: the Laplace init's path (at
    most 100 L-BFGS iterations with their line searches), its Hessians (``dim`` evaluations each,
    at most 9) and the start race's two 100-step pilots of the default reverse KL."""
    return 100 * 25 + 9 * dim + 2 * 100 * get_objective("reverse_kl").num_density_evals(dim)


def _family(family: str) -> Any:
    """The family ``vt.fit`` is given for a name of the ladder (``"iaf"``: :data:`FLOW_LAYERS` layers)."""
    return IAF(num_flows=FLOW_LAYERS) if family == "iaf" else family


def _default_rate(objective: str, family: str, dim: int) -> float:
    """The peak learning rate ``vt.fit`` gives the configuration by default (recorded per attempt)."""
    from vitools.families import get_family
    from vitools.fitting import default_rate

    return default_rate(get_objective(objective), get_family(_family(family)), dim)


def _attempt(target, objective, family, steps, key, progress, learning_rate=None) -> tuple[Fit, float]:
    """One ``vt.fit`` (``learning_rate`` None: its default); a non-finite loss keeps the fit's last
    finite parameters as the attempt, with ``status == "nonfinite"``."""
    from vitools.fitting import fit as vt_fit
    from vitools.result import NonFiniteLossError

    tic = time.perf_counter()
    try:
        fit = vt_fit(target, objective=objective, family=_family(family), num_steps=steps, key=key,
                     progress=progress, learning_rate=learning_rate)  # fmt: skip
    except NonFiniteLossError as err:
        fit = err.fit
    return fit, time.perf_counter() - tic


def _retry_why(failed: Attempt) -> str:
    """Why a non-finite attempt is tried again (:data:`NONFINITE_RATE_FACTOR`)."""
    return (
        f"{failed.name}'s loss became non-finite after step {failed.steps}: the same at "
        f"{NONFINITE_RATE_FACTOR:g} x its learning rate, once"
    )


def _next_config(step, last: Attempt, tried: set, target: Target, num_steps: int) -> tuple | None:
    """The next configuration ``(objective, family, num_steps, why)``: advice's step for the last
    attempt unless it was tried (or is only more draws), else the first untried of :data:`FALLBACK`;
    None when every one was tried. Under data subsampling only objectives ``vt.fit`` takes there
    (:func:`_takes`), and more steps once per configuration (module docstring)."""
    dim = target.dim
    options = {} if step is None else {k: v for k, v in step.options.items() if k != "num_draws"}
    objective = str(options.get("objective", last.objective))
    family = str(options.get("family", last.family))
    if family == "iaf" and objective == "forward_kl":
        family = _flow(dim)
    candidate = (objective, family, int(options.get("num_steps", _steps(family, num_steps))))
    lengthened = target.subsamples and any(
        (o, f) == candidate[:2] and s > _steps(f, num_steps) for o, f, s in tried
    )  # under subsampling a configuration is given more steps once, then a flow is tried
    if options and candidate not in tried and _takes(target, objective) and not lengthened:
        return (*candidate, step.why)
    why = "advice's step was tried already" if options else f"{last.name} read {last.verdict}"
    if options and lengthened:
        why = f"{last.name} read {last.verdict} after more steps (data subsampling)"
    elif options and not _takes(target, objective):
        why = f"advice's {objective} needs the full-data log joint, refused under data subsampling"
    for objective, family in FALLBACK:
        family = _flow(dim) if family == "flow" else family
        if (objective, family, _steps(family, num_steps)) not in tried and _takes(target, objective):
            return objective, family, _steps(family, num_steps), f"{why}; next on the fallback ladder"
    return None


def _takes(target: Target, objective: str) -> bool:
    """Whether ``vt.fit`` takes ``objective`` for ``target``: not one that needs the full-data joint
    (``ObjectiveHooks.full_joint``: forward KL) on a model that subsamples data."""
    return not (target.subsamples and objective_hooks(get_objective(objective)).full_joint)


def _steps(family: str, num_steps: int) -> int:
    """The steps of a first attempt with ``family``: :data:`FLOW_STEPS_FACTOR` times more for the IAF."""
    return FLOW_STEPS_FACTOR * num_steps if family == "iaf" else num_steps
