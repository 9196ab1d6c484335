"""What to try next for a fit that reads *bad* or *uncertain*, read from its row of a comparison.

The rules, in order (the first that applies), and what they were measured to do on the zoo
(``benchmarks/bench_next_steps.py``, results in ``benchmarks/results/next_steps.md``):

1. the optimisation used its whole budget while the loss still fell -> twice the steps;
2. a mode-seeking fit misses mass another fit covers (several modes) -> the fit
   :func:`which_to_trust` names where it is a mixture (a multi-path Pathfinder or ``"mixture"``
   fit); else forward KL with a flow (bimodal, reverse KL full-rank: w1 0.91 -> 0.05 with forward
   KL + IAF), with a mixture in one dimension, where an IAF is only an affine map
   (:data:`ONE_DIM_MIXTURE`);
3. a Gaussian whose k̂ lies above threshold, or whose mean or sd PSIS moves -> a flow (banana,
   forward KL: k̂ 1.57 "bad" -> 0.21 "good", w1 0.157 -> 0.029 with IAF); past
   ``FLOW_FORWARD_MAX_DIM`` parameters only for a reverse-KL fit (a forward-KL Gaussian switched
   to a reverse-KL flow went from uncertain to bad on the 103-parameter stochastic-volatility
   model), and rule 2 suggests forward KL without a flow; in one dimension (where an IAF is a
   Gaussian too) -> forward KL with a mixture (:data:`ONE_DIM_MIXTURE`);
4. k̂ straddles its threshold -> four times the draws (they decide);
5. a flow fitted by reverse KL -> forward KL; otherwise -> check against MCMC.

A step whose configuration a fit of the table already has, reading good, becomes "use that fit
instead", naming the fit :func:`which_to_trust` names (one ranking of the fits, not two).

A fit of a model that subsamples data (``numpyro.plate(..., subsample_size=B)``; the comparison's
``table.attrs["subsampled"]``, :func:`subsampled`) gets other rules: its gradient's noise grows like
sqrt(N / B), so a q that reads off is first a q that has not settled, and forward KL (any objective
that needs the full-data joint, ``ObjectiveHooks.full_joint``) is refused by ``vt.fit``:

1. k̂ straddling its threshold and nothing else -> four times the draws (the draws use all rows);
2. a fit that misses mass another covers -> a flow by reverse KL (forward KL would need all rows);
3. otherwise -> twice the steps, or a larger ``subsample_size`` (the reason says N / B), and a
   flow by reverse KL if a Gaussian still reads off; from :data:`SUBSAMPLE_MAX_STEPS` steps on, a
   larger ``subsample_size`` first (more steps had stopped moving q); where PSIS moves q's mean or
   sd with k̂ below its threshold, PSIS-resampled draws (``fit.sample(n, resample="psis")``,
   weighted by all rows) instead of a flow: they correct that bias without another fit. Measured
   on a 5,000-row logistic regression, B = 256, full rank, seeds 0-2: the PSIS mean moves of
   0.19-0.64 sd at 1000 steps (read bad) fall with more steps and a larger B (figures next to
   :data:`SUBSAMPLE_STEPS_FACTOR`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pandas as pd

from vitools.convert import DIAGNOSTIC_DRAWS
from vitools.diagnostics import CORRECTABLE
from vitools.importance import khat_threshold

__all__ = ["NextStep", "already_tried", "next_steps", "subsampled", "which_to_trust"]

GAUSSIAN_FAMILIES = ("meanfield", "fullrank", "lowrank")
# Forward KL evaluates log q at the weighted draws: an IAF inverts one network pass per dimension
# and layer, so past this size forward KL + IAF is suggested no more (the 103-parameter
# stochastic-volatility model ran for over 15 minutes on 2 cores before it was stopped).
FLOW_FORWARD_MAX_DIM = 50
# Rules 2 and 3 in one dimension: an IAF there is an affine map of its Gaussian base (its network's
# one output conditions on nothing), so it is a Gaussian: it can neither hold two modes nor bend; a
# mixture by forward KL can. vt.fit's defaults, seeds 0/1/2, w1 to 20,000 exact draws (measured):
# 0.3 N(-3, 0.7) + 0.7 N(2, 1): forward KL + IAF 0.303/0.308/0.303 (one hump over both modes, good by
# k̂), + 2-component mixture 0.033/0.046/0.037 (~48,000 gradient evaluations against 51,368);
# Gamma(1.5, 1) (skewed on the log scale): full rank by reverse KL 0.131/0.122/0.120 (bad), by forward
# KL 0.229/0.214/0.218 (bad), the mixture by forward KL 0.051/0.054/0.072 (uncertain; reverse KL + IAF
# at seed 0: 0.117); Student-t(2): 0.132/0.131/0.132, 0.210/0.228/0.242 (bad), the mixture
# 0.064/0.067/0.062 (good; reverse KL + IAF at seed 0: 0.132, bad).
ONE_DIM_MIXTURE = {"objective": "forward_kl", "family": "mixture"}
ONE_DIM_IAF = "in one dimension an IAF is only an affine map, a Gaussian"

# Under data subsampling a q that reads off is first given this times its steps (rule 3 above). The
# largest PSIS mean move of reverse KL + full rank (measured; vt.fit's defaults but num_steps, seeds
# 0/1/2): 5,000-row logistic regression (a user's CLI trial), B = 256: 0.44/0.64/0.19 sd (bad) at 1000
# steps, -/0.22/0.22 (good/bad/bad) at 2000, 0.22/0.10/0.12 at 4000; B = 1024, 1000 steps: -/0.19/0.10;
# the IAF by reverse KL at B = 256, 2000 steps: 0.11/0.28 (seeds 0/1), no better than the Gaussian.
# Poisson regression, 10^5 rows, B = 500 (auto's path, seed 0): full rank 0.89 at 2000 steps, 0.56 at
# 4000; the IAF 0.81 at 4000, 0.34 at 8000. More steps or a larger B, not another family, move q.
SUBSAMPLE_STEPS_FACTOR = 2
# ... up to this many steps; past them a larger subsample_size, SUBSAMPLE_BATCH_FACTOR times B. A
# re-trial's 10^4-row, 3-feature regression at B = 256 (seed 0; KL(q||p), largest PSIS mean move):
# 2000 steps 0.237, 0.45 sd; 4000: 0.088, 0.31; 8000: 0.093, 0.30 (no better); B = 1024 at 4000
# steps: 0.024, 0.14; B = 4096: 0.006 (uncertain); all rows: 0.000 (good, 700 steps).
SUBSAMPLE_MAX_STEPS = 4000
SUBSAMPLE_BATCH_FACTOR = 4


class NextStep(NamedTuple):
    """A suggestion: ``options`` of ``vt.fit`` (or ``vt.diagnose`` for ``num_draws``) to change, as
    ``{name: value}``, and ``why`` in words."""

    options: dict[str, object]
    why: str

    def as_flags(self) -> str:
        """The options as command-line flags: ``--family iaf --num-steps 4000``."""
        names = {"objective": "--objectives", "family": "--family"}
        return " ".join(f"{names.get(k, '--' + k.replace('_', '-'))} {v}" for k, v in self.options.items())

    def as_arguments(self) -> str:
        """The options as Python keyword arguments: ``family="iaf", num_steps=4000``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def already_tried(step: NextStep, row: pd.Series, path: Any) -> bool:
    """Whether an automatic-mode path (:class:`vitools.auto.AutoPath`, ``fit.auto``) already took
    ``step`` for the fit of ``row`` (a :func:`vitools.comparison.compare` row): it ran the
    configuration the step names (the row's objective or family where the step keeps it; with at
    least its ``num_steps`` where it names them), or, for a step of more draws only, read its fits
    from as many. The CLI and the report then say so instead of suggesting it again."""
    if set(step.options) == {"num_draws"}:
        return step.options["num_draws"] <= path.num_draws
    objective = step.options.get("objective", row.get("objective"))
    family = step.options.get("family", row.get("family"))
    num_steps = int(step.options.get("num_steps", 0))
    return any(
        a.objective == objective and a.family == family and a.num_steps >= num_steps and a.status != "refused"
        for a in path.attempts
    )


