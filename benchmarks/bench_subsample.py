r"""Data subsampling (``numpyro.plate(..., subsample_size=B)``): cost per step against N, recovery of
the full-data posterior at 10^6 rows, and the init on a subset of rows.

1. ``steps``: a logistic regression with 3 coefficients, reverse KL (16 draws), full-rank q: seconds
   per step of the compiled loop (:func:`vitools.engine.run_chunk`, 500 steps a call, after a warm-up
   call) at fixed B = 256 and 4096 for N = 10^4, 10^5, 10^6, against the same model without
   ``subsample_size`` (every row every step). The minibatch step should be flat in N.
2. ``recover``: ``vt.fit`` at N = 10^6, B = 4096, ``ReverseKL(num_draws=4)`` (seeds 0-9) and, with
   its refusal lifted, ``IWAE(num_draws=4)`` (seeds 0-4): q's mean against the full-data posterior
   (Newton's mode, float64) in posterior sds, and q's sds over the Laplace sds. The test's
   tolerances come from here; IWAE's rows are why vt.fit refuses it under subsampling.
3. ``init``: vt.fit's Laplace start (``vitools.start.starting_point``) on all 10^6 rows against the
   fixed random ``INIT_ROWS`` of :meth:`Target.subset`: seconds (compiled once before timing) and the
   start's distance to the full-data mode in posterior sds.
4. ``average``: Polyak-Ruppert tail averaging (Ruppert 1988; Polyak & Juditsky 1992), issue 14: vt.fit's
   run of ``recover`` replayed step by step (its keys, start, frame and rate), q's parameters kept
   after every step, and q from the last iterate against q from the mean of the iterates over the
   last quarter or half of the budget, at 500, 2000 and 8000 steps (reverse KL, seeds 0-9; IWAE with
   its refusal lifted, 2000 steps, seeds 0-4). Not run by default (``average`` names it).

5. ``control``: the Taylor control variate (issue 14, :mod:`vitools.control_variate`): the controlled
   minibatch estimate's bias and sd against the plain one's at N = 10^5 and 10^6; ``vt.fit``'s
   recovery at N = 10^6, B = 4096 and 256 (seeds 0-9), plain against controlled (snapshot at the start,
   or after quasi-Newton steps on all rows; q moved there or not); seconds per step; and a negative
   binomial regression at N = 10^5 (a constrained global latent, the concentration). Not run by default.

Run: ``.venv/bin/python benchmarks/bench_subsample.py [steps] [recover] [init] [average] [control]``
(the first three by default); writes ``benchmarks/results/subsample.md`` (parts named:
``subsample_<parts>.md``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import vitools as vt
import vitools.control_variate
from vitools.engine import default_optimizer, init_state, make_step, objective_state, run_chunk
from vitools.families import get_family
from vitools.fitting import default_rate
from vitools.objectives.bounds import IWAE
from vitools.objectives.reverse_kl import ReverseKL
from vitools.result import gaussian_moments
from vitools.start import fit_keys, starting_point
from vitools.targets import INIT_ROWS, Target

jax.config.update("jax_enable_x64", True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinibatchIWAE(IWAE):
    """IWAE with vt.fit's refusal under subsampling lifted, to measure what the refusal avoids."""

    full_joint: ClassVar[bool] = False


RESULTS = Path(__file__).parent / "results" / "subsample.md"
COEFFICIENTS = np.array([1.0, -0.5, 0.25])


def make_model(batch):
    def logistic(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        with numpyro.plate("rows", x.shape[0], subsample_size=batch):
            xb = numpyro.subsample(x, event_dim=1)
            yb = numpyro.subsample(y, event_dim=0)
            numpyro.sample("y", dist.Bernoulli(logits=xb @ w), obs=yb)

    return logistic


def data(num_rows, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_rows, COEFFICIENTS.size)).astype(np.float32)
    y = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-x @ COEFFICIENTS))).astype(np.float32)
    return x, y


