r"""Predictions from a fit: q as a NumPyro guide, posterior predictive draws, the DataTree groups
ArviZ reads (``posterior_predictive``, ``observed_data``, ``log_likelihood``), and PSIS-LOO
corrected for drawing from q instead of the posterior.

Which one to use:

- ``fit.predictive(num_draws, x_new)`` (:func:`predict`): predictive draws at new data, made from
  the fit's own draws ``fit.sample(num_draws, seed)``; leave the model's observed argument None
  (``y=None``), as for NumPyro's ``Predictive``. With no model arguments it replicates the
  fitted data (the model's observed sites drawn afresh).
- ``fit.guide`` (:class:`FitGuide`): q as a NumPyro guide, for NumPyro code that takes one:
  ``Predictive(model, guide=fit.guide, num_samples=1000)(key, x_new)``, ``Trace_ELBO``... Its
  draws are fresh ones, made with Predictive's key.
- :func:`add_predictive`: the three groups on a fit's tree, computed at the tree's own draws, so
  ``log_likelihood`` lines up with ``sample_stats.log_p``/``log_q``.
- :func:`loo`: PSIS-LOO of a fit, an MCMC run or either's tree, as the ELPDData ``az.compare``
  takes, so VI and NUTS are compared the same way.

Examples:
    >>> fit = vt.fit(model, x, y=y, family="fullrank")
    >>> fit.predictive(1000, x_new)["y"].shape  # (1000, len(x_new))
    (1000, 5)
    >>> elpds = vt.loo(fit).elpd, vt.loo(mcmc).elpd
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import arviz_base as azb
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr
from arviz_base.io_numpyro import infer_dims
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.infer import MCMC, Predictive
from numpyro.infer.util import log_likelihood

from vitools import validate
from vitools.convert import DIAGNOSTIC_DRAWS, fit_to_datatree, variable_names
from vitools.draws import SITE_ATTR, draws_dict, is_draws
from vitools.model import ModelDensity, unravel
from vitools.result import Fit
from vitools.subsample import full_data_model
from vitools.trees import SAMPLE_DIMS

__all__ = ["LATENT_SITE", "FitGuide", "add_predictive", "loo", "predict"]

LATENT_SITE = "_vitools_latent"  # the guide's auxiliary site: q's flat unconstrained draw


def _model_density(fit: Fit) -> ModelDensity:
    if not isinstance(fit, Fit):
        raise TypeError(f"expected a vitools Fit, got {type(fit).__name__}")
    if not isinstance(fit.target.density, ModelDensity):
        raise ValueError("the fit is of a plain log density: there is no model to predict with")
    return fit.target.density


def _model(fit: Fit) -> Callable:
    """The fit's model with its ``numpyro.param`` sites at the fitted point estimates, on all
    rows of whatever data it is given (:func:`vitools.subsample.full_data_model`: a prediction,
    a log likelihood, is over every row, and the fit's N need not be the new data's)."""
    density = _model_density(fit)
    model = full_data_model(density.model)
    if not density.param_sites:
        return model
    return handlers.substitute(model, data=fit.target.point_estimates())


def _arguments(fit: Fit, model_args: tuple, model_kwargs: dict) -> tuple[tuple, dict]:
    """The model arguments given, or the fit's own where none are."""
    if model_args or model_kwargs:
        return model_args, model_kwargs
    return _model_density(fit).arguments()


