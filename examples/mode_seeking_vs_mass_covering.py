r"""Reverse KL is mode-seeking, forward KL is mass-covering: both fitted with ``vt.fit`` on two modes.

Run: ``python examples/mode_seeking_vs_mass_covering.py`` (about 20 s on a laptop CPU; ``--fast``:
fewer steps, for the tests). Writes ``docs/generated/`` (``--out``): ``modes.png`` (both q's over
p's density), ``modes.json`` and ``modes.md`` (the numbers and the diagnostics the concepts page
includes).

The target is the zoo's ``bimodal``: an equal mixture of N((-2.5, -2.5), I) and N((2.5, 2.5), I),
whose mean is 0 and covariance I + 6.25·11ᵀ. A full-rank Gaussian q fitted by

- reverse KL, KL(q‖p) = E_q[log q - log p]: q is penalised wherever it puts mass where p has little
  (log p → -∞ in the valley), so it sits on one mode with that mode's covariance I (mode-seeking);
- forward KL, KL(p‖q) = E_p[log p - log q]: q is penalised wherever p has mass and q has little, so
  it must cover both modes; the best Gaussian matches p's mean and covariance (moment matching) and
  fills the empty valley between the modes (mass-covering).

Each claim is printed as a ``CHECK`` line ending in ``ok`` or ``FAILED`` (the tests read them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

import vitools as vt  # noqa: E402
from vitools.importance import khat_threshold  # noqa: E402
from vitools.models import get_model  # noqa: E402
from vitools.tables import format_table  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "generated"
MODE = 2.5  # the modes are at ±(2.5, 2.5): vitools.models.toy.BIMODAL_LOCS
GRID = np.linspace(-7.0, 7.0, 201)  # ±7 holds both modes to 4.5 sds


def check(name: str, value: float, bound: float) -> bool:
    ok = bool(value <= bound)
    print(f"CHECK {name}: {value:.3g} <= {bound:.3g} {'ok' if ok else 'FAILED'}")
    return ok


def densities(zoo, fits: dict[str, vt.Fit]) -> dict[str, np.ndarray]:
    """p's density (the model's joint: bimodal is normalised, log Z = 0) and each q's on the grid."""
    z1, z2 = np.meshgrid(GRID, GRID)
    points = np.stack([z1.ravel(), z2.ravel()], axis=-1)
    log_p = jax.jit(jax.vmap(lambda z: log_density(zoo.model, zoo.args, zoo.kwargs, {"z": z})[0]))(points)
    out = {"p": np.exp(np.asarray(log_p)).reshape(z1.shape)}
    for name, fit in fits.items():
        out[name] = np.exp(fit.log_prob({"z": points})).reshape(z1.shape)
    return out