TRIED = (
    "the automatic mode already tried what the diagnostics suggest ({change}; its path: `fit.auto`); "
    "a larger budget (max_grad_evals), or NUTS draws to compare with, can tell more"
)


def next_steps(table: pd.DataFrame) -> dict[str, NextStep]:
    """One :class:`NextStep` per fit of a :func:`vitools.comparison.compare` table that reads bad
    or uncertain (MCMC rows and good fits get none); the rules are in the module docstring.

    Examples:
        >>> for name, step in next_steps(vt.compare(fits)).items():
        ...     print(name, step.as_arguments(), step.why)
    """
    num_draws = int(table.attrs.get("num_draws", DIAGNOSTIC_DRAWS))
    threshold = khat_threshold(num_draws)
    num_params = int(table.attrs.get("num_params", 0))
    small, size = num_params <= FLOW_FORWARD_MAX_DIM, f"{num_params} dimensions"
    minibatched = subsampled(table)
    trusted = _trusted(table)  # which_to_trust's fit: a step that says "use X instead" names it
    steps: dict[str, NextStep] = {}
    for name, row in table.iterrows():
        if row.get("verdict") not in ("bad", "uncertain") or row.get("objective") == "mcmc":
            continue
        reasons = str(row.get("reasons", ""))
        family, objective = str(row.get("family")), str(row.get("objective"))
        gaussian = family in GAUSSIAN_FAMILIES or (num_params == 1 and family == "iaf")
        khat_above = row.get("khat", float("nan")) - 2 * row.get("khat_se", 0.0) > threshold
        if str(name) in minibatched:
            step = _subsampled_step(row, minibatched[str(name)], khat_above, num_draws)
        elif "used its whole budget" in reasons:
            step = NextStep(
                {"num_steps": 2 * int(row["steps"])}, "the loss was still falling when the budget ran out"
            )
        elif "misses ~" in reasons and not objective.startswith("forward_kl"):
            step = _several_modes(table, trusted, num_params, size)
        elif gaussian and (khat_above or "PSIS moves" in reasons) and (small or objective == "reverse_kl"):
            step = (
                NextStep(
                    dict(ONE_DIM_MIXTURE), f"a mixture can take a shape a Gaussian cannot ({ONE_DIM_IAF})"
                )
                if num_params == 1
                else NextStep({"family": "iaf"}, "a flow can bend where a Gaussian cannot")
            )
        elif "straddles" in reasons:
            step = NextStep({"num_draws": 4 * num_draws}, "more draws decide whether q covers p's tails")
        elif not gaussian and objective == "reverse_kl":
            step = NextStep({"objective": "forward_kl"}, "mass-covering")
        else:
            step = NextStep({}, "check it against an MCMC run of this model")
        steps[str(name)] = _already_there(table, objective, family, step, trusted)
    return steps


