"""Quickstart: fit one NumPyro model in both KL directions and compare the two fits.

Run: ``python examples/quickstart.py`` (about 20 s on a laptop CPU). Writes ``quickstart_marginals.png``.

Reverse KL, KL(q‖p), is what ``numpyro.infer.SVI`` minimises: mode-seeking, it tends to be too
narrow. Forward KL, KL(p‖q), is mass-covering: q must put mass wherever the posterior has some.
"""

import numpy as np
import numpyro
import numpyro.distributions as dist

import vitools as vt
from vitools.plots import plot_marginals
from vitools.tables import format_table


def model(y: np.ndarray) -> None:
    """A normal mean and scale from 8 observations: the scale's posterior is skewed."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(5.0))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def main() -> None:
    y = np.array([2.1, -0.3, 4.0, 1.2, 3.3, 0.8, 5.1, 1.9])
    fits = {
        "reverse KL": vt.fit(model, y, objective="reverse_kl", family="fullrank", num_steps=2000),
        "forward KL": vt.fit(model, y, objective="forward_kl", family="fullrank", num_steps=2000),
    }
    for name, fit in fits.items():
        print(f"\n{name}: {fit}")
        print(vt.diagnose(fit, warn=False))  # the draws compare reads below: same verdict
    table = vt.compare(fits)  # add reference=... (e.g. NUTS draws) for distance columns
    print()
    print(format_table(table))
    plot_marginals(fits).savefig("quickstart_marginals.png", dpi=100)
    print("\nmarginals: quickstart_marginals.png")


if __name__ == "__main__":
    main()
