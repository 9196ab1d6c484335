r"""Several approximations of one posterior side by side: one row per fit, one column per question.

Columns: ``objective``, ``family``, ``steps``, ``grad_evals``, ``time_s`` (from the tree's attrs, see
:func:`_seconds`: a fit's start, compilation and loop; an auto fit's whole path, every attempt), then
the importance diagnostics of :func:`vitools.diagnostics.diagnose` (``khat``, ``verdict``, ``ess``,
``log_evidence`` ± ``log_evidence_se``, ``elbo``, ``cubo``; NaN for MCMC, which has no q; a row reads
elbo ≤ log_evidence ≤ cubo, an interval for log Z where k̂ < 0.5, see ``diagnose``), an MCMC run's
own (``rhat``, its smallest bulk ``ess``, ``divergences``; NaN for fits), and with a reference
(e.g. long NUTS runs), per scalar parameter j with reference mean :math:`m_j` and sd :math:`s_j`,
averaged over the P parameters that the fit and the reference share:

.. math::
    \text{mean\_error} = \frac1P \sum_j \frac{|\hat m_j - m_j|}{s_j}, \quad
    \text{sd\_ratio} = \frac1P \sum_j \frac{\hat s_j}{s_j}, \quad
    \text{w1} = \frac1P \sum_j W_1\!\left(\frac{z_j - m_j}{s_j}, \frac{z^{\rm ref}_j - m_j}{s_j}\right).

All three use the fit's raw draws (what a user of q gets), not PSIS-reweighted ones. The P parameters
are every latent site's (a reference that lacks one is refused, so the average never shrinks
silently) and those of the deterministic sites the reference also holds (a model zoo's stored draws
hold only latent sites; a NUTS run's tree holds both). A constant reference parameter has no scale
and is left out.

One model. :func:`compare` refuses fits whose latent sites (names and shapes of one draw) differ,
naming them: their distances and missed mass would compare different posteriors. A vitools Fit and
an MCMC run say which sites are latent (their trees list them, see :mod:`vitools.convert`); a tree
made elsewhere does not, so it must hold the others' latent sites among its variables, and among
such trees alone, the one with the fewest variables stands for the model. Their trees also name
the model function (root attr ``vitools_model``): fits with the same sites under different model
functions are compared with a warning, and their ``missed_mass`` is left NaN.

``missed_mass`` compares the fits with each other, no reference needed: the importance estimate
of the evidence from q has expectation :math:`Z \cdot P_p(\text{where q puts draws})`, so a fit
whose estimate falls short of an anchor by a gap g misses about :math:`1 - e^{-g}` of the
posterior mass (k̂ cannot see mass where q never draws; this can). The anchor is the model's true
log evidence where the caller knows it (``compare(..., log_evidence=)``; ``vitools compare`` passes
a zoo model's), else the estimate of the most trusted fit (:func:`_anchor`: k̂ under threshold, a
good verdict first, the highest lower end log Ẑ − 2 se), not merely the highest estimate, which
can be the noisiest (measured, see :func:`_anchor`). It is NaN for MCMC rows, 0 for the anchor
and for estimates above it; read it next to ``log_evidence_se``: ``format_table`` marks ``?`` a
positive share whose gap is within twice its Monte Carlo error (the share may be 0). Without a
known log evidence, with fewer than two fits that estimate the evidence (one fit, alone or beside
MCMC rows) there is nothing to compare: NaN in every row (the text and markdown tables then leave
the column out).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import xarray as xr

from vitools import validate
from vitools.convert import DIAGNOSTIC_DRAWS, MODEL_ATTR, SUBSAMPLE_ATTR, draws_to_datatree, to_datatrees
from vitools.diagnostics import diagnose, has_log_weights
from vitools.draws import KINDS, is_draws
from vitools.trees import Sites, flatten_draws, site_shapes

__all__ = ["compare", "reference_draws"]

COLUMNS = [
    "objective", "family", "steps", "grad_evals", "time_s", "khat", "khat_se", "verdict", "ess",
    "rhat", "divergences", "elbo", "log_evidence", "log_evidence_se", "cubo", "missed_mass",
    "reasons",
]  # fmt: skip
# Columns only an MCMC run fills (NaN for fits): its worst R-hat and its divergent transitions; its
# ``ess`` is the smallest bulk ESS over parameters (a fit's is the importance ESS of its draws).
MCMC_COLUMNS = ["rhat", "divergences"]
# Importance-weighted columns: unreliable where k̂ is above its threshold (format_table marks them).
WEIGHTED_COLUMNS = ["ess", "log_evidence", "cubo", "missed_mass"]
# A fit that misses more than this share of the mass another fit covers reads "bad" (when the gap in
# log evidence exceeds twice its Monte Carlo error): a reverse-KL fit on one of two equal modes
# misses 0.5.
MISSED_MASS_TOL = 0.1
REFERENCE_COLUMNS = ["mean_error", "sd_ratio", "w1"]


def reference_draws(reference: Any) -> tuple[list[str], np.ndarray]:
    """Reference draws as labelled scalar columns ``(labels, (S, P) matrix)``, chains stacked.

    Args:
        reference: a container of posterior draws (:mod:`vitools.draws`): a DataTree (its
            ``posterior``), a NumPyro ``MCMC`` that has run, a dict ``name -> array`` of constrained
            draws with a leading draw axis, or a zoo ``Reference`` (its stored draws).

    Raises:
        TypeError: none of these.
        ValueError: an MCMC that has not run, a tree without ``posterior``; a dict entry has no draw
            axis or the entries disagree on the number of draws (see :func:`vitools.validate.draws`).
    """
    return flatten_draws(_reference_tree(reference, {}))


def _reference_tree(reference: Any, trees: Mapping[str, xr.DataTree]) -> xr.DataTree:
    """The reference's tree: the tree of fit ``reference`` (a key of ``trees``) or of a container."""
    if isinstance(reference, str):
        if reference not in trees:
            raise KeyError(f"reference {reference!r} is not one of the fits: {list(trees)}")
        return trees[reference]
    if not is_draws(reference):
        raise TypeError(f"reference must be a key of fits or {KINDS}, got {type(reference).__name__}")
    return draws_to_datatree(reference, what="reference draws")


