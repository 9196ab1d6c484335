"""Plots that compare approximations of one posterior: marginals, a pair plot, k̂ bars, traces.

Every function returns the ``matplotlib.figure.Figure`` (a list of them for
:func:`plot_marginal_pages`) and never calls ``show``, so it runs under the Agg backend (CI, the
CLI) as well as in a notebook. Fits may be vitools ``Fit`` objects, NumPyro ``MCMC`` runs or
DataTrees (convert once with :func:`vitools.convert.to_datatree` and pass the trees when several
plots share them, with the Fits behind them as ``exact=`` for exact Gaussian densities).

- :mod:`vitools.plots.marginals`: :func:`plot_marginals`, :func:`plot_marginal_pages`;
- :mod:`vitools.plots.pair`: :func:`plot_pair` (where the draws are);
- :mod:`vitools.plots.diagnostics`: :func:`plot_khat`, :func:`plot_traces` (how far to trust each fit);
- :mod:`vitools.plots.vsbc`: :func:`plot_vsbc` (calibration of a fit over simulated datasets, ``vt.vsbc``);
- :mod:`vitools.plots.panels` (what a panel reads and its axes) and :mod:`vitools.plots.exact`
  (a Gaussian fit's exact densities) serve them.
"""

from vitools.plots.diagnostics import plot_khat, plot_traces
from vitools.plots.marginals import plot_marginal_pages, plot_marginals
from vitools.plots.pair import plot_pair
from vitools.plots.vsbc import plot_vsbc

__all__ = ["plot_khat", "plot_marginal_pages", "plot_marginals", "plot_pair", "plot_traces", "plot_vsbc"]
