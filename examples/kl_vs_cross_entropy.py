r"""Cross-entropy or KL divergence? On a Gaussian p and q: the values differ by H(p), the gradients do not.

Run: ``python examples/kl_vs_cross_entropy.py`` (about 10 s on a laptop CPU; ``--fast``: fewer
minibatches and draws, for the tests). Writes its figures' numbers to ``docs/generated/`` (``--out``):
``kl_vs_cross_entropy.json`` and the markdown tables the concepts page includes.

1. Exact: H(p, q) = KL(p‖q) + H(p), and ∇_q H(p, q) = ∇_q KL(p‖q) since H(p) does not depend on q.
2. Per minibatch of p's draws: the minibatch "KL", mean(log p - log q), and the minibatch
   cross-entropy, -mean(log q), have the same gradient on every minibatch (log p(x_i) is data, not a
   function of q), so SGD on either takes the same steps. Only the values differ, by the minibatch's
   own entropy estimate -mean(log p), which moves from batch to batch.
3. Without draws of p (a posterior known up to log Z): self-normalised importance sampling with q as
   proposal. vitools' ``weighted_cross_entropy`` on the importance draws has exactly the SNIS
   estimate of ∇ KL(p‖q) as its gradient; ``ForwardKL``'s loss is it. The estimate converges to the
   exact gradient as S grows, and breaks down as the dimension grows (weight collapse; Dhaka,
   Catalina, Welandawe, Andersen, Huggins & Vehtari 2021).

Each identity is printed as a ``CHECK`` line ending in ``ok`` or ``FAILED`` (the tests read them).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the identities are checked to ~1e-12: float32 would blur them

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions.kl import kl_divergence  # noqa: E402

from vitools.families.gaussian import FullRank  # noqa: E402
from vitools.importance import importance_ess, psis_khat  # noqa: E402
from vitools.objectives.base import weighted_cross_entropy  # noqa: E402
from vitools.objectives.forward_kl import ForwardKL  # noqa: E402
from vitools.targets import Target  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "generated"
P_LOC = jnp.array([1.0, -0.5])
P_COV = jnp.array([[1.0, 0.6], [0.6, 2.0]])
# q is wider than p (scale 1.5 against p's 1 and 1.4) so that q is a fair importance proposal in part 3.
Q_LOC, Q_SCALE = jnp.array([0.0, 0.0]), 1.5
LOG_Z = 3.7  # an arbitrary constant on p's log density in part 3: SNIS never needs it
TOL = 1e-10  # float64 rounding of a few hundred terms is ~1e-14; anything near 1e-10 would be a real gap


def check(name: str, value: float, bound: float) -> bool:
    ok = bool(value <= bound)
    print(f"CHECK {name}: {value:.3g} <= {bound:.3g} {'ok' if ok else 'FAILED'}")
    return ok


def exact_cross_entropy(q: dist.MultivariateNormal, p: dist.MultivariateNormal) -> jax.Array:
    r"""-E_p[log q(x)] in closed form: ½ (d log 2π + log|Σq| + tr(Σq⁻¹Σp) + (μq-μp)ᵀΣq⁻¹(μq-μp))."""
    dim = p.loc.shape[-1]
    precision = jnp.linalg.inv(q.covariance_matrix)
    diff = q.loc - p.loc
    _, logdet = jnp.linalg.slogdet(q.covariance_matrix)
    trace = jnp.trace(precision @ p.covariance_matrix)
    return 0.5 * (dim * math.log(2 * math.pi) + logdet + trace + diff @ precision @ diff)


def part_exact(family, params, p) -> dict:
    """Values and gradients of KL(p‖q) (NumPyro's closed form) and H(p, q) (the formula above)."""

    def kl(params):
        return kl_divergence(p, family.distribution(params))

    def ce(params):
        return exact_cross_entropy(family.distribution(params), p)

    (kl_value, kl_grad), (ce_value, ce_grad) = jax.jit(
        lambda params: (jax.value_and_grad(kl)(params), jax.value_and_grad(ce)(params))
    )(params)
    grad_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(kl_grad, ce_grad, strict=True))
    return {"kl": float(kl_value), "cross_entropy": float(ce_value), "gap": float(ce_value - kl_value),
            "entropy_p": float(p.entropy()), "max_grad_diff": grad_diff}  # fmt: skip


