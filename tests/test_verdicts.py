"""Verdicts a user can trust (issue 11): the same fit reads the same everywhere."""

import numpy as np
import numpyro
import numpyro.distributions as dist

import vitools as vt
from vitools.convert import DIAGNOSTIC_DRAWS, to_datatrees
from vitools.plots import plot_khat

Y = np.array([0.3, 1.2, -0.4, 2.2, 0.9, 1.4, 0.1, 1.7])


def normal_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_a_fit_reads_the_same_from_diagnose_compare_and_the_plots_wherever_it_sits():
    """compare once drew fit i with seed + i, so the second fit's row disagreed with
    vt.diagnose(fit) (the quickstart's forward-KL fit: k̂ 0.29 "good" there, 0.73 "bad" in the
    table). A fit's draws now depend on (num_draws, seed) only."""
    fits = {
        name: vt.fit(normal_model, Y, objective=name, num_steps=300, progress=False)
        for name in ("reverse_kl", "forward_kl")
    }
    table = vt.compare(fits)
    again = vt.compare(dict(reversed(list(fits.items()))))  # the other order
    trees = to_datatrees(fits)
    for name, fit in fits.items():
        alone = vt.diagnose(fit)
        assert alone.num_draws == DIAGNOSTIC_DRAWS
        assert table.loc[name, "khat"] == alone.khat == again.loc[name, "khat"]
        assert table.loc[name, "verdict"] == alone.verdict == again.loc[name, "verdict"]
        assert vt.diagnose(trees[name]).khat == alone.khat  # what the plots and report read
    bars = plot_khat(table)
    heights = sorted(round(p.get_height(), 12) for p in bars.axes[0].patches)
    assert heights == sorted(round(float(k), 12) for k in table["khat"])