def reference(x, y):
    """Full-data posterior mode and sds (Newton, float64, prior N(0, 1))."""
    x, y, w = x.astype(float), y.astype(float), np.zeros(x.shape[1])
    for _ in range(8):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.eye(x.shape[1])
        w = w + np.linalg.solve(hessian, x.T @ (y - p) - w)
    return w, np.sqrt(np.diag(np.linalg.inv(hessian)))


def seconds_per_step(target, num_steps=500, repeats=3, draws=None):
    """The compiled loop's seconds a step (the best of ``repeats``), reverse KL with ``draws`` draws
    a step (None: its default) and a full-rank q."""
    objective = ReverseKL() if draws is None else ReverseKL(num_draws=draws)
    family, optimizer = get_family("fullrank"), default_optimizer()
    params = family.init(jax.random.key(1), target, target.initial_point, 0.1 * jnp.eye(target.dim))
    state = init_state(jax.random.key(0), params, optimizer, 0.01, target.model_params)
    run = jax.jit(run_chunk, static_argnums=(5, 6))
    total = jnp.asarray(10**9, jnp.int32)
    jax.block_until_ready(run(state, total, objective, family, target, optimizer, num_steps))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        state, _ = jax.block_until_ready(run(state, total, objective, family, target, optimizer, num_steps))
        times.append((time.perf_counter() - tic) / num_steps)
    return min(times)


def steps() -> list[str]:
    lines = [
        "## Seconds per step against N (reverse KL, 16 draws, full-rank q, 3 coefficients)",
        "",
        "| N | B = 256 | B = 4096 | all rows (no subsample_size) |",
        "|---|---|---|---|",
    ]
    for exponent in (4, 5, 6):
        x, y = data(10**exponent)
        row = [f"10^{exponent}"]
        for batch in (256, 4096, None):
            if batch is None and exponent == 6:
                row.append(
                    f"{seconds_per_step(Target.from_model(make_model(None), x, y=y), 20, 2) * 1e6:.0f} µs"
                )
                continue
            target = Target.from_model(make_model(batch), x, y=y)
            row.append(f"{seconds_per_step(target) * 1e6:.0f} µs")
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    return lines + [""]


def recover() -> list[str]:
    x, y = data(10**6)
    mode, sds = reference(x, y)
    lines = [
        "## Recovery at N = 10^6, B = 4096 (vt.fit defaults: 2000 steps, Laplace start on INIT_ROWS rows)",
        "",
        f"Full-data posterior mode {np.round(mode, 5).tolist()}, sds {np.round(sds, 5).tolist()}.",
        "",
        "| objective | seed | (mean - mode) / sd | q sd / Laplace sd | fit seconds |",
        "|---|---|---|---|---|",
    ]
    model = make_model(4096)
    worst = {}
    for objective, seeds in ((ReverseKL(num_draws=4), range(10)), (MinibatchIWAE(num_draws=4), range(5))):
        for seed in seeds:
            tic = time.perf_counter()
            fit = vt.fit(model, x, y=y, objective=objective, seed=seed, progress=False)
            seconds = time.perf_counter() - tic
            mean, covariance = fit.mean_and_covariance()
            z, ratio = (mean - mode) / sds, np.sqrt(np.diag(covariance)) / sds
            lines.append(
                f"| {objective.name} | {seed} | {np.round(z, 2).tolist()} | {np.round(ratio, 2).tolist()} "
                f"| {seconds:.1f} |"
            )
            print(lines[-1], flush=True)
            w = worst.setdefault(objective.name, [0.0, np.inf, 0.0])
            w[:] = [max(w[0], np.abs(z).max()), min(w[1], ratio.min()), max(w[2], ratio.max())]
    lines.append("")
    for name, (z, low, high) in worst.items():
        lines.append(f"- {name}: largest |mean - mode| {z:.2f} sds; sd ratios {low:.2f}-{high:.2f}.")
    return lines + [""]