@dataclasses.dataclass(frozen=True, eq=False)
class FitGuide:
    r"""q as a NumPyro guide: ``guide(*model_args, **model_kwargs)`` draws one flat
    unconstrained ``u ~ q`` at the auxiliary site ``_vitools_latent`` and emits each latent site
    as ``Delta(T(u), log_density=-log|det J_T|)``, as NumPyro's ``AutoContinuous`` guides do, so
    the guide's log density is q's in the constrained space (:meth:`Fit.log_prob`) and
    ``Trace_ELBO`` reads it right. The transforms ``T`` are taken from the model run at this draw
    (a support that depends on another site uses this draw's value); ``numpyro.param`` sites are
    emitted at the fit's point estimates, so ``Predictive`` substitutes them into the model.

    The model arguments are accepted and ignored: q is the posterior given the fitted data, and
    the draws are constrained with the fit's own arguments. A model whose latent sites change
    shape with the data (one latent per row) cannot be predicted at new data this way. A model
    that subsamples data (``plate(..., subsample_size=B)``) predicts B random rows under
    ``Predictive``: pass it :func:`vitools.subsample.full_data_model` of the model for all rows
    (``fit.predictive`` does).

    Attributes:
        fit: the vitools fit whose q this is.

    Raises:
        ValueError: the fit is of a plain log density (no model), when the guide is made.

    Examples:
        >>> from numpyro.infer import Predictive
        >>> pred = Predictive(model, guide=fit.guide, num_samples=1000)
        >>> pred(jax.random.key(1), x_new)["y"].shape  # (1000, len(x_new))
        (1000, 5)
    """

    fit: Fit

    def __post_init__(self) -> None:
        _model_density(self.fit)  # usable at once: a fit without a model fails here

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> dict[str, jax.Array]:
        fit = self.fit
        density = fit.target.density
        for name, value in fit.target.point_estimates().items():
            numpyro.param(name, value)
        flat = numpyro.sample(LATENT_SITE, fit.distribution, infer={"is_auxiliary": True})
        values = {}
        for name, (value, log_det, event_dim) in _constrain(fit, density.sites, flat).items():
            delta = dist.Delta(value, log_density=-log_det, event_dim=event_dim)
            values[name] = numpyro.sample(name, delta)
        return values


def _constrain(fit: Fit, sites: tuple, flat: jax.Array) -> dict[str, tuple[jax.Array, jax.Array, int]]:
    """Site → (constrained value, log|det J| summed over the event dims, event dim) of one flat
    unconstrained draw, from one run of the model at it (NumPyro's own transforms, as
    ``constrain_fn`` applies them), hidden from the handlers around the guide."""
    unconstrained = unravel(sites, flat)
    args, kwargs = _model_density(fit).arguments()

    def substitute_fn(site: dict) -> jax.Array | None:
        if site["type"] == "sample" and site["name"] in unconstrained:
            return biject_to(site["fn"].support)(unconstrained[site["name"]])
        return None

    with handlers.block():
        trace = handlers.trace(handlers.substitute(_model(fit), substitute_fn=substitute_fn)).get_trace(
            *args, **kwargs
        )
    out = {}
    for site in sites:
        fn, value, u = trace[site.name]["fn"], trace[site.name]["value"], unconstrained[site.name]
        log_det = biject_to(fn.support).log_abs_det_jacobian(u, value)
        log_det = sum_rightmost(log_det, jnp.ndim(log_det) - jnp.ndim(value) + fn.event_dim)
        out[site.name] = (value, log_det, fn.event_dim)
    return out


def predict(
    fit: Fit,
    num_draws: int,
    *model_args: Any,
    seed: int = 0,
    return_sites: list[str] | None = None,
    **model_kwargs: Any,
) -> dict[str, np.ndarray]:
    """Posterior predictive draws from a fit's own draws (``fit.predictive``).

    NumPyro's ``Predictive(model, posterior_samples=fit.sample(num_draws, seed))`` with the
    fit's point estimates as ``params``: draw s of every site is made from draw s of q, the same
    draws ``fit.sample(num_draws, seed)`` returns.

    Args:
        fit: a fit of a NumPyro model.
        num_draws: S, the number of draws.
        *model_args: the model's positional arguments, e.g. new covariates (``x_new``). None
            given (and no ``model_kwargs``): the fitted data, with the model's observed sites
            drawn afresh (replicated data, ``y_rep``).
        **model_kwargs: the model's keyword arguments, the observed one left None (``y=None``).
            A model that subsamples data predicts every row given (its subsampling plates run on
            all rows, :func:`vitools.subsample.full_data_model`).
        seed: seed of q's draws (as ``fit.sample``); the predictive noise uses a key folded
            from it.
        return_sites: sites to return; None: as ``Predictive``, every site not among q's draws
            (the observed ones) and every deterministic site.

    Returns:
        Site → array ``(S, *site shape)`` (host arrays).

    Raises:
        ValueError: ``num_draws`` is not a positive integer; the fit is of a plain log density.

    Examples:
        >>> fit.predictive(1000, x_new)["y"].shape  # (1000, len(x_new)); model(x, y=None)
        (1000, 5)
        >>> fit.predictive(1000)["y"].shape  # replicates of the fitted y, (1000, len(x))
        (1000, 50)
    """
    model = _model(fit)
    key = validate.seed_or_key(seed, None)
    draws = fit.sample(num_draws, seed)
    draws = {name: draws[name] for name in fit.target.site_names}
    if not (model_args or model_kwargs):
        model = handlers.uncondition(model)
        model_args, model_kwargs = _model_density(fit).arguments()
    predictive = Predictive(
        model, posterior_samples=draws, params=fit.target.point_estimates(), return_sites=return_sites
    )
    return jax.device_get(predictive(jax.random.fold_in(key, 1), *model_args, **model_kwargs))


