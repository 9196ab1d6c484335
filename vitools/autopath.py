"""The automatic mode's record: each attempt of its ladder (:class:`Attempt`: configuration, verdict,
cost, and why it was tried) and the path they make (:class:`AutoPath`, kept on the returned fit as
``fit.auto``), with the lines they print. Plain frozen dataclasses of host values, apart from the
ladder that makes them (:mod:`vitools.auto`), so reading a saved path (:mod:`vitools.persist`) does
not import the fitting layer.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Attempt", "AutoPath"]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One fit of the automatic mode's path.

    Attributes:
        name: its row name in the comparison (``"2: forward_kl/iaf"``).
        objective, family: the configuration's names; num_steps: the budget it was given.
        why: why it was tried (the advice that led to it; ``"the default fit"`` first).
        verdict, khat, reasons: what :func:`vitools.diagnose` says of it (``khat`` NaN if the
            diagnostics failed); steps: steps run; status: the fit's status, or ``"refused"``
            (verdict too) for a configuration ``vt.fit`` refused before it ran (``reasons`` its
            message; no steps, no evaluations).
        grad_evals: log-density gradient evaluations it spent, its start included.
        seconds: its wall time (start, compilation and loop).
        learning_rate: the peak learning rate it was given (NaN for the probe, which has none):
            ``vt.fit``'s default for the configuration, or :data:`NONFINITE_RATE_FACTOR` times it on
            the retry of an attempt whose loss became non-finite.
    """

    name: str
    objective: str
    family: str
    num_steps: int
    why: str
    verdict: str
    khat: float
    reasons: str
    steps: int
    status: str
    grad_evals: int
    seconds: float
    learning_rate: float = math.nan  # a default: paths saved before it was recorded still load

    def __str__(self) -> str:
        if self.status == "refused":  # vt.fit refused the configuration before it ran
            return f"{self.name}: refused, not run ({self.reasons}); tried because {self.why}"
        # k̂ with its interval where it decides the verdict ("k̂ 0.78 ± 0.12 straddles the threshold
        # 0.70 at S = 40000"), else k̂ alone; a verdict worse than k̂ reads comes from another signal: say which
        reasons = [r for r in self.reasons.split("; ") if r]
        khat = next((r.split(":")[0] for r in reasons if r.startswith("k̂") and "±" in r), None)
        khat = khat if khat is not None and self.verdict != "good" else f"k̂ {self.khat:.2f}"
        other = [r for r in reasons if not r.startswith(("k̂", "the largest"))]
        because = f"; {other[0]}" if other and self.verdict != "good" else ""
        steps = f"{self.steps} steps"
        if self.status == "nonfinite":  # never silent: the fit kept the parameters of its last finite step
            steps = f"{steps}, then a non-finite loss (the parameters of step {self.steps} kept)"
        rate = "" if math.isnan(self.learning_rate) else f", learning rate {self.learning_rate:.3g}"
        return (
            f"{self.name}: {self.verdict} ({khat}{because}), {steps}{rate}, "
            f"{self.grad_evals} gradient evaluations, {self.seconds:.1f} s; tried because {self.why}"
        )


@dataclasses.dataclass(frozen=True)
class AutoPath:
    """The automatic mode's record, kept on the returned fit as ``fit.auto``.

    Attributes:
        attempts: every attempt in order (:class:`Attempt`).
        chosen: the name of the attempt returned.
        stopped: why the ladder ended: ``"trusted"`` (an attempt read good), ``"budget"``
            (``max_grad_evals`` would be passed by the next attempt), ``"time"`` (``max_time``
            spent), ``"attempts"`` (``max_attempts`` made) or ``"no step left"`` (nothing
            untried to suggest).
        num_draws: the draws from q its last comparison used (more when k̂ straddled its threshold).

    Examples:
        >>> fit = vt.auto_fit(model, x, y=y)
        >>> fit.auto.chosen, fit.auto.stopped, fit.auto.grad_evals
        ('reverse_kl/fullrank', 'trusted', 16688)
        >>> print(fit.auto)  # one line per attempt: configuration, verdict, k̂, evaluations, time
    """

    attempts: tuple[Attempt, ...]
    chosen: str
    stopped: str
    num_draws: int

    @property
    def grad_evals(self) -> int:
        """Gradient evaluations of all attempts together."""
        return sum(a.grad_evals for a in self.attempts)

    @property
    def seconds(self) -> float:
        """Wall time of all attempts together (the comparisons between them not included)."""
        return sum(a.seconds for a in self.attempts)

    @property
    def budget_hit(self) -> bool:
        """Whether the ladder ended on ``max_grad_evals`` or ``max_time``."""
        return self.stopped in ("budget", "time")

    def __str__(self) -> str:
        lines = [f"  {a}" for a in self.attempts]
        head = (
            f"auto: chose {self.chosen}; stopped: {self.stopped}; {self.grad_evals} gradient evaluations; "
            f"verdicts from {self.num_draws} draws of each q (vt.diagnose(fit, num_draws={self.num_draws}))"
        )
        return "\n".join([head] + lines)