def plot(zoo, fits: dict[str, vt.Fit], path: Path) -> None:
    """Two panels of p's density with a q's contours on top, and the densities along z1 = z2."""
    dens = densities(zoo, fits)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.3), constrained_layout=True)
    colours = {"reverse KL": "tab:red", "forward KL": "tab:blue"}
    titles = {"reverse KL": "reverse KL(q‖p): mode-seeking", "forward KL": "forward KL(p‖q): mass-covering"}
    for ax, name in zip(axes[:2], fits, strict=True):
        ax.contourf(GRID, GRID, dens["p"], levels=12, cmap="Greys")
        # contours of q at the density of its 1, 2 and 3 sd ellipses (exp(-r²/2) of its peak)
        peak = dens[name].max()
        ax.contour(GRID, GRID, dens[name], levels=peak * np.exp(-0.5 * np.array([9.0, 4.0, 1.0])),
                   colors=colours[name], linewidths=1.6)  # fmt: skip
        ax.set_title(titles[name])
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.set_aspect("equal")
    # along the diagonal z1 = z2 = t, the line through both modes
    diagonal = np.arange(GRID.size)
    t = GRID
    axes[2].fill_between(t, dens["p"][diagonal, diagonal], color="0.75", label="p (the posterior)")
    for name in fits:
        axes[2].plot(t, dens[name][diagonal, diagonal], color=colours[name], lw=2, label=f"q, {name}")
    axes[2].set_title("densities along z[0] = z[1]")
    axes[2].set_xlabel("z[0] = z[1]")
    axes[2].legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer steps and draws (for the tests)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the figure, JSON and markdown go"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    num_steps = 500 if args.fast else 3000
    num_draws = 1000 if args.fast else 4000  # the diagnostics' draws of q

    zoo = get_model("bimodal")
    fits = {
        name: vt.fit(
            zoo.model, objective=objective, family="fullrank", num_steps=num_steps, seed=0, progress=False
        )
        for name, objective in (("reverse KL", "reverse_kl"), ("forward KL", "forward_kl"))
    }
    plot(zoo, fits, args.out / "modes.png")

    # compare draws S from each q once: k̂, the verdicts, ELBO ≤ log Ẑ ≤ CUBO and the missed mass (what
    # vt.diagnose(fit, num_draws=S) says of each fit alone, plus what the other fit reveals)
    table = vt.compare(fits, reference=zoo.reference(), num_draws=num_draws)
    # the page's column is narrow: the columns that say which fit to trust, not its cost
    shown = table.drop(columns=["objective", "family", "grad_evals", "time_s", "mean_error", "sd_ratio"])
    (args.out / "modes_compare.md").write_text(format_table(shown, "markdown") + "\n")
    results = {"num_steps": num_steps, "num_draws": num_draws, "log_z": zoo.log_normalizer,
               "khat_threshold": khat_threshold(num_draws), "fits": {}}  # fmt: skip
    for name, fit in fits.items():
        mean, cov = fit.mean_and_covariance()
        row = table.loc[name]
        results["fits"][name] = {"mean": mean.tolist(), "cov": cov.tolist(), "verdict": row["verdict"]} | {
            column: float(row[column])
            for column in (
                "steps",
                "khat",
                "khat_se",
                "ess",
                "elbo",
                "log_evidence",
                "cubo",
                "missed_mass",
                "w1",
            )
        }
    (args.out / "modes.json").write_text(json.dumps(results, indent=2) + "\n")

    rows = [
        "| fit | mean of q | covariance of q | k̂ | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["fits"].items():
        mean, cov = np.array(row["mean"]), np.array(row["cov"])
        rows.append(
            f"| {name} | ({mean[0]:.2f}, {mean[1]:.2f}) | [[{cov[0, 0]:.2f}, {cov[0, 1]:.2f}], "
            f"[{cov[1, 0]:.2f}, {cov[1, 1]:.2f}]] | {row['khat']:.2f} ± {row['khat_se']:.2f} "
            f"| {row['verdict']} |"
        )
    (args.out / "modes.md").write_text(
        "\n".join(rows) + f'\n\n`vt.fit(..., family="fullrank", num_steps={num_steps})`; diagnostics from '
        f"S = {num_draws} draws of each q (k̂ threshold {results['khat_threshold']:.2f}). The true log Z is "
        f"{zoo.log_normalizer:g}; p's mean is (0, 0) and its covariance [[7.25, 6.25], [6.25, 7.25]].\n"
    )

    reverse, forward = results["fits"]["reverse KL"], results["fits"]["forward KL"]
    p_cov = np.eye(2) + 6.25 * np.ones((2, 2))  # the mixture's covariance, see vitools.models.toy.bimodal
    rev_mean, fwd_mean = np.array(reverse["mean"]), np.array(forward["mean"])
    for name, row in results["fits"].items():
        print(f"{name}: mean {np.round(row['mean'], 2)}, cov {np.round(row['cov'], 2).tolist()}, "
              f"k̂ {row['khat']:.2f}, verdict {row['verdict']}")  # fmt: skip
    # Tolerances: a fit's mean moves by ~0.1 between seeds and step budgets (Adam noise at the end
    # of the schedule); 0.5 is far below the 7.1 between the modes, so each check separates the two
    # pictures, not the fine detail.
    modes = np.array([[MODE, MODE], [-MODE, -MODE]])
    to_nearest_mode = float(np.min(np.linalg.norm(rev_mean[None] - modes, axis=1)))
    reverse_cov_error = float(np.max(np.abs(np.array(reverse["cov"]) - np.eye(2))))
    forward_cov_error = float(np.max(np.abs(np.array(forward["cov"]) - p_cov)) / p_cov.max())
    max_elbo = max(reverse["elbo"], forward["elbo"])
    oks = [
        check("reverse KL sits on a mode: distance of q's mean to the nearest mode", to_nearest_mode, 0.5),
        check("reverse KL has one mode's covariance: max |cov - I|", reverse_cov_error, 0.5),
        check(
            "forward KL covers both: distance of q's mean to p's mean (0, 0)", np.linalg.norm(fwd_mean), 0.5
        ),
        # forward KL's optimum is p's covariance; a relative 25% is loose for an SNIS fit in 2-D
        check("forward KL matches p's covariance: max |cov - cov_p| / max cov_p", forward_cov_error, 0.25),
        # ELBO ≤ log Z always; CUBO ≥ log Z only in expectation, so the check is on the ELBO side
        check("ELBO <= log Z for both fits: max ELBO - log Z", max_elbo - zoo.log_normalizer, 0.0),
        # the reverse-KL q draws from one of two equal modes: half the mass is missing (0.5 exactly);
        # 0.1 is several Monte Carlo sds of the estimate at S = 1000 (its log-evidence se is ~0.03)
        check(
            "compare sees the missing mode: |reverse KL's missed mass - 0.5|",
            abs(reverse["missed_mass"] - 0.5),
            0.1,
        ),
    ]
    print(f"wrote {args.out}/modes.png, modes.json, modes.md")
    return all(oks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