def _observed(model: Callable, args: tuple, kwargs: dict, draw: dict) -> dict[str, np.ndarray]:
    """The observed sites (``numpyro.factor`` terms excepted) and their values, at one draw."""
    trace = handlers.trace(handlers.seed(handlers.substitute(model, data=draw), 0)).get_trace(*args, **kwargs)
    return {
        name: np.asarray(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and not isinstance(site["fn"], dist.Unit)
    }


def _check_tree(tree: xr.DataTree, fit: Fit) -> dict[str, np.ndarray]:
    """The tree's latent draws ``site -> (chain * draw, ...)``, checked to be the fit's sites and,
    where the tree holds ``log_q`` (a fit's tree), to be draws of this fit's q."""
    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"tree must be an xarray.DataTree, got {type(tree).__name__}")
    draws = draws_dict(tree, "the tree's draws")
    missing = [name for name in fit.target.site_names if name not in draws]
    if missing:
        raise ValueError(
            f"the tree lacks the fit's latent site(s) {missing}: it is not a tree of this fit's model"
        )
    draws = {name: draws[name] for name in fit.target.site_names}
    validate.draws(draws, fit.target.constrained_shapes(), "the tree's draws")
    stats = tree.children.get("sample_stats")
    if stats is not None and "log_q" in stats.data_vars:
        log_q = np.asarray(stats["log_q"].transpose(*SAMPLE_DIMS).values).ravel()
        # float32 fits recompute log q through the constraining transform and back: 1.5e-5 apart
        # at |log q| ~ 10 (measured); another fit's q is nats away
        # (the tree's log q is float64 whatever the fit's dtype: the fit's own, recomputed, sets it)
        recomputed = fit.log_prob(draws)
        coarser = max(np.finfo(log_q.dtype).eps, np.finfo(recomputed.dtype).eps)
        tol = max(1e-6, 10 * float(np.sqrt(coarser)))
        if not np.allclose(recomputed, log_q, rtol=tol, atol=tol):
            raise ValueError(
                "the tree's sample_stats.log_q is not this fit's log q at the tree's draws: "
                "the tree was drawn from another fit"
            )
    return draws


def add_predictive(
    tree: xr.DataTree,
    fit: Fit,
    *model_args: Any,
    seed: int | None = None,
    key: jax.Array | None = None,
    **model_kwargs: Any,
) -> xr.DataTree:
    r"""A copy of ``tree`` with ``posterior_predictive``, ``observed_data`` and
    ``log_likelihood`` groups, computed at the tree's own posterior draws.

    On a fit's tree (:func:`vitools.convert.fit_to_datatree`) draw s of each group goes with
    draw s of ``sample_stats.log_p``/``log_q``, which is what the LOO correction for q needs
    (:func:`loo`). The log likelihood is NumPyro's ``log_likelihood``: each observed site's
    ``log_prob`` at its observed values, one term per element of the site's batch shape (a site
    under ``.to_event`` gives one term); ``numpyro.factor`` terms are left out. The posterior
    predictive draws the observed sites afresh (NumPyro's ``uncondition``) at each draw.

    Args:
        tree: a tree with a ``posterior`` group holding the fit's latent sites: a fit's tree, or
            a tree of other draws of the same model (an MCMC run's).
        fit: the fit of the tree's model; its model and data are used, so the data need not be
            given again.
        *model_args: other positional arguments holding the observations (default: the fit's
            own).
        **model_kwargs: other keyword arguments holding the observations (default: the fit's
            own).
        seed: seed of the predictive draws (None: 0).
        key: a JAX PRNG key instead of ``seed``; give one of the two at most.

    Returns:
        The new tree: ``posterior_predictive`` and ``log_likelihood`` over
            ``(chain, draw, *site dims)``, ``observed_data`` over the site dims; dims are named
            by the model's plates where NumPyro can tell them (as the posterior's are), else
            ``{site}_dim_{i}``. Groups of those names already in ``tree`` are replaced.

    Raises:
        TypeError: ``tree`` is not a DataTree or ``fit`` not a Fit.
        ValueError: the fit is of a plain log density; the tree lacks the fit's latent sites or
            holds draws of another q (its ``log_q`` is not the fit's at its draws); the model has
            no observed sites.

    Examples:
        >>> tree = vt.add_predictive(vt.to_datatree(fit), fit)
        >>> dict(tree.log_likelihood["y"].sizes)  # log p(y_i | z_s)
        {'chain': 1, 'draw': 10000, 'data': 50}
    """
    key = validate.seed_or_key(seed, key)
    return _with_groups(tree, fit, model_args, model_kwargs, key)