def part_minibatch(key, family, params_far, params_at_p, p, num_batches: int, batch_size: int) -> dict:
    """Per-minibatch values and gradients of the minibatch KL and cross-entropy, at two q's."""
    batches = p.sample(key, (num_batches, batch_size))  # (num_batches, batch_size, dim)

    def minibatch_kl(params, x):
        return jnp.mean(jax.vmap(p.log_prob)(x) - jax.vmap(family.distribution(params).log_prob)(x))

    def minibatch_ce(params, x):
        return -jnp.mean(jax.vmap(family.distribution(params).log_prob)(x))

    @jax.jit  # compiled once, run at both q's
    def both(params):
        kl = jax.vmap(jax.value_and_grad(minibatch_kl), (None, 0))(params, batches)
        ce = jax.vmap(jax.value_and_grad(minibatch_ce), (None, 0))(params, batches)
        return kl, ce

    out = {"num_batches": num_batches, "batch_size": batch_size}
    for label, params in (("far", params_far), ("at_p", params_at_p)):
        (kl_values, kl_grads), (ce_values, ce_grads) = both(params)
        grad_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(kl_grads, ce_grads, strict=True))
        # the gap ce - kl is each batch's own entropy estimate -mean(log p(x_i)), unbiased for H(p)
        gaps = np.asarray(ce_values - kl_values)
        out[label] = {
            "max_grad_diff": grad_diff,
            "kl_value_mean": float(jnp.mean(kl_values)), "kl_value_sd": float(jnp.std(kl_values)),
            "ce_value_mean": float(jnp.mean(ce_values)), "ce_value_sd": float(jnp.std(ce_values)),
            "gap_mean": float(gaps.mean()), "gap_sd": float(gaps.std()),
            "grad_sd": float(jnp.std(kl_grads.loc[:, 0])),
        }  # fmt: skip
    return out


def flat(tree) -> jax.Array:
    """q's parameters (or their gradient) as one vector."""
    return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])


def part_snis(key, family, params, p, draw_counts: tuple[int, ...], num_repeats: int) -> dict:
    """SNIS forward KL: vitools' ForwardKL loss, weighted_cross_entropy and the hand-written estimate.

    The identity is checked on ``num_repeats`` sets of ``max(draw_counts)`` draws; the error against
    the exact gradient on the first S of those draws for each S (one compile).
    """
    target = Target.from_log_density(lambda z: p.log_prob(z) + LOG_Z, 2)
    exact = flat(jax.grad(lambda params: kl_divergence(p, family.distribution(params)))(params))

    def per_draw(objective, key):
        """Draws of q (those ForwardKL's loss uses), their log weights and ∇ log q at each."""
        draws, log_r = objective.proposal_draws(key, params, family)
        log_weights = jax.vmap(target.log_density)(draws) - log_r

        def log_q(params):
            return jax.vmap(family.distribution(params).log_prob)(draws)

        # one draw's gradient, then vmap (jacrev of the batched log q would build S x S intermediates)
        grad_one = jax.grad(lambda params, z: family.distribution(params).log_prob(z))
        jacobian = jax.vmap(lambda z: flat(grad_one(params, z)))(draws)  # (S, num_params)
        return log_q, log_weights, jacobian

    objective = ForwardKL(num_draws=max(draw_counts), defensive=0.0)  # q alone as proposal: plain SNIS

    @jax.jit
    @jax.vmap
    def one(key):
        vitools_grad = flat(jax.grad(lambda params: objective.loss(key, params, family, target)[0])(params))
        log_q, log_weights, jacobian = per_draw(objective, key)
        wce_grad = flat(jax.grad(lambda params: weighted_cross_entropy(log_q(params), log_weights))(params))
        hand = -jax.nn.softmax(log_weights) @ jacobian  # -sum_i wbar_i grad log q(z_i)
        diffs = jnp.max(jnp.abs(vitools_grad - hand)), jnp.max(jnp.abs(wce_grad - hand))
        return diffs, log_weights, jacobian

    diffs, log_weights, jacobian = one(jax.random.split(key, num_repeats))
    out = {"draw_counts": list(draw_counts), "rel_error": [], "ess_fraction": [],
           "max_diff_forward_kl_vs_hand": float(jnp.max(diffs[0])),
           "max_diff_wce_vs_hand": float(jnp.max(diffs[1]))}  # fmt: skip
    for num_draws in draw_counts:
        weights = jax.nn.softmax(log_weights[:, :num_draws], axis=1)  # (repeats, S)
        estimate = -jnp.einsum("rs,rsk->rk", weights, jacobian[:, :num_draws])
        errors = jnp.linalg.norm(estimate - exact, axis=1) / jnp.linalg.norm(exact)
        out["rel_error"].append(float(jnp.sqrt(jnp.mean(errors**2))))  # rms over the repeats
        out["ess_fraction"].append(float(jnp.mean(1.0 / jnp.sum(weights**2, axis=1))) / num_draws)
    return out