def subsampled(table: pd.DataFrame) -> dict[str, dict[str, tuple[int, int]]]:
    """The rows of a comparison whose fit subsamples data: ``{row name: {plate: (B, N)}}``, read from
    ``table.attrs["subsampled"]`` (``vt.compare`` reads it from each fit's tree, root attr
    :data:`vitools.convert.SUBSAMPLE_ATTR`; ``{}`` where the table has none)."""
    rows = table.attrs.get("subsampled") or {}
    return {
        str(name): {p: (int(b), int(n)) for p, (b, n) in plates.items()}
        for name, plates in rows.items()
        if plates
    }


def _subsampled_step(
    row: pd.Series, plates: dict[str, tuple[int, int]], khat_above: bool, num_draws: int
) -> NextStep:
    """The step for a fit of a subsampling model (the rules in the module docstring): never forward
    KL, which ``vt.fit`` refuses there; more steps or a larger ``subsample_size`` before a flow."""
    reasons, family = str(row.get("reasons", "")), str(row.get("family"))
    off = khat_above or "PSIS moves" in reasons or "misses ~" in reasons
    if "straddles" in reasons and not off:
        return NextStep({"num_draws": 4 * num_draws}, "more draws decide whether q covers p's tails")
    if "misses ~" in reasons and family in GAUSSIAN_FAMILIES:
        return NextStep(
            {"family": "iaf"},
            "a flow can hold mass a Gaussian misses; forward KL (mass-covering) needs the full-data "
            "log joint, refused under data subsampling: drop subsample_size to try it",
        )
    name, (batch, size) = max(plates.items(), key=lambda item: item[1][1] / item[1][0])
    noise = (
        f"under data subsampling (plate {name!r}: {batch} of {size} rows a step) the gradient's noise "
        f"grows like sqrt(N / B) = {math.sqrt(size / batch):.2g}, so q may not have settled: more steps, "
        f"or a larger subsample_size in the model"
    )
    if "used its whole budget" in reasons:
        noise = f"the loss was still falling when the budget ran out; {noise}"
    then = (
        "; a flow by reverse KL (family 'iaf') if it still reads off"
        if family in GAUSSIAN_FAMILIES
        else "; then check it against an MCMC run of this model"
    )
    if CORRECTABLE in reasons:  # k̂ below threshold: q's draws reweighted by all rows fix its bias now
        then = (
            "; meanwhile, as k̂ is below its threshold, PSIS-resampled draws (weighted by the full-data "
            "log joint) correct the bias: fit.sample(n, resample='psis')"
        )
    steps = float(row.get("steps", math.nan))
    if math.isfinite(steps) and steps >= SUBSAMPLE_MAX_STEPS:  # more steps stopped helping: a larger B
        larger = min(SUBSAMPLE_BATCH_FACTOR * batch, size)
        return NextStep(
            {},
            f"under data subsampling (plate {name!r}: {batch} of {size} rows a step) q has had "
            f"{int(steps)} steps, past which more stopped moving it (measured): a larger subsample_size "
            f"in the model, e.g. {larger}, cuts the gradient's noise, sqrt(N / B) = "
            f"{math.sqrt(size / batch):.2g} now" + then,
        )
    more = {} if not math.isfinite(steps) else {"num_steps": SUBSAMPLE_STEPS_FACTOR * int(steps)}
    return NextStep(more, noise + then)