def init() -> list[str]:
    x, y = data(10**6)
    mode, sds = reference(x, y)
    target = Target.from_model(make_model(4096), x, y=y)
    family, objective = get_family("fullrank"), ReverseKL()
    key = jax.random.key(0)
    lines = [
        "## Laplace start at N = 10^6: all rows against a subset (Target.subset)",
        "",
        "| start on | rows | seconds (compiled) | gradient evaluations | (start - mode) / sd |",
        "|---|---|---|---|---|",
    ]
    for name, start_target in (
        ("all rows", target),
        ("subset", target.subset(jax.random.fold_in(key, 1), INIT_ROWS)),
    ):
        starting_point(key, start_target, family, objective, "laplace")  # compile
        tic = time.perf_counter()
        framed, loc, _, _, evals = starting_point(key, start_target, family, objective, "laplace")
        seconds = time.perf_counter() - tic
        z = (np.asarray(framed.to_unconstrained(loc)) - mode) / sds
        rows = 10**6 if start_target.density.indices is None else INIT_ROWS
        lines.append(f"| {name} | {rows} | {seconds:.2f} | {evals} | {np.round(z, 2).tolist()} |")
        print(lines[-1], flush=True)
    return lines + [""]


def iterates(target, objective, seed, num_steps):
    """vt.fit's run of a subsampling ``target`` (:func:`vitools.fitting.fit`: its keys, Laplace start on
    ``INIT_ROWS`` rows, frame and learning rate; no race of starts under subsampling) as one scan that
    keeps q's parameters after every step: ``(framed target, family, params stacked (num_steps, ...))``."""
    family, optimizer = get_family("fullrank"), default_optimizer()
    keys = fit_keys(jax.random.PRNGKey(seed))
    start = target.subset(keys.init_rows, INIT_ROWS)
    framed, loc, scale_tril, _, _ = starting_point(keys.init, start, family, objective, "laplace")
    framed = framed.full_data()
    params = family.init(keys.params, framed, loc, scale_tril)
    carried = objective_state(objective, keys.objective, params, family, framed)
    rate = default_rate(objective, family, framed.dim)
    state = init_state(keys.run, params, optimizer, rate, framed.model_params, carried)
    step = make_step(objective, family, framed, optimizer)
    total = jnp.asarray(num_steps, jnp.int32)

    def body(state, _):
        state, _ = step(state, total)
        return state, state.params

    return framed, family, jax.jit(lambda s: jax.lax.scan(body, s, None, length=num_steps)[1])(state)


