"""vitools: variational inference in both KL directions on NumPyro models, compiled with JAX.

Examples:
    >>> import vitools as vt
    >>> fit = vt.fit(model, x, y=y, objective="forward_kl", family="fullrank")
    >>> draws = fit.sample(1000, seed=1)
"""

from vitools.auto import auto_fit
from vitools.autopath import AutoPath
from vitools.cache import enable_compilation_cache
from vitools.comparison import compare
from vitools.convert import to_datatree, to_datatrees
from vitools.diagnostics import Diagnostics, diagnose
from vitools.families import IAF, AutoGuideFamily, Coupling, FullRank, GaussianMixture, LowRank, MeanField
from vitools.fitting import fit
from vitools.many import FitMany, fit_many
from vitools.objectives import (
    IWAE,
    BatchAndMatch,
    ChiSquare,
    ForwardKL,
    ForwardKLFromDraws,
    Hybrid,
    MarkovianScoreClimbing,
    RenyiAlpha,
    ReverseKL,
    weighted_cross_entropy,
)
from vitools.pathfinder import Pathfinder, pathfinder
from vitools.persist import load, save
from vitools.predictive import add_predictive, loo
from vitools.report import report
from vitools.result import Fit, NonFiniteLossError
from vitools.subsample import full_data_model
from vitools.summary import summary
from vitools.tables import format_table
from vitools.targets import Target
from vitools.trees import as_single_chain
from vitools.vsbc import VSBC, vsbc

__version__ = "0.1.0"


__all__ = [
    "AutoGuideFamily",
    "AutoPath",
    "BatchAndMatch",
    "ChiSquare",
    "Coupling",
    "Diagnostics",
    "Fit",
    "FitMany",
    "ForwardKL",
    "ForwardKLFromDraws",
    "FullRank",
    "GaussianMixture",
    "Hybrid",
    "IAF",
    "IWAE",
    "LowRank",
    "MarkovianScoreClimbing",
    "MeanField",
    "NonFiniteLossError",
    "Pathfinder",
    "RenyiAlpha",
    "ReverseKL",
    "Target",
    "VSBC",
    "add_predictive",
    "as_single_chain",
    "auto_fit",
    "compare",
    "diagnose",
    "enable_compilation_cache",
    "fit",
    "fit_many",
    "format_table",
    "full_data_model",
    "load",
    "loo",
    "pathfinder",
    "report",
    "save",
    "summary",
    "to_datatree",
    "to_datatrees",
    "vsbc",
    "weighted_cross_entropy",
]