def _several_modes(
    table: pd.DataFrame, trusted: tuple[Any, str] | None, num_params: int, size: str
) -> NextStep:
    """Rule 2's step, for a mode-seeking fit that misses mass another fit covers (several modes):
    the fit :func:`which_to_trust` names where it is a mixture (a multi-path Pathfinder or a
    ``"mixture"`` fit, one component per mode it found); else forward KL with a mixture in one
    dimension, where an IAF is an affine map of its Gaussian base (:data:`ONE_DIM_MIXTURE`), with
    a flow up to :data:`FLOW_FORWARD_MAX_DIM` parameters, alone past them."""
    if trusted is not None and table.loc[trusted[0]].get("family") == "mixture":
        best, why = trusted
        return NextStep({}, f"use {best} instead, the fit to trust: {why}; a mixture, it can hold the modes")
    if num_params == 1:
        return NextStep(
            dict(ONE_DIM_MIXTURE), f"mass-covering, and a mixture can hold several modes ({ONE_DIM_IAF})"
        )
    if num_params <= FLOW_FORWARD_MAX_DIM:
        return NextStep(
            {"objective": "forward_kl", "family": "iaf"}, "mass-covering, and a flow can hold several modes"
        )
    return NextStep({"objective": "forward_kl"}, f"mass-covering (a flow by forward KL is slow in {size})")


