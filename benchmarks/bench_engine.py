"""Engine speed: ``vt.fit`` vs NumPyro's ``SVI.run`` vs a bare compiled loop, one process.

Logistic regression, 10,000 rows x 50 features (seeded synthetic data), reverse KL with the
same Gaussian family on both sides (vitools ``meanfield`` = NumPyro ``AutoDiagonalNormal``;
``fullrank`` = ``AutoMultivariateNormal``), the same number of steps and draws per step, Adam.

The bare loop is the compute limit: one ``jax.jit(lax.scan(step))`` of a hand-written
reparameterized ELBO step on the same flat log density, timed warm (compiled beforehand).

Run: ``.venv/bin/python benchmarks/bench_engine.py [--steps 2000] [--draws 4] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

import vitools as vt


def logistic_regression(X, y=None):
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("rows", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X @ beta), obs=y)


def make_data(num_rows: int, num_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(num_rows, num_features))
    beta = rng.normal(scale=0.5, size=num_features)
    y = rng.random(num_rows) < 1 / (1 + np.exp(-(0.3 + X @ beta)))
    return jnp.asarray(X), jnp.asarray(y.astype(np.float64))


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def bare_loop(target, family, steps, draws, learning_rate):
    """The compute limit: the same ELBO gradient, the same optimizer, nothing else."""
    optimizer = optax.adam(learning_rate)

    def loss(params, key):
        q = family.distribution(params)
        z = jax.vmap(q.rsample)(jax.random.split(key, draws))
        q_sg = family.distribution(jax.lax.stop_gradient(params))
        return -jnp.mean(jax.vmap(target.log_density)(z) - jax.vmap(q_sg.log_prob)(z))

    def step(carry, key):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    @jax.jit
    def run(params, key):
        return jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))

    params = family.init(target, target.init_flat, 0.1 * jnp.eye(target.dim))
    return lambda: run(params, jax.random.PRNGKey(0))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, y = make_data(args.rows, args.features)
    lr = 0.01
    print(
        f"# Engine benchmark: logistic regression {args.rows} x {args.features}, {args.steps} steps, "
        f"{args.draws} draws/step, reverse KL, Adam"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); jax {jax.__version__}, numpyro {numpyro.__version__}, vitools {vt.__version__}"
    )
    rows = []
    for family, guide_cls in (("meanfield", AutoDiagonalNormal), ("fullrank", AutoMultivariateNormal)):
        svi = SVI(logistic_regression, guide_cls(logistic_regression), optax.adam(lr), Trace_ELBO(args.draws))

        def svi_run(progress_bar, svi=svi):
            result = svi.run(jax.random.PRNGKey(0), args.steps, X, y=y, progress_bar=progress_bar)
            return result.losses

        t_bar, _, _ = timed(lambda svi_run=svi_run: svi_run(True), args.repeats)
        t_nobar, _, _ = timed(lambda svi_run=svi_run: svi_run(False), args.repeats)

        def vt_fit(init, family=family):
            fit = vt.fit(
                logistic_regression,
                X,
                y=y,
                objective=vt.ReverseKL(args.draws),
                family=family,
                num_steps=args.steps,
                init=init,
                progress=False,
            )
            return fit

        first = vt_fit("median")  # compile once, as a user's first call does
        t_vt, _, _ = timed(lambda vt_fit=vt_fit: vt_fit("median").losses, args.repeats)
        t_vt_laplace, _, _ = timed(lambda vt_fit=vt_fit: vt_fit("laplace").losses, args.repeats)
        loop_times = [vt_fit("median").elapsed for _ in range(args.repeats)]
        target = vt.Target.from_model(logistic_regression, X, y=y)
        bare = bare_loop(
            target,
            vt.fitting_family(family)
            if hasattr(vt, "fitting_family")
            else {"meanfield": vt.MeanField(), "fullrank": vt.FullRank()}[family],
            args.steps,
            args.draws,
            lr,
        )
        start = time.perf_counter()
        jax.block_until_ready(bare())
        bare_compile = time.perf_counter() - start
        t_bare, _, _ = timed(bare, args.repeats)
        t_loop = statistics.median(loop_times)
        rows.append(
            (family, t_bar, t_nobar, first.compile_time, t_vt, t_vt_laplace, t_loop, t_bare, bare_compile)
        )

    print()
    print(
        "| family | SVI.run bar (s) | SVI.run no bar (s) | vt compile, 1st call (s) | vt.fit warm (s) "
        "| vt.fit warm + Laplace init (s) | vt loop only (s) | bare loop (s) | bar / vt.fit | vt loop / bare |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, t_bar, t_nobar, compile_s, t_vt, t_lap, t_loop, t_bare, _ in rows:
        print(
            f"| {family} | {t_bar:.3f} | {t_nobar:.3f} | {compile_s:.2f} | {t_vt:.3f} | {t_lap:.3f} | "
            f"{t_loop:.3f} | {t_bare:.3f} | {t_bar / t_vt:.1f}x | {t_loop / t_bare:.2f}x |"
        )


if __name__ == "__main__":
    main()