def part_dimension(seed: int, dims: tuple[int, ...], num_draws: int, num_repeats: int, scale: float) -> dict:
    r"""p = N(0, I_d), q = N(0, σ² I_d): the SNIS estimate of ∂KL(p‖q)/∂log σ, exactly d (1 - 1/σ²).

    In closed form, in NumPy: ∂ log q(z)/∂ log σ = |z|²/σ² - d, so the estimate (the gradient of
    ``weighted_cross_entropy``, checked above) is -sum_i wbar_i (|z_i|²/σ² - d).
    """
    rng = np.random.default_rng(seed)
    out = {"dims": list(dims), "num_draws": num_draws, "scale": scale, "ess_fraction": [], "khat": [],
           "grad_ratio": []}  # fmt: skip
    for dim in dims:
        z = scale * rng.standard_normal((num_repeats, num_draws, dim))
        squares = np.sum(z**2, axis=-1)
        log_weights = -0.5 * squares + 0.5 * squares / scale**2 + dim * math.log(scale)  # log N(0,1) - log q
        weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        grads = -np.sum(weights * (squares / scale**2 - dim), axis=1)
        out["grad_ratio"].append(float(np.mean(grads) / (dim * (1.0 - 1.0 / scale**2))))
        out["ess_fraction"].append(float(np.mean([importance_ess(lw) for lw in log_weights])) / num_draws)
        out["khat"].append(float(np.mean([psis_khat(lw)[1] for lw in log_weights])))
    return out


