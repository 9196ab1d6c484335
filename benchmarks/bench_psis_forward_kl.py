"""Forward KL with raw vs PSIS-smoothed weights (``ForwardKL(pareto_smooth=...)``): W1 to the reference
and k̂ of the fitted q, on zoo banana, funnel, bimodal and a 10-D correlated Gaussian, two seeds each.

W1 and k̂ come from :func:`vitools.compare` against each model's reference draws (W1: the mean 1-D
Wasserstein-1 distance of reference-standardized marginals; k̂: PSIS k̂ of q's importance weights on
its own draws). Also reported: the mean over the last 200 steps of the per-step k̂ of the training
weights (``fit.trace["khat"]``, smoothed fits only), and the wall time of each fit.

Run: ``python benchmarks/bench_psis_forward_kl.py [--steps 2000] [--models banana,funnel]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import vitools as vt
from vitools.models import get_model
from vitools.objectives.forward_kl import ForwardKL

# gaussian_10: gaussian_100's construction in 10-D (AR(1) correlation 0.9, scales 0.1 to 10):
# ill-conditioned and correlated, small enough for forward KL's default 64 draws per step.
DIM = 10
MEAN = np.linspace(-2.0, 2.0, DIM)
SCALES = np.logspace(-1.0, 1.0, DIM)
LAGS = np.abs(np.subtract.outer(np.arange(DIM), np.arange(DIM)))
COV = 0.9**LAGS * np.outer(SCALES, SCALES)


def gaussian_10() -> None:
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN), jnp.asarray(COV)))


def model_and_reference(name: str):
    if name == "gaussian_10":
        draws = np.random.default_rng(0).multivariate_normal(MEAN, COV, size=4000)
        return gaussian_10, {"x": draws}
    zoo = get_model(name)
    return zoo.model, zoo.reference()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--models", default="banana,funnel,bimodal,gaussian_10")
    args = parser.parse_args()
    print(f"{'model':12s} {'smooth':6s} {'seed':4s} {'w1':>7s} {'khat':>6s} {'step_khat':>9s} {'time_s':>6s}")
    for name in args.models.split(","):
        model, reference = model_and_reference(name)
        zoo = None if name == "gaussian_10" else get_model(name)
        for smooth in (False, True):
            for seed in range(args.seeds):
                tic = time.perf_counter()
                fit = vt.fit(
                    model,
                    *(zoo.args if zoo else ()),
                    objective=ForwardKL(pareto_smooth=smooth),
                    num_steps=args.steps,
                    seed=seed,
                    progress=False,
                    **(zoo.kwargs if zoo else {}),
                )
                seconds = time.perf_counter() - tic
                row = vt.compare({"fit": fit}, reference=reference).iloc[0]
                step_khat = np.nanmean(fit.trace["khat"][-200:]) if smooth else np.nan
                print(
                    f"{name:12s} {smooth!s:6s} {seed:4d} {row['w1']:7.3f} {row['khat']:6.2f} "
                    f"{step_khat:9.2f} {seconds:6.1f}",
                    flush=True,
                )
                jax.clear_caches()


if __name__ == "__main__":
    main()