def _with_groups(
    tree: xr.DataTree, fit: Fit, model_args: tuple, model_kwargs: dict, key: jax.Array | None
) -> xr.DataTree:
    """:func:`add_predictive`; without ``key`` (LOO) the posterior predictive is not drawn."""
    model = _model(fit)
    draws = _check_tree(tree, fit)
    args, kwargs = _arguments(fit, model_args, model_kwargs)
    observed = _observed(model, args, kwargs, {name: value[0] for name, value in draws.items()})
    if not observed:
        raise ValueError("the model has no observed sites: there is nothing to predict or to score")
    names = variable_names(observed)
    shape = (tree["posterior"].sizes["chain"], tree["posterior"].sizes["draw"])

    def per_draw(values: dict) -> dict[str, np.ndarray]:
        return {names[n]: np.asarray(values[n]).reshape(shape + np.shape(values[n])[1:]) for n in observed}

    groups = {
        "log_likelihood": per_draw(log_likelihood(model, draws, *args, **kwargs)),
        "observed_data": {names[n]: value for n, value in observed.items()},
    }
    if key is not None:
        replicate = Predictive(
            handlers.uncondition(model),
            posterior_samples=draws,
            params=fit.target.point_estimates(),
            return_sites=list(observed),
        )
        groups["posterior_predictive"] = per_draw(replicate(key, *args, **kwargs))
    dims = {names[n]: d for n, d in _plate_dims(model, args, kwargs, observed).items()}
    made = azb.from_dict(groups, dims=dims)
    out = tree.copy()
    for group in groups:
        node = made[group].to_dataset()
        for site, name in names.items():
            if site != name:
                node[name].attrs[SITE_ATTR] = site
        out[group] = xr.DataTree(node)
    return out


def _plate_dims(model: Callable, args: tuple, kwargs: dict, observed: dict) -> dict[str, list[str]]:
    """Plate names of each observed site's leading axes (arviz-base's NumPyro plate inference,
    as the posterior's in :mod:`vitools.convert`); a site whose names do not fit keeps ArviZ's
    ``{site}_dim_{i}``."""
    try:
        inferred = infer_dims(model, args, kwargs)
    except Exception:  # dim names are cosmetic: never fail over them
        return {}
    return {
        name: list(dims)
        for name, dims in inferred.items()
        if name in observed and len(dims) <= np.ndim(observed[name])
    }