def write_markdown(results: dict, out: Path) -> None:
    exact, mini, snis, dims = results["exact"], results["minibatch"], results["snis"], results["dimension"]
    (out / "kl_vs_ce_exact.md").write_text(
        "| quantity | value |\n|---|---|\n"
        f"| KL(p‖q) | {exact['kl']:.6f} |\n| H(p, q) | {exact['cross_entropy']:.6f} |\n"
        f"| H(p, q) − KL(p‖q) | {exact['gap']:.6f} |\n| H(p) | {exact['entropy_p']:.6f} |\n"
        f"| max \\|∇ H(p, q) − ∇ KL(p‖q)\\| over q's parameters | {exact['max_grad_diff']:.1e} |\n"
    )
    rows = [
        "| q | max \\|∇ KL_B − ∇ CE_B\\| over batches | sd of ∂/∂μ₁ over batches "
        "| KL_B value: mean ± sd | CE_B value: mean ± sd | CE_B − KL_B: mean ± sd |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in (("far", "far from p (start)"), ("at_p", "equal to p (optimum)")):
        row = mini[label]
        rows.append(
            f"| {name} | {row['max_grad_diff']:.1e} | {row['grad_sd']:.3f} "
            f"| {row['kl_value_mean']:.3f} ± {row['kl_value_sd']:.3f} "
            f"| {row['ce_value_mean']:.3f} ± {row['ce_value_sd']:.3f} "
            f"| {row['gap_mean']:.3f} ± {row['gap_sd']:.3f} |"
        )
    (out / "kl_vs_ce_minibatch.md").write_text(
        "\n".join(rows) + f"\n\n{mini['num_batches']} minibatches of {mini['batch_size']} draws of p; "
        f"H(p) = {exact['entropy_p']:.3f}.\n"
    )
    rows = ["| draws S | importance ESS / S | rms relative error of the SNIS gradient |", "|---|---|---|"]
    rows += [
        f"| {s} | {e:.2f} | {r:.3f} |"
        for s, e, r in zip(snis["draw_counts"], snis["ess_fraction"], snis["rel_error"], strict=True)
    ]
    (out / "kl_vs_ce_snis.md").write_text(
        "\n".join(rows) + "\n\nmax |∇ ForwardKL loss − hand-written SNIS gradient| = "
        f"{snis['max_diff_forward_kl_vs_hand']:.1e}; max |∇ weighted_cross_entropy − hand-written| = "
        f"{snis['max_diff_wce_vs_hand']:.1e}.\n"
    )
    rows = ["| dimension d | importance ESS / S | k̂ | SNIS gradient / exact gradient |", "|---|---|---|---|"]
    rows += [
        f"| {d} | {e:.3f} | {k:.2f} | {g:.2f} |"
        for d, e, k, g in zip(
            dims["dims"], dims["ess_fraction"], dims["khat"], dims["grad_ratio"], strict=True
        )
    ]
    (out / "kl_vs_ce_dimension.md").write_text(
        "\n".join(rows)
        + f"\n\np = N(0, I_d), q = N(0, {dims['scale']}² I_d), S = {dims['num_draws']} draws; "
        "the gradient is ∂KL(p‖q)/∂log σ (exactly d (1 − 1/σ²)), means over "
        f"{results['num_repeats']} repeats.\n"
    )


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer minibatches and draws (for the tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON and markdown go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    num_repeats = 20 if args.fast else 100

    p = dist.MultivariateNormal(P_LOC, P_COV)
    family = FullRank()
    target = Target.from_log_density(p.log_prob, 2)
    params_far = family.init(None, target, Q_LOC, Q_SCALE * jnp.eye(2))
    params_at_p = family.init(None, target, P_LOC, jnp.linalg.cholesky(P_COV))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    results = {"num_repeats": num_repeats, "exact": part_exact(family, params_far, p)}
    results["minibatch"] = part_minibatch(
        keys[0], family, params_far, params_at_p, p, num_batches=50 if args.fast else 500, batch_size=32
    )
    results["snis"] = part_snis(
        keys[1], family, params_far, p, (100, 1000) if args.fast else (100, 1000, 10_000), num_repeats
    )
    results["dimension"] = part_dimension(
        2, (1, 10, 100) if args.fast else (1, 2, 5, 10, 20, 50, 100), 1000, num_repeats, scale=0.8
    )
    (args.out / "kl_vs_cross_entropy.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out)

    exact, mini, snis, dims = results["exact"], results["minibatch"], results["snis"], results["dimension"]
    print(f"KL(p||q) = {exact['kl']:.6f}, H(p,q) = {exact['cross_entropy']:.6f}, ", end="")
    print(f"H(p) = {exact['entropy_p']:.6f}")
    error_ratio = snis["rel_error"][-1] / snis["rel_error"][0]
    oks = [
        check("H(p,q) - KL(p||q) - H(p)", abs(exact["gap"] - exact["entropy_p"]), TOL),
        check("exact gradients: max |grad H(p,q) - grad KL(p||q)|", exact["max_grad_diff"], TOL),
        check("minibatch gradients, q far: max |grad KL_B - grad CE_B|", mini["far"]["max_grad_diff"], TOL),
        check("minibatch gradients, q = p: max |grad KL_B - grad CE_B|", mini["at_p"]["max_grad_diff"], TOL),
        check("SNIS: max |grad ForwardKL - hand-written SNIS|", snis["max_diff_forward_kl_vs_hand"], TOL),
        check("SNIS: max |grad weighted_cross_entropy - hand-written|", snis["max_diff_wce_vs_hand"], TOL),
        # the SNIS error falls like 1/sqrt(S) (delta method): 10x the draws, about 1/3 the error
        check("SNIS error shrinks with S: error(S max) / error(S min)", error_ratio, 0.5),
        # in 100-D the weights of a q with 0.8x p's scale collapse onto a handful of the 1000 draws
        check("weight collapse in high dimension: ESS/S at the largest d", dims["ess_fraction"][-1], 0.05),
    ]
    for label in ("far", "at_p"):
        row = mini[label]
        print(f"minibatch values, q {label}: KL_B {row['kl_value_mean']:.3f} ± {row['kl_value_sd']:.3f}, "
              f"CE_B {row['ce_value_mean']:.3f} ± {row['ce_value_sd']:.3f}")  # fmt: skip
    for d, e, k, g in zip(dims["dims"], dims["ess_fraction"], dims["khat"], dims["grad_ratio"], strict=True):
        print(f"d = {d:3d}: ESS/S {e:.3f}, k̂ {k:.2f}, SNIS gradient / exact {g:.2f}")
    print(f"wrote {args.out}/kl_vs_cross_entropy.json and kl_vs_ce_*.md")
    return all(oks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
