r"""Variational simulation-based calibration (VSBC; Yao, Vehtari, Simpson & Gelman 2018, "Yes, but
did it work?: Evaluating variational inference", ICML), on :func:`vitools.many.fit_many`.

Draw parameters :math:`\theta^*_m` and data :math:`y_m` from the model's prior predictive
(NumPyro's ``Predictive``), fit q to each dataset, and record for every scalar parameter

.. math:: p_m = \Pr_{q_m}(\theta < \theta^*_m) \approx \frac1L \sum_{l=1}^L 1[\theta^{(l)}_m < \theta^*_m],

from ``L`` draws of each fit. Were every q the exact posterior, the :math:`p_m` would be uniform
on (0, 1) (simulation-based calibration; Talts, Betancourt, Simpson, Vehtari & Gelman 2018).
Two tests read them:

- **symmetry** (VSBC proper, Yao et al. 2018, and NumPyro's ``infer.calibration.vsbc_diagnostic``):
  the Kolmogorov-Smirnov distance between the :math:`p_m` and the :math:`1 - p_m`. If q's marginal
  median is unbiased on average over the prior, the :math:`p_m` are symmetric about 1/2. This is
  the only thing VSBC asks of VI: a q whose mean is right but whose spread is wrong passes it.
  Its p-value here is a sign-flip randomization test (each :math:`p_m \to 1 - p_m` with
  probability 1/2: exact under symmetry), not NumPyro's asymptotic two-sample p-value, which
  treats the two mirrored samples as independent: on uniform :math:`p_m` it rejected at nominal
  5% in 9.4%, 10.7% and 12.2% of 2,000 trials with 50, 100 and 200 datasets (measured).
- **uniformity** (SBC): the one-sample KS test of the :math:`p_m` against U(0, 1), which sees a q
  too narrow (the :math:`p_m` pile up at 0 and 1; mean-field VI on correlated posteriors) or too
  wide (they pile up at 1/2). On uniform :math:`p_m` on the grid of L = 1000 it rejected at
  nominal 5% in 5.5%, 4.4% and 5.7% of 2,000 trials (measured, as above).

Each parameter's verdict: ``"biased high"``/``"biased low"`` (symmetry fails: q's centre sits above
or below the truth on average), else ``"overconfident"``/``"underconfident"`` (uniformity fails,
by whether the :math:`p_m` spread more or less than a uniform's variance 1/12), else
``"calibrated"``. Every test runs at ``alpha / (2 x number of scalar parameters)`` (Bonferroni),
so a calibrated model is flagged anywhere with probability at most ``alpha``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd
from numpyro.infer import Predictive
from scipy import stats

from vitools import validate
from vitools.arguments import call_error
from vitools.families import Family
from vitools.many import FitMany, fit_many
from vitools.objectives import Objective
from vitools.subsample import full_data_model

__all__ = ["VSBC", "VSBC_VERDICTS", "mirror_ks", "vsbc", "vsbc_table"]

VSBC_VERDICTS = ("calibrated", "biased high", "biased low", "overconfident", "underconfident")
# Sign flips of the symmetry test: at least NUM_FLIPS (its p-value's Monte Carlo sd is then at most
# 0.011) and enough that the smallest p-value it can give, 1 / (flips + 1), is a tenth of the
# threshold, so many parameters (a smaller Bonferroni threshold) can still be flagged.
NUM_FLIPS = 2000
FLIP_ROWS = 10_000  # flips per batch: (FLIP_ROWS, 3 x num_datasets) floats at a time


@dataclasses.dataclass(frozen=True)
class VSBC:
    """What :func:`vsbc` found.

    Attributes:
        table: one row per scalar parameter (``"beta[0]"``): ``symmetry`` (KS distance of p and
            1 - p) and its ``symmetry_pvalue``, ``uniformity`` (KS distance of p to U(0, 1)) and
            its ``uniformity_pvalue``, ``mean_p``, ``sd_p`` (a uniform's is 0.289) and ``verdict``
            (one of :data:`VSBC_VERDICTS`).
        probabilities: site name -> ``(num_datasets, *site shape)``, each :math:`p_m`.
        truths: site name -> ``(num_datasets, *site shape)``, the prior draws the data came from.
        fits: the fits, one per dataset (:class:`~vitools.many.FitMany`).
        threshold: the p-value under which a test fails (``alpha`` over the number of tests).

    Examples:
        >>> check = vt.vsbc(model, x, y=None, num_datasets=20, num_steps=300, progress=False)
        >>> check.probabilities["beta"].shape, list(check.verdicts)
        ((20,), ['alpha', 'beta', 'sigma'])
    """

    table: pd.DataFrame
    probabilities: dict[str, np.ndarray]
    truths: dict[str, np.ndarray]
    fits: FitMany
    threshold: float

    @property
    def verdicts(self) -> dict[str, str]:
        """Scalar parameter -> verdict (one of :data:`VSBC_VERDICTS`)."""
        return dict(self.table["verdict"])

    @property
    def calibrated(self) -> bool:
        """Whether every parameter reads ``"calibrated"``."""
        return bool((self.table["verdict"] == "calibrated").all())

    def plot(self, **kwargs: Any):
        """Histograms of each parameter's p (:func:`vitools.plots.vsbc.plot_vsbc`, which takes the
        keyword arguments and documents the errors); returns the figure."""
        from vitools.plots.vsbc import plot_vsbc  # plots import matplotlib: on use

        return plot_vsbc(self, **kwargs)

    def __repr__(self) -> str:
        counts = self.table["verdict"].value_counts()
        read = ", ".join(f"{n} {v}" for v, n in counts.items())
        return f"VSBC({len(self.fits)} datasets x {self.fits[0].name}: parameters {read})"


def vsbc(
    model: Callable,
    *model_args: Any,
    num_datasets: int = 100,
    observed: Sequence[str] | None = None,
    objective: str | Objective = "reverse_kl",
    family: str | Family = "fullrank",
    num_steps: int = 1000,
    init: str = "laplace",
    num_draws: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> VSBC:
    """Variational simulation-based calibration of ``objective``/``family`` on ``model``
    (Yao, Vehtari, Simpson & Gelman 2018): prior draws, data simulated from them, one fit per
    dataset (:func:`vitools.many.fit_many`, one compiled program), and the tests of this module's
    doc per scalar parameter.

    The model must simulate its data when its observed arguments are None: pass them as
    keyword arguments set to None (``vt.vsbc(model, x, y=None)``), or name them in ``observed``.
    A model that subsamples data (``plate(..., subsample_size=B)``) simulates every row of each
    dataset (:func:`vitools.subsample.full_data_model`), and each fit subsamples it as ``vt.fit``
    does, so VSBC checks the subsampled fit against the full-data posterior.

    Args:
        model: a NumPyro model that simulates its data when its observed arguments are None.
        *model_args: the model's positional arguments (as ``vt.fit``).
        **kwargs: the model's keyword arguments (as ``vt.fit``), the observed ones None; the fits
            take ``vt.fit``'s other defaults.
        num_datasets: simulated datasets (fits), at least 20; the tests see a shift of about
            ``1.4 / sqrt(num_datasets)`` in p's distribution (KS at 5%).
        observed: the observed sites, each the model keyword argument of the same name. None:
            every keyword argument given as None that names a sample site.
        objective: the fits' objective, as ``vt.fit``.
        family: the fits' family, as ``vt.fit``.
        num_steps: the fits' steps, as ``vt.fit`` (every fit runs all of them).
        init: the fits' start, ``"laplace"`` or ``"median"`` (as ``vt.fit``).
        num_draws: draws of each q behind each p (p is on a grid of 1 / num_draws).
        alpha: the family-wise level of the verdicts, in (0, 1).
        seed: the one seed of the prior draws and the fits.
        progress: show the fits' progress.

    Returns:
        The tests' table and verdicts (``.table``, ``.verdicts``, ``.calibrated``,
            ``.plot()``), the :math:`p_m` ``(num_datasets, *site shape)`` and the fits.

    Raises:
        vitools.validate.ArgumentError: an option is invalid (``num_datasets`` < 20,
            ``num_draws`` < 2, ``alpha`` outside (0, 1), ...), or no observed site is found.
        ValueError: as :func:`vitools.many.fit_many`.

    Examples:
        >>> check = vt.vsbc(model, x, y=None, family="meanfield", num_datasets=100)
        >>> check.table.columns.tolist()
        ['symmetry', 'symmetry_pvalue', 'uniformity', 'uniformity_pvalue', 'mean_p', 'sd_p', 'verdict']
        >>> fig = check.plot()
    """
    num_datasets = validate.count(num_datasets, "num_datasets", minimum=20)
    num_draws = validate.count(num_draws, "num_draws", minimum=2)
    alpha = validate.positive(alpha, "alpha")
    if alpha >= 1:
        raise validate.ArgumentValueError(f"alpha must be in (0, 1), got {alpha!r}", "alpha")
    seed = validate.seed(seed, "seed")
    init = validate.choice(init, "init", ("laplace", "median"))
    if observed is None:
        observed = [name for name, value in kwargs.items() if value is None]
    else:
        observed = [validate.choice(name, "observed", list(kwargs) or [""]) for name in observed]
    prior_key, draw_key = jax.random.split(jax.random.PRNGKey(seed))
    # Simulated on all rows: a dataset is the model's data, whatever a fit then subsamples of it
    # (a subsampling plate's rows would otherwise be B random ones, and NumPyro draws them with a
    # scan that NumPy data cannot be indexed by).
    simulator = Predictive(full_data_model(model), num_samples=num_datasets)
    with jax.numpy_rank_promotion("allow"):  # NumPyro's batched prior draws broadcast implicitly
        try:
            simulated = simulator(prior_key, *model_args, **kwargs)
        except TypeError as err:  # the model refused its arguments: say so (e.g. devices=, vt.fit's only)
            raise call_error(err, model_args, kwargs) from err
    observed = [name for name in observed if name in simulated]
    if not observed:
        raise validate.ArgumentValueError(
            "no observed site to simulate: pass the model's observed data arguments as None "
            "(vt.vsbc(model, x, y=None)) or name them in observed=",
            "observed",
        )
    datasets = {name: np.asarray(simulated[name]) for name in observed}
    seeds = tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(num_datasets))
    others = {k: v for k, v in kwargs.items() if k not in datasets}
    fits = fit_many(
        model, *model_args, datasets=datasets, seeds=seeds, objective=objective, family=family,
        num_steps=num_steps, init=init, progress=progress, **others,
    )  # fmt: skip
    names = fits[0].target.site_names
    truths = {name: np.asarray(simulated[name]) for name in names}
    keys = jax.random.split(draw_key, num_datasets)
    below = {name: [] for name in names}
    for fit, key in zip(fits, keys, strict=True):
        draws = fit.sample(num_draws, key=key)
        for name in names:
            index = len(below[name])
            below[name].append(np.mean(draws[name] < truths[name][index][None], axis=0))
    probabilities = {name: np.stack(values) for name, values in below.items()}
    table, threshold = vsbc_table(probabilities, alpha, np.random.default_rng(seed))
    return VSBC(table, probabilities, truths, fits, threshold)


def vsbc_table(
    probabilities: dict[str, np.ndarray], alpha: float = 0.05, rng: np.random.Generator | None = None
) -> tuple[pd.DataFrame, float]:
    """The tests and verdicts of this module's doc, from each site's p ``(num_datasets, *shape)``.

    Returns:
        ``(table, threshold)``: one row per scalar parameter (``"site[i,j]"``), and the p-value
            under which a test fails (``alpha / (2 x rows)``).

    Raises:
        ValueError: a site's p has fewer than 2 datasets or values outside [0, 1].
    """
    rng = np.random.default_rng(0) if rng is None else rng
    columns = {}
    for name, values in probabilities.items():
        values = np.asarray(values, float)
        if values.ndim < 1 or values.shape[0] < 2 or np.any((values < 0) | (values > 1)):
            raise ValueError(f"{name}: p must be (num_datasets >= 2, ...) with values in [0, 1]")
        flat = values.reshape(values.shape[0], -1)
        for j, index in enumerate(np.ndindex(values.shape[1:])):
            label = name + (f"[{','.join(map(str, index))}]" if index else "")
            columns[label] = flat[:, j]
    threshold = alpha / (2 * len(columns))
    rows = []
    for label, p in columns.items():
        symmetry = float(mirror_ks(p[None])[0])
        num_flips = max(NUM_FLIPS, int(np.ceil(10 / threshold)))
        exceed = 0
        for begin in range(0, num_flips, FLIP_ROWS):
            flips = rng.random((min(FLIP_ROWS, num_flips - begin), len(p))) < 0.5
            exceed += int(np.sum(mirror_ks(np.where(flips, 1.0 - p, p)) >= symmetry - 1e-12))
        symmetry_pvalue = (1 + exceed) / (num_flips + 1)
        uniform = stats.kstest(p, "uniform")
        rows.append(
            dict(
                parameter=label,
                symmetry=symmetry,
                symmetry_pvalue=float(symmetry_pvalue),
                uniformity=float(uniform.statistic),
                uniformity_pvalue=float(uniform.pvalue),
                mean_p=float(np.mean(p)),
                sd_p=float(np.std(p)),
            )
        )
    table = pd.DataFrame(rows).set_index("parameter")
    table["verdict"] = [_verdict(row, threshold) for row in table.itertuples()]
    return table, threshold


def _verdict(row: Any, threshold: float) -> str:
    if row.symmetry_pvalue < threshold:  # p near 1: the truth above q's draws, q sits low
        return "biased low" if row.mean_p > 0.5 else "biased high"
    if row.uniformity_pvalue < threshold:
        return "overconfident" if row.sd_p**2 > 1 / 12 else "underconfident"
    return "calibrated"


def mirror_ks(p: np.ndarray) -> np.ndarray:
    """The two-sample KS distance between each row of ``p`` ``(rows, n)`` and its mirror ``1 - p``:
    ``max_t |F_p(t) - F_{1-p}(t)|``, the statistic of NumPyro's ``vsbc_diagnostic``
    (``scipy.stats.ks_2samp(p, 1 - p)``), for many rows at once. Returns ``(rows,)``."""
    p = np.asarray(p, float)
    rows, n = p.shape
    mirror = 1.0 - p
    points = np.concatenate([p, mirror], axis=1)
    return np.max(np.abs(_row_counts(p, points) - _row_counts(mirror, points)), axis=1) / n


def _row_counts(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``#(values[r] <= points[r, k])`` for every row ``r``: one ``searchsorted`` over the rows laid
    end to end (each shifted by 2 x its index; the values lie in [0, 1])."""
    rows, n = values.shape
    offset = 2.0 * np.arange(rows)[:, None]
    ordered = np.sort(values, axis=1) + offset
    found = np.searchsorted(ordered.ravel(), (points + offset).ravel(), side="right")
    return found.reshape(points.shape) - n * np.arange(rows)[:, None]
