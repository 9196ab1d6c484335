r"""Measurements behind :mod:`vitools.objectives.bounds` (IWAE, DReG, CHIVI's χ² upper bound).

1. ``mass``: is ChiSquare mass-covering? A mean-field Gaussian fitted to a 2-D Gaussian with unit
   variances and correlation 0.9, by each objective: its sds against the marginal sd 1 (forward KL's
   answer) and the conditional sd 0.436 (reverse KL's). For χ² the exact optimum is sd 1.388
   (minimise :math:`|D|^{1/2} |2\Sigma^{-1} - D^{-1}|^{-1/2}` over :math:`D = s^2 I`).
2. ``rate``: the learning rate of ChiSquare: vt.fit's default rule (0.2/sqrt(d) in [0.01, 0.1]) against
   forward KL's (0.5/d in [0.005, 0.1]) on zoo models, w1 to the reference and k̂ (full-rank, 2000
   steps, two seeds).
3. ``sandwich``: ELBO ≤ log Z ≤ CUBO from ``vt.diagnose`` on fits of zoo models with a known
   normalizer.
4. ``recover``: full-rank fits of a correlated 3-D Gaussian from N(0, I), 1000 steps, seeds 0-2:
   the largest error of q's mean and covariance entries, per objective (plain IWAE's poor SNR).
5. ``reparam``: ChiSquare's gradient in its reparameterized form (``ChiSquareReparam`` below, not
   shipped) against the shipped score form on the 2-D Gaussian of ``mass``: sds after 3000 steps.

Run: ``.venv/bin/python benchmarks/bench_bounds.py [mass|rate|sandwich|recover|reparam] [models...]``
(prints markdown; ``rate`` takes zoo model names).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import vitools as vt
from vitools.models import get_model
from vitools.objectives.base import importance_info
from vitools.objectives.bounds import IWAE, ChiSquare
from vitools.objectives.reverse_kl import _log_weights

jax.config.update("jax_enable_x64", True)


def mass() -> None:
    rho = 0.9
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    target = vt.Target.from_log_density(
        lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(2), cov), 2
    )
    objectives = {
        "reverse_kl": "reverse_kl",
        "forward_kl": "forward_kl",
        "iwae S=16": IWAE(16, dreg=False),
        "iwae S=16 dreg": IWAE(16, dreg=True),
        "chi2 S=16": ChiSquare(16),
        "chi2 S=64": ChiSquare(64),
    }
    print("| objective | seed | sd_1 | sd_2 | steps | s |")
    print("|---|---|---|---|---|---|")
    for label, objective in objectives.items():
        for seed in (0, 1):
            tic = time.perf_counter()
            fit = vt.fit(
                target, objective=objective, family="meanfield", num_steps=3000, seed=seed, progress=False,
                converge=False,
            )  # fmt: skip
            sd = np.std(np.asarray(fit.sample_flat(20000, seed=1)), axis=0, ddof=1)
            print(
                f"| {label} | {seed} | {sd[0]:.3f} | {sd[1]:.3f} | {fit.num_steps} | "
                f"{time.perf_counter() - tic:.1f} |"
            )


def _fit_row(zoo, objective, rate, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = vt.fit(
            zoo.model, *zoo.args, **zoo.kwargs, objective=objective, family="fullrank", num_steps=2000,
            seed=seed, progress=False, learning_rate=rate, on_nonfinite="warn",
        )  # fmt: skip
        table = vt.compare({"fit": fit}, reference=zoo.reference())
    return fit, table.loc["fit"]


def rate() -> None:
    rules = {
        "default 0.2/sqrt(d)": lambda d: min(0.1, max(0.01, 0.2 / d**0.5)),
        "fkl 0.5/d": lambda d: min(0.1, max(0.005, 0.5 / d)),
    }
    print("| model | d | rule | rate | S | seed | w1 | khat | steps | status |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sys.argv[2:] or (
        "banana",
        "eight_schools_noncentered",
        "logistic_regression",
        "radon",
        "gaussian_100",
    ):
        zoo = get_model(name)
        dim = vt.Target.from_model(zoo.model, *zoo.args, **zoo.kwargs).dim
        seen = set()
        for label, rule in rules.items():
            if rule(dim) in seen:  # the same rate under both rules (low dimension): run once
                continue
            seen.add(rule(dim))
            for num_draws in (16, max(64, 2 * dim)):
                for seed in (0, 1):
                    fit, row = _fit_row(zoo, ChiSquare(num_draws), rule(dim), seed)
                    print(
                        f"| {name} | {dim} | {label} | {rule(dim):.3g} | {num_draws} | {seed} | "
                        f"{row['w1']:.3f} | {row['khat']:.2f} | {fit.num_steps} | {fit.status} |",
                        flush=True,
                    )


def sandwich() -> None:
    print("| model | objective | log Z (true) | ELBO | log Z est ± se | CUBO | khat |")
    print("|---|---|---|---|---|---|---|")
    for name in ("gaussian_100", "banana", "bimodal"):
        zoo = get_model(name)
        for objective in ("reverse_kl", "forward_kl", ChiSquare()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = vt.fit(
                    zoo.model, *zoo.args, **zoo.kwargs, objective=objective, num_steps=2000, seed=0,
                    progress=False,
                )  # fmt: skip
                d = vt.diagnose(fit, warn=False)
            true = "?" if zoo.log_normalizer is None else f"{zoo.log_normalizer:.3f}"
            print(
                f"| {name} | {fit.objective.name} | {true} | {d.elbo:.3f} | {d.log_evidence:.3f} ± "
                f"{d.log_evidence_se:.3f} | {d.cubo:.3f} | {d.khat:.2f} |",
                flush=True,
            )


def recover() -> None:
    mean = jnp.array([1.0, -2.0, 0.5])
    cov = jnp.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
    target = vt.Target.from_log_density(lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov), 3)
    objectives = {
        "iwae S=4": IWAE(4, dreg=False),
        "iwae S=4 dreg": IWAE(4, dreg=True),
        "iwae S=16": IWAE(16, dreg=False),
        "iwae S=16 dreg": IWAE(16, dreg=True),
        "chi2 S=16": ChiSquare(16),
        "reverse_kl S=16 no STL": vt.ReverseKL(16, stick_the_landing=False),
    }
    print("| objective | seed | mean error | cov error |")
    print("|---|---|---|---|")
    for label, objective in objectives.items():
        for seed in (0, 1, 2):
            fit = vt.fit(
                target, objective=objective, family="fullrank", num_steps=1000, seed=seed,
                init=(np.zeros(3), np.eye(3)), converge=False, progress=False,
            )  # fmt: skip
            z = np.asarray(fit.sample_flat(50_000, seed=1))
            errors = np.abs(z.mean(0) - mean).max(), np.abs(np.cov(z.T) - cov).max()
            print(f"| {label} | {seed} | {errors[0]:.3f} | {errors[1]:.3f} |", flush=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChiSquareReparam:
    """CUBO_n with the reparameterized gradient Σ softmax(n log w)ᵢ ∇ log w(T(εᵢ)) (not shipped)."""

    num_draws: int = dataclasses.field(default=16, metadata=dict(static=True))
    n: float = dataclasses.field(default=2.0, metadata=dict(static=True))
    name: str = dataclasses.field(default="chi2_reparam", metadata=dict(static=True))
    mass_covering = True

    def num_density_evals(self, dim):
        return self.num_draws

    def loss(self, key, params, family, target):
        log_w = _log_weights(key, params, family, target, self.num_draws, False)
        return (jax.nn.logsumexp(self.n * log_w) - jnp.log(self.num_draws)) / self.n, importance_info(log_w)


def reparam() -> None:
    rho = 0.9
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    target = vt.Target.from_log_density(
        lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(2), cov), 2
    )
    print("| gradient | family | S | rate | init | seed | sd_1 | sd_2 | last loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for form, build in (("reparameterized", ChiSquareReparam), ("score (shipped)", ChiSquare)):
        for family in ("meanfield", "fullrank"):
            for num_draws in (16, 64):
                for rate in (0.1, 0.01):
                    for init in ("laplace", "median"):
                        for seed in (0, 1):
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                fit = vt.fit(
                                    target, objective=build(num_draws), family=family, num_steps=3000,
                                    seed=seed, progress=False, converge=False, learning_rate=rate,
                                    on_nonfinite="warn", init=init,
                                )  # fmt: skip
                            sd = np.std(np.asarray(fit.sample_flat(20000, seed=1)), axis=0, ddof=1)
                            print(
                                f"| {form} | {family} | {num_draws} | {rate} | {init} | {seed} | "
                                f"{sd[0]:.3f} | {sd[1]:.3f} | {np.mean(fit.losses[-100:]):.3g} |",
                                flush=True,
                            )


if __name__ == "__main__":
    parts = sys.argv[1:2] or ["mass", "rate", "sandwich", "recover", "reparam"]
    for part in parts:
        print(f"\n## {part}\n")
        {"mass": mass, "rate": rate, "sandwich": sandwich, "recover": recover, "reparam": reparam}[part]()