def _already_there(
    table: pd.DataFrame, objective: str, family: str, step: NextStep, trusted: tuple[Any, str] | None
) -> NextStep:
    """The step, or "use that fit" when a row of the table already has the suggested objective
    and family and reads good (the demo's Gaussian was told to try the flow beside it). The fit
    named is the one :func:`which_to_trust` names (``trusted``: its name and why) unless that is
    the row itself: it reads good too, and ranks at least as well by which_to_trust's rule (a
    bimodal 1-D report trusted 8-path Pathfinder, w1 0.050, and told the reverse-KL fit to use
    forward KL + IAF beside it, one hump over both modes, w1 0.30)."""
    if not step.options or not set(step.options) <= {"objective", "family"}:
        return step
    wanted = (step.options.get("objective", objective), step.options.get("family", family))
    for other, row in table.iterrows():
        if (row.get("objective"), row.get("family")) == wanted and row.get("verdict") == "good":
            if trusted is None or trusted[0] == other:
                return NextStep({}, f"use {other} instead: it is that configuration and reads good")
            best, why = trusted
            return NextStep(
                {},
                f"use {best} instead, the fit to trust: {why}; {other} ({'/'.join(wanted)}, what "
                "this step would suggest) reads good too",
            )
    return step


def _trusted(table: pd.DataFrame, candidates: list[str] | None = None) -> tuple[Any, str] | None:
    """The fit :func:`which_to_trust` names and why (``"it reads good and ..."``); None where no
    candidate reads good. The one ranking of the fits that read good: lowest ``w1`` to the
    reference where there is one, else the lowest k̂, else the first."""
    rows = _candidates(table, candidates)
    good = rows[rows["verdict"] == "good"] if "verdict" in rows else rows.iloc[:0]
    if good.empty:
        return None
    if "w1" in good and good["w1"].notna().any():
        best = good["w1"].idxmin()
        why = f"it reads good and is the closest of those to the reference (w1 {good.loc[best, 'w1']:.3g})"
    elif "khat" in good and good["khat"].notna().any():
        best = good["khat"].idxmin()
        why = f"it reads good with the lowest k̂ ({good.loc[best, 'khat']:.2f})"
    else:
        best, why = good.index[0], "it reads good"
    return best, why


def _candidates(table: pd.DataFrame, candidates: list[str] | None) -> pd.DataFrame:
    """The rows of ``candidates`` (default every row) but MCMC runs."""
    rows = table if candidates is None else table[table.index.isin(candidates)]
    return rows[rows["objective"] != "mcmc"] if "objective" in rows else rows


def which_to_trust(table: pd.DataFrame, candidates: list[str] | None = None) -> str:
    """One sentence naming the fit to use from a comparison table, and why.

    The fits that read good (of ``candidates``, default every fit row; MCMC rows are not
    candidates); among them the closest to the reference (lowest ``w1``) when there is one, else the
    lowest k̂. With none reading good, it says so and points to the next steps.
    """
    rows = _candidates(table, candidates)
    trusted = _trusted(table, candidates)
    # none reads good: not q's own draws; a bias PSIS corrects (k̂ below threshold) leaves resampled ones
    # usable
    if trusted is None:
        reasons = rows["reasons"] if "reasons" in rows else pd.Series(dtype=str)
        fixable = [str(name) for name, why in reasons.items() if CORRECTABLE in str(why)]
        resampled = (
            f"; {', '.join(fixable)}: PSIS-resampled draws correct the bias (fit.sample(n, resample='psis'))"
            if fixable
            else ""
        )
        return f"No fit reads good: do not use their draws as posterior draws{resampled}; see the next steps."
    best, why = trusted
    others = [str(name) for name in rows.index if name != best and rows.loc[name, "verdict"] != "good"]
    tail = f"; {', '.join(others)} {'does' if len(others) == 1 else 'do'} not read good" if others else ""
    return f"Trust {best}: {why}{tail}."