def _check_one_model(trees: Mapping[str, xr.DataTree], reference: xr.DataTree | None) -> None:
    """Refuse fits (and a reference) of different models; see "One model" in the module docstring.

    The anchor is the first fit whose tree lists its latent sites, else the fit with the fewest
    variables; every other entry must agree with it (:func:`_differences`).
    """
    sites = {f"fit {name!r}": site_shapes(tree) for name, tree in trees.items()}
    anchor = min(sites, key=lambda label: (sites[label].latent is None, len(sites[label].variables)))
    if reference is not None:
        sites["the reference"] = site_shapes(reference)
    for label, other in sites.items():
        differences = _differences(sites[anchor], other)
        if differences:
            listed = "; ".join(
                f"{site}: {_shape(a)} in {anchor}, {_shape(b)} in {label}" for site, a, b in differences
            )
            raise ValueError(
                f"{anchor} and {label} disagree on the model's latent sites ({listed}): compare needs fits "
                "of one model, and a reference that holds every latent site with its shape"
            )


def _same_model_function(trees: Mapping[str, xr.DataTree]) -> bool:
    """Whether the trees that name their model function (those of Fits and MCMC runs, root attr
    ``vitools_model``) name one; warns if not.

    Fits of the same latent sites under different model functions (a Normal and a Student-t
    likelihood, say) pass :func:`_check_one_model`; their rows can still be read side by side,
    but not as approximations of one posterior, so the table's missed_mass is left NaN. Models
    are told apart by ``module.qualname``: two closures of one factory read as one model.
    """
    models: dict[str, str] = {}
    for label, tree in trees.items():
        name = tree.attrs.get(MODEL_ATTR)
        if name is not None:
            models.setdefault(str(name), label)
    if len(models) <= 1:
        return True
    listed = ", ".join(f"{label!r} ({name.rsplit('.', 1)[-1]})" for name, label in models.items())
    warnings.warn(
        f"compare: the fits come from different model functions: {listed}; their rows are not "
        "approximations of one posterior (missed_mass is left NaN)",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def _differences(a: Sites, b: Sites) -> list[tuple[str, Any, Any]]:
    """``(site, shape in a, shape in b)`` where two trees disagree: on their latent sites when both
    list them, else on those of the one that does (or on all of a's variables) against the other's
    variables, which may add deterministic sites."""
    if a.latent is not None and b.latent is not None:
        left, right = a.latent, b.latent
        names = list(left) + [site for site in right if site not in left]
    elif b.latent is not None:
        left, right, names = a.variables, b.latent, list(b.latent)
    else:
        left = a.latent if a.latent is not None else a.variables
        right, names = b.variables, list(left)
    return [(site, left.get(site), right.get(site)) for site in names if left.get(site) != right.get(site)]


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"shape {shape}"


def _distances(labels: list[str], draws: np.ndarray, ref_labels: list[str], ref: np.ndarray) -> dict:
    """Standardized mean error, sd ratio and 1-D W1 over the parameters both sides share (all
    latent ones, :func:`_check_one_model` saw to it; a deterministic site only where the reference
    has it).

    W1 is ``scipy.stats.wasserstein_distance`` per marginal on reference-standardized values
    (exact on all draws). Measured on 10 parameters, S = 2000: 5.5 ms, against 18 ms for
    arviz-stats' ``wasserstein(joint=False)``, which also subsamples 500 draws (adding noise), sums
    unscaled marginals and needs two trees with equal sample dims; the joint version is an LP solve
    (~22 s at 500 draws), unusable in a table.
    """
    ref_index = {label: j for j, label in enumerate(ref_labels)}
    shared = [(i, ref_index[label]) for i, label in enumerate(labels) if label in ref_index]
    errors, ratios, w1s = [], [], []
    for i, j in shared:
        x, y = draws[:, i], ref[:, j]
        mean, sd = y.mean(), y.std(ddof=1)
        if not sd > 0:
            continue  # a constant reference parameter (e.g. a pinned value) has no scale
        errors.append(abs(x.mean() - mean) / sd)
        ratios.append(x.std(ddof=1) / sd)
        w1s.append(scipy.stats.wasserstein_distance((x - mean) / sd, (y - mean) / sd))
    if not errors:
        return dict.fromkeys(REFERENCE_COLUMNS, math.nan)
    return {"mean_error": np.mean(errors), "sd_ratio": np.mean(ratios), "w1": np.mean(w1s)}


def compare(
    fits: Mapping[str, Any],
    reference: Any = None,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    log_evidence: float | None = None,
) -> pd.DataFrame:
    r"""Compare fits (vitools Fits, NumPyro MCMC runs, DataTrees) of one model in one table.

    Each Fit is drawn from once, by :func:`vitools.convert.to_datatree`; a tree is used as it is.
    To draw the plots or a report from the same draws, convert the fits first and pass the trees.

    Args:
        fits: ``{name: fit}``; names become the index, in the given order; or one ``Fit``, named
            by its ``name``.
        reference: ``None``, a key of ``fits`` (e.g. ``"NUTS"``; its own row then reads mean_error 0,
            w1 0), or a container of posterior draws (a DataTree, a dict of constrained draws
            ``name -> (S, ...)``, an MCMC that has run, a zoo ``Reference``).
        num_draws: draws from each Fit's q; trees and MCMC runs keep their own.
        seed: seed of every Fit's draws: a fit gets the same draws, k̂ and verdict here as from
            ``vt.diagnose(fit)`` (:data:`vitools.convert.DIAGNOSTIC_DRAWS`), wherever it sits.
        log_evidence: the model's true log evidence :math:`\log p(x) = \log \int \tilde p(x, z)\,dz`
            in nats (a float), where it is known (a zoo model's ``log_normalizer``): ``missed_mass``
            is then measured against it, with no Monte Carlo error, in every row (one fit
            included), instead of against the most trusted fit's estimate. It must be the log
            normalizer of the density the fits target (their model with its data), else every
            missed mass is off by the difference.

    Returns:
        One row per fit, columns ``COLUMNS``: ``objective``, ``family``, ``steps``,
            ``grad_evals``, ``time_s`` (seconds, :func:`_seconds`: a fit's start, its loop's
            compilation and its loop; for a fit of ``vt.auto_fit``, its whole path's: every
            attempt, see ``fit.auto``), ``khat``, ``khat_se``, ``verdict``, ``ess``
            (draws), ``rhat``, ``divergences`` (MCMC only), ``elbo``, ``log_evidence``,
            ``log_evidence_se``, ``cubo`` (nats), ``missed_mass`` (a share of the posterior
            mass, 0 to 1), ``reasons``; with a reference also ``REFERENCE_COLUMNS``:
            ``mean_error`` and ``w1`` (in units of the reference's sd, averaged over the scalar
            parameters) and ``sd_ratio``. ``table.attrs["num_draws"]`` is S;
            ``table.attrs["missed_mass_anchor"]`` is what ``missed_mass`` is measured against
            (``{"fit": name or None for the given log_evidence, "log_evidence", "log_evidence_se"}``;
            absent where there is none: no log_evidence and fewer than two estimates), and
            ``table.attrs["missed_mass_unresolved"]`` the rows whose share is within twice its
            Monte Carlo error. k̂ above threshold shows as verdict "bad" here instead of a
            warning. The module docstring (:mod:`vitools.comparison`) defines each column.

    Raises:
        ValueError: ``fits`` is empty; ``log_evidence`` is NaN or infinite; the fits are not of one
            model (their latent sites differ in names or shapes) or the reference lacks a latent
            site or holds it with another shape (the message names the fits and the sites); an
            MCMC has not run; reference draws without a common leading draw axis.
        KeyError: ``reference`` is a string that is not a key of ``fits``.
        TypeError: ``fits`` is not a dict, or a fit or the reference is of a kind compare
            cannot read; ``log_evidence`` is not a number.

    Examples:
        >>> fit_f = vt.fit(model, x, y=y, objective="forward_kl", seed=0)
        >>> table = vt.compare({"reverse KL": fit, "forward KL": fit_f, "NUTS": mcmc}, reference="NUTS")
        >>> float(table.loc["NUTS", "w1"]), table.shape  # the reference's own row: w1 0
        (0.0, (3, 20))
        >>> trees = vt.to_datatrees({"reverse KL": fit, "forward KL": fit_f})  # once, for plots too
        >>> table = vt.compare(trees, reference=mcmc)
    """
    log_evidence = None if log_evidence is None else validate.finite(log_evidence, "log_evidence")
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    ref_tree = None if reference is None else _reference_tree(reference, trees)
    _check_one_model(trees, None if isinstance(reference, str) else ref_tree)
    one_model = _same_model_function(trees)
    ref = None if ref_tree is None else flatten_draws(ref_tree)
    divergences = _divergences(ref_tree)
    if divergences:  # distances to draws that miss part of the posterior mislead
        warnings.warn(
            f"the reference had {divergences} divergent transitions: its draws may miss part of the "
            "posterior (a funnel's neck, say), so distances to it can mislead; reparameterize the model "
            "(e.g. non-centred) or raise NUTS's target_accept_prob",
            RuntimeWarning,
            stacklevel=2,
        )
    rows = []
    for name, tree in trees.items():
        row = _metadata(tree)
        if tree.attrs.get("vitools_kind") == "mcmc":
            row |= _mcmc_stats(tree)
        if has_log_weights(tree):
            try:
                diag = diagnose(tree, warn=False)
            except ValueError as err:  # e.g. NaN log densities at some draws: one row fails, not all
                warnings.warn(f"{name}: no importance diagnostics ({err})", RuntimeWarning, stacklevel=2)
                rows.append(pd.Series(row | {"verdict": "failed"}, name=name))
                continue
            row |= {
                "khat": diag.khat,
                "khat_se": diag.khat_se,
                "khat_threshold": diag.khat_threshold,
                "verdict": diag.verdict,
                "reasons": "; ".join(diag.reasons),
                "ess": diag.ess,
                "log_evidence": diag.log_evidence,
                "log_evidence_se": diag.log_evidence_se,
                "elbo": diag.elbo,
                "cubo": diag.cubo,
            }
        if ref is not None:
            row |= _distances(*flatten_draws(tree), *ref)
        rows.append(pd.Series(row, name=name))
    columns = COLUMNS + (REFERENCE_COLUMNS if ref is not None else [])
    table = pd.DataFrame(rows).reindex(columns=columns + ["khat_threshold"])
    # whether a row's importance-weighted columns can be trusted (rows without k̂ have none)
    reliable = ~(table["khat"] > table["khat_threshold"])
    table = table.drop(columns="khat_threshold")
    if one_model:  # log evidences of different models are not shares of one posterior's mass
        _flag_missed_mass(table, reliable, log_evidence)
    table.attrs["num_draws"] = num_draws  # the k̂ threshold depends on it (plots, report)
    table.attrs["reference_divergences"] = divergences  # the report says so next to the distances
    table.attrs["num_params"] = _num_params(trees)  # the model's size (vitools.advice reads it)
    table.attrs["reliable"] = reliable.to_dict()  # read by format_table
    table.attrs["subsampled"] = {  # {name: {plate: [B, N]}}: fits on minibatches (vitools.advice reads it)
        name: json.loads(tree.attrs[SUBSAMPLE_ATTR])
        for name, tree in trees.items()
        if SUBSAMPLE_ATTR in tree.attrs
    }
    return table


def _divergences(tree: xr.DataTree | None) -> int:
    """The divergent transitions of an MCMC reference (``sample_stats.diverging``), else 0."""
    stats = None if tree is None or "sample_stats" not in tree.children else tree["sample_stats"]
    if stats is None or "diverging" not in stats.data_vars:
        return 0
    return int(stats["diverging"].values.sum())


def _flag_missed_mass(table: pd.DataFrame, reliable: pd.Series, log_evidence: float | None = None) -> None:
    """Fill ``missed_mass`` and turn a fit that misses mass into "bad", with the reason.

    The anchor is ``log_evidence`` (the model's true log Z, se 0) where given, else a fit's estimate
    (:func:`_anchor`). A fit misses a share ``1 - e^-g`` of the mass for a gap g below the anchor
    (0 at or above it); it reads "bad" when that share exceeds ``MISSED_MASS_TOL`` and g exceeds
    twice the gap's Monte Carlo error ``hypot(se, anchor's se)``. Rows whose positive share lies
    within that error are listed in ``table.attrs["missed_mass_unresolved"]`` (format_table marks
    them ``?``: the share may be 0), the anchor in ``table.attrs["missed_mass_anchor"]``. NaN in
    every row where no anchor is given and fewer than two fits have an estimate.
    """
    log_z, se = table["log_evidence"], table["log_evidence_se"]
    if log_evidence is not None:
        anchor, anchor_z, anchor_se = None, log_evidence, 0.0
    elif log_z.notna().sum() < 2:  # one fit (or none) has nothing to miss mass against: not 0
        table["missed_mass"] = np.nan
        return
    else:
        anchor = _anchor(table, reliable)
        anchor_z, anchor_se = float(log_z[anchor]), float(se[anchor])
    gap = anchor_z - log_z
    table["missed_mass"] = np.maximum(-np.expm1(-gap), 0.0)
    error = np.hypot(se, anchor_se)
    table.attrs["missed_mass_anchor"] = {  # fit None: the true log evidence, given
        "fit": anchor,
        "log_evidence": anchor_z,
        "log_evidence_se": anchor_se,
    }
    table.attrs["missed_mass_unresolved"] = [
        name for name in table.index[(table["missed_mass"] > 0) & ~(gap > 2 * error)] if name != anchor
    ]
    if anchor is None:
        covers, against = "", f"the true log evidence {anchor_z:.3f} (given)"
    else:
        covers, against = f" that {anchor!r} covers", f"{anchor_z:.3f} ± {anchor_se:.3f}"
    for name in table.index[(table["missed_mass"] > MISSED_MASS_TOL) & (gap > 2 * error)]:
        reason = (
            f"misses ~{table.loc[name, 'missed_mass']:.0%} of the posterior mass{covers} (log evidence "
            f"{log_z[name]:.3f} ± {se[name]:.3f} against {against}); k̂ cannot see a mode q never visits"
        )
        table.loc[name, "verdict"] = "bad"
        table.loc[name, "reasons"] = f"{table.loc[name, 'reasons']}; {reason}"


def _anchor(table: pd.DataFrame, reliable: pd.Series) -> str:
    """The fit whose log-evidence estimate the others' missed mass is measured against.

    Among fits whose k̂ is under threshold (all fits with an estimate where none is), by tiers of
    verdict: the good fits, then the good and uncertain ones, then all. In a tier, the estimate
    whose lower end ``log Ẑ - 2 se`` is highest: the highest estimate itself can be the noisiest.
    On the zoo's banana (1000 steps, S = 4000, a fresh user's `vitools compare`) it was reverse KL
    with an IAF, 0.137 ± 0.135 (ESS 54, k̂ 0.61, verdict bad) for a true log Z of 0: hybrid/iaf
    (good, 0.0013 ± 0.0022) read a missed mass of 0.127 and reverse KL's Gaussian (-0.295) 0.35;
    anchored on hybrid/iaf they read 0 and 0.256, against 0.255 from the true log Z (measured).

    A tier's pick is taken unless another fit under threshold shows it misses mass (by the test
    that flags a fit): k̂, hence a good verdict, cannot see a mode q never visits. On the zoo's
    bimodal, chi2 with a full-rank Gaussian sat on one mode and read good (k̂ 0.12, log evidence
    -0.693) next to forward KL stopped at 100 steps, which covered both and read bad (PSIS moved
    a mean by 0.48 sd; 0.003 ± 0.030): forward KL became the anchor and chi2's fit read bad,
    missing ~50% (measured); the good fit as anchor would have flagged nothing. The last tier's
    pick is never so shown: a fit that showed it would have the higher lower end.
    """
    log_z, se, verdict = table["log_evidence"], table["log_evidence_se"], table["verdict"]
    has = log_z.notna() & se.notna()
    pool = has & reliable if (has & reliable).any() else has
    lower = log_z - 2.0 * se
    tiers = [pool & (verdict == "good"), pool & verdict.isin(("good", "uncertain")), pool]
    for tier in tiers:
        if not tier.any():
            continue
        anchor = lower[tier].idxmax()
        gap = log_z[pool] - log_z[anchor]
        shown = (-np.expm1(-gap) > MISSED_MASS_TOL) & (gap > 2 * np.hypot(se[pool], se[anchor]))
        if tier is tiers[-1] or not shown.any():
            return anchor
    raise AssertionError("unreachable: compare checks that two fits have an estimate")


def _num_params(trees: Mapping[str, xr.DataTree]) -> int:
    """Scalar latent parameters of the model, from the first tree that lists its latent sites (all
    variables of the first tree where none does)."""
    sites = [site_shapes(tree) for tree in trees.values()]
    listed = next((s.latent for s in sites if s.latent is not None), sites[0].variables)
    return int(sum(math.prod(shape) for shape in listed.values() if shape is not None))


def _metadata(tree: xr.DataTree) -> dict[str, Any]:
    attrs = tree.attrs
    return {
        "objective": attrs.get("vitools_objective", "unknown"),
        "family": attrs.get("vitools_family", "unknown"),
        "steps": attrs.get("num_steps", math.nan),
        # an auto fit costs its whole path: every attempt's evaluations and seconds, not the chosen one's
        "grad_evals": attrs.get("auto_grad_evals", attrs.get("num_grad_evals", math.nan)),
        "time_s": _seconds(attrs),
    }


def _seconds(attrs: Mapping[str, Any]) -> float:
    """The ``time_s`` of a tree's row, from its root attrs (:mod:`vitools.convert`): what the user
    waited for the row, as its record has it, in seconds.

    A fit's is its start (``init_time_s``, the start's compilation included), its loop's
    compilation (``compile_time_s``) and its loop (``elapsed_s``); a fit of ``vt.auto_fit``'s,
    its whole path's (``auto_elapsed_s``: every attempt's start, compilation and loop); an MCMC
    run's ``elapsed_s`` where one is recorded (``vitools compare --reference nuts``: its wall time,
    compilation included); else NaN. The loop alone (``elapsed_s``), the column before, made a
    fit look faster than the user's wait and than an auto fit's or a NUTS run's seconds, which
    count start and compilation: a first fit of non-centred eight schools in a process took 0.11 s
    of loop after a 3.77 s start (2 shared CPU cores; measured). Not counted: what a fit does
    not record, the model's tracing and initial point before its start and the checks after its
    loop.
    Compiled programs are reused within a process, so a model's first fit pays compilation that
    later ones need not; ``grad_evals`` is the cost that depends on neither the machine nor the
    order.
    """
    if "auto_elapsed_s" in attrs:
        return float(attrs["auto_elapsed_s"])
    if "elapsed_s" not in attrs:
        return math.nan
    return (
        float(attrs["elapsed_s"])
        + float(attrs.get("init_time_s", 0.0))
        + float(attrs.get("compile_time_s", 0.0))
    )


def _mcmc_stats(tree: xr.DataTree) -> dict[str, float]:
    """An MCMC run's own diagnostics: ``rhat`` the largest rank-normalized split R-hat and ``ess``
    the smallest bulk ESS over its scalar parameters (Vehtari et al. 2021, "Rank-normalization,
    folding, and localization", via arviz-stats; constant parameters, e.g. pinned values, are
    skipped), ``divergences`` the divergent transitions after warm-up (NaN where the sampler
    records none)."""
    import arviz_stats as azs  # imported on use: ~0.5 s, and only MCMC rows need it

    posterior = tree["posterior"].to_dataset()
    rhat, ess = (
        np.concatenate([np.ravel(v.values) for v in stat(posterior).data_vars.values()] + [np.zeros(0)])
        for stat in (azs.rhat, azs.ess)
    )
    stats = tree.children.get("sample_stats")
    diverging = stats["diverging"] if stats is not None and "diverging" in stats.data_vars else None
    return {
        "rhat": float(np.nanmax(rhat)) if np.isfinite(rhat).any() else math.nan,
        "ess": float(np.nanmin(ess)) if np.isfinite(ess).any() else math.nan,
        "divergences": math.nan if diverging is None else int(diverging.values.sum()),
    }