def average() -> list[str]:
    x, y = data(10**6)
    mode, sds = reference(x, y)
    target = Target.from_model(make_model(4096), x, y=y)
    tails = (("last iterate", None), ("mean of last 1/4", 0.25), ("mean of last 1/2", 0.5))
    lines = [
        "## Tail averaging of q's parameters at N = 10^6, B = 4096 (issue 14; vt.fit's run replayed)",
        "",
        "q from the last iterate (what vt.fit returns) against q from the mean of the iterates of q's",
        "parameters over the budget's last quarter or half, from one run each (z = (mean - mode) / sd,",
        "r = q sd / Laplace sd).",
        "",
        "| objective | steps | seed | " + " | ".join(f"{name}: z / r" for name, _ in tails) + " |",
        "|---|---|---|" + "---|" * len(tails),
    ]
    runs = [(ReverseKL(num_draws=4), steps, range(10)) for steps in (500, 2000, 8000)]
    runs.append((MinibatchIWAE(num_draws=4), 2000, range(5)))
    found, spread = {}, {}
    for objective, num_steps, seeds in runs:
        for seed in seeds:
            framed, family, params = iterates(target, objective, seed, num_steps)

            def moments(params, framed=framed, family=family):
                """q's mean and covariance in the model's unconstrained space."""
                mean, covariance = gaussian_moments(family.distribution(params))
                return framed.frame.forward(mean), framed.frame.covariance_to_model(covariance)

            cells = []
            for name, fraction in tails:
                first = num_steps - 1 if fraction is None else num_steps - round(fraction * num_steps)
                mean, covariance = moments(
                    jax.tree.map(lambda leaf, first=first: leaf[first:].mean(0), params)
                )
                z, ratio = (np.asarray(mean) - mode) / sds, np.sqrt(np.diag(np.asarray(covariance))) / sds
                cells.append(f"{np.round(z, 2).tolist()} / {np.round(ratio, 2).tolist()}")
                found.setdefault((objective.name, num_steps, name), []).append((z, ratio))
            lines.append(f"| {objective.name} | {num_steps} | {seed} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            # how far the iterates of the last half still move: the sd of their z over those steps
            half = jax.tree.map(lambda leaf, n=num_steps: leaf[n - n // 2 :], params)
            means = np.asarray(jax.vmap(lambda p: moments(p)[0])(half))
            spread.setdefault((objective.name, num_steps), []).append(np.std(means / sds, axis=0))
    lines += [
        "",
        "| objective | steps | q | largest \\|z\\| | rms z | sd ratios "
        "| sd of z over the last half's iterates (rms) | sqrt(N / (B x steps)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, num_steps, tail), values in found.items():
        z, ratio = np.concatenate([v[0] for v in values]), np.concatenate([v[1] for v in values])
        moving = np.sqrt(np.mean(np.square(spread[name, num_steps])))
        floor = np.sqrt(10**6 / (4096 * num_steps))
        lines.append(
            f"| {name} | {num_steps} | {tail} | {np.abs(z).max():.2f} | {np.sqrt(np.mean(z**2)):.2f} "
            f"| {ratio.min():.2f}-{ratio.max():.2f} | {moving:.2f} | {floor:.2f} |"
        )
    return lines + [
        "",
        "rms: over seeds and coefficients. The sd of z over the last half's iterates says how far q's",
        "mean still moves in the tail. The last column is the sd, in posterior sds, of the mean of as",
        "many minibatch gradients as the fit drew about the full-data gradient (one minibatch's gradient",
        "noise is N / B times the posterior precision): about the least error any weighting of the fit's",
        "minibatches can leave; a mean over L steps' iterates is bound by sqrt(N / (B x L)).",
        "",
    ]


def start_gaussian(target, seed=0):
    """vt.fit's start of a subsampling target (Laplace on ``INIT_ROWS`` rows): ``(framed full-data
    target, loc, scale_tril)`` in the frame."""
    keys = fit_keys(jax.random.PRNGKey(seed))
    start = target.subset(keys.init_rows, INIT_ROWS)
    framed, loc, scale_tril, _, _ = starting_point(
        keys.init, start, get_family("fullrank"), ReverseKL(), "laplace"
    )
    return framed.full_data(), loc, scale_tril


def estimates(target, points, num_keys=2000, chunk=250):
    """The minibatch log density at each point ``(P, dim)`` (the model's unconstrained space) under
    ``num_keys`` minibatch keys: ``(num_keys, P)``."""
    one = jax.jit(
        jax.vmap(lambda key, t: jax.vmap(t.minibatch(key).density.log_density)(points), in_axes=(0, None))
    )
    keys = jax.random.split(jax.random.key(11), num_keys)
    return np.concatenate([np.asarray(one(keys[i : i + chunk], target)) for i in range(0, num_keys, chunk)])


def control_estimates() -> list[str]:
    lines = [
        "## The controlled minibatch estimate of log p(x, u) (B = 4096, 2000 minibatch keys)",
        "",
        "Snapshot at vt.fit's start (seed 0: Laplace on INIT_ROWS rows). u: 3 draws of the start's",
        "Gaussian, and the full-data mode and mode + 2 sds in each coordinate (where q should end).",
        "bias: mean over keys minus the full-data value, in standard errors (sd / sqrt(2000)).",
        "",
        "| N | u | (u - snapshot) / sd (max abs) | plain: bias / se, sd (nats) "
        "| controlled: bias / se, sd (nats) | sd ratio |",
        "|---|---|---|---|---|---|",
    ]
    for exponent in (5, 6):
        x, y = data(10**exponent)
        mode, sds = reference(x, y)
        target = Target.from_model(make_model(4096), x, y=y)
        framed, loc, scale_tril = start_gaussian(target)
        u0 = framed.to_unconstrained(loc)
        eps = jax.random.normal(jax.random.key(5), (3, target.dim))
        draws = jax.vmap(lambda e, f=framed, m=loc, s=scale_tril: f.to_unconstrained(m + s @ e))(eps)
        points = jnp.concatenate([draws, jnp.stack([jnp.asarray(mode), jnp.asarray(mode + 2 * sds)])])
        names = ["start draw 1", "start draw 2", "start draw 3", "mode", "mode + 2 sd"]
        controlled = target.with_snapshot(u0)
        full = np.asarray(jax.vmap(target.density.log_density)(points))
        plain_values, controlled_values = estimates(target, points), estimates(controlled, points)
        for i, name in enumerate(names):
            cells = []
            for values in (plain_values[:, i], controlled_values[:, i]):
                se = values.std() / np.sqrt(values.size)
                cells.append(f"{(values.mean() - full[i]) / se:+.2f}, {values.std():.4g}")
            distance = np.abs((np.asarray(points[i]) - np.asarray(u0)) / sds).max()
            ratio = plain_values[:, i].std() / controlled_values[:, i].std()
            lines.append(
                f"| 10^{exponent} | {name} | {distance:.1f} | {cells[0]} | {cells[1]} | {ratio:.0f} |"
            )
            print(lines[-1], flush=True)
    return lines + [""]


CONTROL_VARIANTS = (  # (name, control variate, quasi-Newton steps of the snapshot, q starts there)
    ("plain", False, 0, False),
    ("controlled, snapshot at the start", True, 0, False),
    ("controlled, snapshot after 2 Newton steps", True, 2, False),  # all rows, 2 passes
    ("controlled, 2 Newton steps, q starts there", True, 2, True),
)


def control_recover(model, x, y, mode, sds, batches, seeds, title, variants=CONTROL_VARIANTS) -> list[str]:
    lines = [
        f"## {title}",
        "",
        "vt.fit defaults (ReverseKL(num_draws=4) as in recover, 2000 steps, convergence rule on); largest",
        "|mean - mode| / sd over seeds and coordinates, rms of those, the range of q sd / Laplace sd, the",
        "steps run (an early stop: fewer) and the fit's seconds (median; compile included, shared machine).",
        "",
        "| B | variant | largest \\|z\\| | rms z | sd ratios | steps (min-max) | seconds (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        batch_model = model(batch)  # one closure a batch size: a fresh one a fit recompiles every program
        for name, control, newton, moves in variants:
            vitools.control_variate.CONTROL_VARIATE = control
            vitools.control_variate.SNAPSHOT_NEWTON_STEPS = newton
            vitools.control_variate.SNAPSHOT_MOVES_START = moves
            zs, ratios, steps_run, seconds = [], [], [], []
            for seed in seeds:
                tic = time.perf_counter()
                fit = vt.fit(batch_model, x, y=y, objective=ReverseKL(num_draws=4), seed=seed, progress=False)
                seconds.append(time.perf_counter() - tic)
                mean, covariance = fit.mean_and_covariance()
                zs.append((mean - mode) / sds)
                ratios.append(np.sqrt(np.diag(covariance)) / sds)
                steps_run.append(fit.num_steps)
            z, ratio = np.concatenate(zs), np.concatenate(ratios)
            lines.append(
                f"| {batch} | {name} | {np.abs(z).max():.2f} | {np.sqrt(np.mean(z**2)):.2f} "
                f"| {ratio.min():.2f}-{ratio.max():.2f} | {min(steps_run)}-{max(steps_run)} "
                f"| {np.median(seconds):.1f} |"
            )
            print(lines[-1], flush=True)
    vitools.control_variate.CONTROL_VARIATE, vitools.control_variate.SNAPSHOT_NEWTON_STEPS = True, 0
    vitools.control_variate.SNAPSHOT_MOVES_START = False
    return lines + [""]


def control_steps() -> list[str]:
    lines = [
        "## Seconds per step at N = 10^6, plain against controlled (reverse KL, full-rank q)",
        "",
        "| B | draws | plain | controlled | ratio |",
        "|---|---|---|---|---|",
    ]
    x, y = data(10**6)
    for batch in (256, 4096):
        target = Target.from_model(make_model(batch), x, y=y)
        controlled = target.with_snapshot(target.to_unconstrained(target.initial_point))
        for draws in (4, 16):
            plain_s = seconds_per_step(target, draws=draws)
            controlled_s = seconds_per_step(controlled, draws=draws)
            lines.append(
                f"| {batch} | {draws} | {plain_s * 1e6:.0f} µs | {controlled_s * 1e6:.0f} µs "
                f"| {controlled_s / plain_s:.2f} |"
            )
            print(lines[-1], flush=True)
    return lines + [""]


def make_negative_binomial(batch):
    def negative_binomial(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        concentration = numpyro.sample("concentration", dist.HalfNormal(10.0))
        with numpyro.plate("rows", x.shape[0], subsample_size=batch):
            xb = numpyro.subsample(x, event_dim=1)
            yb = numpyro.subsample(y, event_dim=0)
            numpyro.sample("y", dist.NegativeBinomial2(jnp.exp(xb @ w), concentration), obs=yb)

    return negative_binomial


def negative_binomial_data(num_rows, seed=0):
    """Counts with mean exp(0.5 + 0.3 x1 - 0.2 x2), concentration 2 (overdispersed)."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(num_rows), rng.normal(size=(num_rows, 2))]).astype(np.float32)
    mean = np.exp(x @ np.array([0.5, 0.3, -0.2]))
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mean)).astype(np.float32)
    return x, y


def unconstrained_mode(target, point):
    """The full-data mode and Laplace sds of a target in the model's unconstrained space (Newton,
    exact Hessians, 20 steps)."""
    log_density = target.full_data().density.log_density
    for _ in range(20):
        hessian = jax.hessian(log_density)(point)
        point = point - jnp.linalg.solve(hessian, jax.grad(log_density)(point))
    return np.asarray(point), np.sqrt(np.diag(np.linalg.inv(-np.asarray(jax.hessian(log_density)(point)))))


def control() -> list[str]:
    lines = control_estimates()
    x, y = data(10**6)
    mode, sds = reference(x, y)
    lines += control_recover(
        make_model, x, y, mode, sds, (4096, 256), range(10), "Recovery at N = 10^6, plain against controlled"
    )
    lines += control_steps()
    x, y = negative_binomial_data(10**5)
    target = Target.from_model(make_negative_binomial(None), x, y=y)
    mode, sds = unconstrained_mode(target, target.to_unconstrained(target.initial_point))
    lines += [f"Negative binomial (3 coefficients, log concentration): mode {np.round(mode, 4).tolist()}, "
              f"sds {np.round(sds, 5).tolist()}.", ""]  # fmt: skip
    lines += control_recover(
        make_negative_binomial, x, y, mode, sds, (1024, 128), range(10),
        "Recovery, negative binomial regression at N = 10^5, plain against controlled",
    )  # fmt: skip
    return lines


def main(parts: list[str]) -> None:
    out = RESULTS if not parts else RESULTS.with_name(f"subsample_{'_'.join(parts)}.md")  # a part alone
    parts = parts or ["steps", "recover", "init"]
    header = [
        "# Data subsampling (benchmarks/bench_subsample.py)",
        "",
        f"{os.cpu_count()}-core CPU, float64, {time.strftime('%Y-%m-%d')}; other jobs shared the machine "
        "(wall-clock figures are upper bounds).",
        "",
    ]
    body = []
    for part in parts:
        body += {"steps": steps, "recover": recover, "init": init, "average": average, "control": control}[
            part
        ]()
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(header + body))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