def loo(
    obj: Any,
    *,
    var_name: str | None = None,
    pointwise: bool = True,
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
) -> Any:
    r"""PSIS-LOO of a fit, corrected for q; of an MCMC run, plain: one ELPDData either way.

    Draws from q are not draws from the posterior p, so PSIS-LOO's ratios
    :math:`1 / p(y_i \mid z_s)` are multiplied by :math:`p(z_s \mid y) / q(z_s)`:

    .. math::
        \log r_{is} = -\log p(y_i \mid z_s) + \log \tilde p(y, z_s) - \log q(z_s),
        \qquad z_s \sim q,

    Pareto-smoothed per observation (r_eff = 1: q's draws are independent), and
    :math:`\widehat{\mathrm{elpd}}_i = \log \sum_s \bar w_{is} p(y_i \mid z_s)` with
    :math:`\bar w_{is}` the normalized smoothed weights (Magnusson, Riis Andersen, Jonasson and
    Vehtari 2019, "Bayesian leave-one-out cross-validation for large data", ICML). This is
    arviz-stats' ``loo_approximate_posterior``, fed the tree's ``log_likelihood`` group and
    ``sample_stats.log_p``/``log_q`` (both in the constrained space, so the Jacobians cancel).
    Without the correction (``az.loo`` on q's draws) the estimate is that of q's predictive
    distribution, not the posterior's. The Pareto k of observation i covers both q's error and
    the leave-one-out step: a k above ``good_k`` says the estimate of that term is unreliable.

    Cost on large data: the log likelihood is a ``(num_draws, n)`` matrix held in memory, in the
    fit's float dtype (float32 unless JAX's x64 is on: 4 GB at n = 10^5 and the default 10,000
    draws), and arviz-stats Pareto-smooths each observation's draws in turn, so the CPU time grows
    with n, and less than in proportion to the draws. From ~10^4 observations on, pass
    ``num_draws=2000``: a fifth of the memory, about half the CPU, ``elpd`` within 0.1-0.2 nats
    against standard errors of 54-122 (measured on a logistic regression; figures in the docs'
    "LOO on large data", docs/howto/save-load-predict.md).

    Args:
        obj: a vitools ``Fit`` (drawn with ``fit_to_datatree(fit, num_draws, seed)``, groups added
            by :func:`add_predictive`), a NumPyro ``MCMC`` that has run (plain ``az.loo`` with its
            own r_eff, the log likelihood computed by ``az.from_numpyro``), or a DataTree with a
            ``log_likelihood`` group (corrected where its ``sample_stats`` holds ``log_p`` and
            ``log_q``, plain otherwise).
        var_name: the ``log_likelihood`` variable (observed site) to score, where there are
            several.
        pointwise: keep ``elpd_i`` and ``pareto_k`` per observation.
        num_draws: the draws from a fit's q (default: the diagnostic draws every vitools
            consumer uses, :data:`vitools.convert.DIAGNOSTIC_DRAWS`); ignored for the others.
            Memory grows with ``num_draws x n``: fewer draws on large data (above).
        seed: the seed of those draws; ignored for the others.

    Returns:
        (ELPDData): arviz-stats' ``ELPDDataLOO``: ``elpd`` (the estimate of
            :math:`\sum_i \log p(y_i \mid y_{-i})`, nats), ``se`` (its standard error over
            observations), ``p`` (effective number of parameters), ``n_samples``,
            ``n_data_points``, and with ``pointwise`` ``elpd_i`` and ``pareto_k`` (DataArrays
            over the observations); ``warning`` and ``good_k`` (``min(1 - 1/log10 S, 0.7)``);
            ``approx_posterior`` is True for a corrected estimate.
            ``az.compare({"vi": vt.loo(fit), "nuts": vt.loo(mcmc)})`` takes it.

    Raises:
        TypeError: ``obj`` is none of these (a dict of draws has no log likelihood).
        ValueError: a tree without a ``log_likelihood`` group; a fit of a plain log density; a
            model without observed sites; as arviz-stats (several observed sites and no
            ``var_name``).

    Examples:
        >>> vi, nuts = vt.loo(fit), vt.loo(mcmc)  # mcmc: NumPyro's NUTS on the same model
        >>> vi.approx_posterior, vi.elpd_i.shape
        (True, (50,))
        >>> import arviz as az
        >>> table = az.compare({"vi": vi, "nuts": nuts})
    """
    import arviz_stats as azs  # imported on use (~0.5 s)

    if isinstance(obj, Fit):
        tree = _with_groups(fit_to_datatree(obj, num_draws=num_draws, seed=seed), obj, (), {}, None)
    elif isinstance(obj, MCMC):
        tree = azb.from_numpyro(obj, log_likelihood=True)
    elif isinstance(obj, xr.DataTree):
        tree = obj
    elif is_draws(obj):
        raise TypeError(
            f"vt.loo needs a log likelihood, and {type(obj).__name__} of posterior draws has none: "
            "pass the Fit or the MCMC, or a tree with a log_likelihood group (vt.add_predictive)"
        )
    else:
        raise TypeError(f"vt.loo takes a vitools Fit, a numpyro MCMC or a DataTree; got {type(obj).__name__}")
    if "log_likelihood" not in tree.children:
        raise ValueError(
            "the tree has no log_likelihood group: add it with vt.add_predictive(tree, fit) (a fit's "
            "tree) or az.from_numpyro(mcmc, log_likelihood=True), or pass the Fit or the MCMC itself"
        )
    stats = tree.children.get("sample_stats")
    if stats is not None and {"log_p", "log_q"} <= set(stats.data_vars):
        return azs.loo_approximate_posterior(
            tree, stats["log_p"], stats["log_q"], pointwise=pointwise, var_name=var_name
        )
    return azs.loo(tree, pointwise=pointwise, var_name=var_name)
