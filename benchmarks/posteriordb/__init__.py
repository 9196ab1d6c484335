"""The posteriordb development corpus (``../shared/posteriordb``) as NumPyro models.

Each module translates one posterior's ``model.stan`` the way a modeller moving from Stan would:
``model(data)`` takes the dict read from ``data.json`` (sizes, 1-based indices and all), and its
site names match the reference draws (Stan's ``beta[1]`` is ``beta[0]`` of one site ``beta``).

Example:
    >>> from benchmarks.posteriordb import load
    >>> model, data, reference = load("kidiq-kidscore_momiq")
    >>> fit = vt.fit(model, data)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import (
    arma_arma11,
    bball_drive_event_0_hmm_drive_0,
    earnings_earn_height,
    earnings_logearn_interaction_z,
    hmm_example_hmm_example,
    hudson_lynx_hare_lotka_volterra,
    kidiq_kidscore_interaction,
    kidiq_kidscore_momiq,
    kidiq_with_mom_work_kidscore_interaction_c,
    nes1996_nes,
    one_comp_mm_elim_abs_one_comp_mm_elim_abs,
)

__all__ = ["CORPUS_DIR", "ODE_POSTERIORS", "POSTERIORS", "load"]

# The corpus sits beside the repository (``../shared/posteriordb`` from its root) unless
# $VITOOLS_POSTERIORDB points elsewhere.
CORPUS_DIR = Path(
    os.environ.get(
        "VITOOLS_POSTERIORDB", Path(__file__).resolve().parents[2].parent / "shared" / "posteriordb"
    )
)

# posterior name (the corpus folder) -> model(data)
POSTERIORS: dict[str, Callable] = {
    "arma-arma11": arma_arma11.model,
    "earnings-earn_height": earnings_earn_height.model,
    "earnings-logearn_interaction_z": earnings_logearn_interaction_z.model,
    "kidiq-kidscore_momiq": kidiq_kidscore_momiq.model,
    "kidiq-kidscore_interaction": kidiq_kidscore_interaction.model,
    "kidiq_with_mom_work-kidscore_interaction_c": kidiq_with_mom_work_kidscore_interaction_c.model,
    "nes1996-nes": nes1996_nes.model,
    "hmm_example-hmm_example": hmm_example_hmm_example.model,
    "bball_drive_event_0-hmm_drive_0": bball_drive_event_0_hmm_drive_0.model,
    "hudson_lynx_hare-lotka_volterra": hudson_lynx_hare_lotka_volterra.model,
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs": one_comp_mm_elim_abs_one_comp_mm_elim_abs.model,
}
# The two that solve an ODE inside the model (slow: seconds per thousand gradients).
ODE_POSTERIORS = ("hudson_lynx_hare-lotka_volterra", "one_comp_mm_elim_abs-one_comp_mm_elim_abs")


def load(name: str) -> tuple[Callable, dict, dict[str, np.ndarray]]:
    """``(model, data, reference)`` of one posterior: ``data`` as ``json.load`` reads ``data.json``,
    ``reference`` its 1000 reference draws per parameter, ``name -> (1000, *shape)``.

    Raises:
        KeyError: not a corpus posterior.
        FileNotFoundError: the corpus folder is missing (see ``CORPUS_DIR``).
    """
    if name not in POSTERIORS:
        raise KeyError(f"unknown posterior {name!r}; the corpus has {sorted(POSTERIORS)}")
    folder = CORPUS_DIR / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: set VITOOLS_POSTERIORDB to the corpus folder")
    data = json.loads((folder / "data.json").read_text())
    with np.load(folder / "reference_draws.npz") as npz:
        reference = {k: npz[k] for k in npz.files}
    return POSTERIORS[name], data, reference
