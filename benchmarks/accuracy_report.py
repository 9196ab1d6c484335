"""The report of ``bench_accuracy``: ``accuracy.md`` (summary per model, silent failures, every fit
at the default budget), ``accuracy_verdicts.csv`` and ``accuracy_vs_evals.png``, from the table of
all fits that ``accuracy_runs`` makes (``accuracy.csv``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from accuracy_runs import (
    DEFAULT_CONFIG,
    DEFAULT_STEPS,
    FAILURE_W1,
    FIT_SEEDS,
    IAF_MAX_DIM,
    NOISE_SEEDS,
    NUM_DRAWS,
)
from baselines import SVI_PARTICLES
from common import markdown_table

from vitools.importance import khat_threshold
from vitools.models import get_model


def _seed0(row: pd.Series) -> pd.Series:
    """The row with its seed-0 distances where it was averaged over fit seeds."""
    row = row.copy()
    for key in ("w1", "sd_ratio", "mean_error"):
        seed0 = row.get(f"{key}_seed0")
        if seed0 is not None and pd.notna(seed0):
            row[key] = seed0
    return row


def silent_reason(row: pd.Series, tags: tuple[str, ...]) -> str:
    """Why k̂ did not flag a fit whose draws are far from the reference (w1 > FAILURE_W1)."""
    sd_ratio, mean_error = row["sd_ratio"], row["mean_error"]
    psis = row.get("w1_psis", math.nan)
    after = f"; PSIS-reweighted draws reach w1 = {psis:.2f}" if np.isfinite(psis) else ""
    tag = f" (model: {', '.join(tags)})" if tags else ""
    if sd_ratio > 1.15:
        why = (
            f"q is over-dispersed (sd ratio {sd_ratio:.2f}): it covers p, so the weights p/q stay "
            "bounded and k̂ is low. k̂ judges q as an importance-sampling proposal, not its raw draws"
        )
    elif sd_ratio < 0.85:
        why = (
            f"q is too narrow (sd ratio {sd_ratio:.2f}) yet k̂ is low: the mass q misses lies where "
            f"none of its {NUM_DRAWS} draws land, so no weight reveals it"
        )
    elif mean_error > FAILURE_W1:
        why = f"q's centre is off by {mean_error:.2f} sd while its tails still cover p"
    else:
        why = (
            f"mean and sd are right (error {mean_error:.2f} sd, sd ratio {sd_ratio:.2f}) but the "
            "marginals' shape is not Gaussian (several modes, skew or heavy tails); q covers p, "
            "so k̂ is low"
        )
    mass = row.get("missed_mass", math.nan)
    if np.isfinite(mass):
        seen = "flags it" if mass > 0.1 else "does not flag it either"
        after += f"; compare's missed_mass {mass:.2f} {seen}"
    return why + after + tag


def with_missed_mass(at: pd.DataFrame) -> pd.DataFrame:
    """``compare``'s ``missed_mass`` over all fits of a model at one budget, as if in one table:
    1 - exp(log Z_fit - max log Z), from the importance estimates of the evidence (no reference)."""
    at = at.copy()
    if "log_evidence" not in at:
        at["missed_mass"] = math.nan
        return at
    best = at.groupby("model")["log_evidence"].transform("max")
    at["missed_mass"] = -np.expm1(at["log_evidence"] - best)
    return at


def summarise(df: pd.DataFrame) -> tuple[str, list[str], str, pd.DataFrame]:
    """(summary table, silent failures, default-budget table, summary frame)."""
    at = with_missed_mass(df[df["budget"] == DEFAULT_STEPS])
    lines, silent, verdicts = [], [], []
    for name, group in at.groupby("model", sort=False):
        vit = group[(group["method"] == "vitools") & group["w1"].notna()]
        svi = group[(group["method"] == "svi") & group["w1"].notna()]
        nuts = group[group["method"] == "nuts"]
        default = vit[vit["config"] == "/".join(DEFAULT_CONFIG)]
        best = vit.loc[vit["w1"].idxmin()] if len(vit) else None
        d = default.iloc[0] if len(default) else None
        svi_full = svi[svi["family"] == "fullrank"]
        svi_best = svi_full.loc[svi_full["w1"].idxmin()] if len(svi_full) else None
        svi_mf_rows = svi[svi["family"] == "meanfield"]
        svi_mf = svi_mf_rows.loc[svi_mf_rows["w1"].idxmin()] if len(svi_mf_rows) else None
        vt_mf_rows = vit[vit["config"] == "reverse_kl/meanfield"]
        vt_mf = vt_mf_rows.iloc[0] if len(vt_mf_rows) else None
        svi_any = svi.loc[svi["w1"].idxmin()] if len(svi) else None
        ok, ok_text = at_least_as_good(d, svi_best)
        ok_mf, ok_mf_text = at_least_as_good(vt_mf, svi_mf)
        better, better_text = strictly_better(best, svi_any)
        verdicts.append({"model": name, "default_ok": ok, "meanfield_ok": ok_mf, "best_beats_svi": better})
        lines.append(
            [
                name,
                int(group["dim"].iloc[0]) if pd.notna(group["dim"].iloc[0]) else "",
                _w1_cell(d),
                _svi_cell(group[(group["method"] == "svi") & (group["family"] == "fullrank")]),
                ok_text,
                ok_mf_text,
                f"{best['config']}" if best is not None else "",
                _w1_cell(best),
                better_text,
                _w1_cell(nuts.iloc[0]) if len(nuts) else "",
                f"{nuts.iloc[0]['wall_s']:.1f} s / {nuts.iloc[0]['status']}" if len(nuts) else "",
            ]
        )
        tags = get_model(name).tags
        for _, row in group[group["method"] != "nuts"].iterrows():
            # k̂ is that of the seed-0 fit, so a seeded row is judged on its seed-0 distances.
            row = _seed0(row)
            if row["w1"] > FAILURE_W1 and row["verdict"] in ("good", "ok"):
                silent.append(
                    f"- **{name}**, {row['config']} (w1 {row['w1']:.2f}, "
                    f"k̂ {row['khat']:.2f} {row['verdict']}): " + silent_reason(row, tags)
                )
    header = [
        "model", "dim", "vitools default w1 (k̂)", "SVI AutoMVN w1 (lr 0.01 / 0.1)",
        "default ≥ best SVI AutoMVN? (Δ w1 ± noise)",
        "meanfield: vitools rev. KL ≥ best SVI AutoNormal?", "vitools recommends (best w1)", "its w1 (k̂)",
        "beats every SVI beyond noise?",
        "NUTS equal-time w1", "NUTS wall / draws",
    ]  # fmt: skip
    full_cols = [
        "model", "dim", "config", "steps", "grad_evals", "init_grad_evals", "converged", "wall_s",
        "elapsed_s", "compile_s", "init_s",
        "khat", "verdict", "ess", "elbo", "missed_mass", "mean_error", "sd_ratio", "w1", "w1_se", "fit_seeds",
        "w1_seed0", "w1_psis", "status", "warnings",
    ]  # fmt: skip
    full = at.reindex(columns=full_cols)
    full_rows = [[_cell(v) for v in r] for r in full.itertuples(index=False)]
    return (
        markdown_table(header, lines),
        silent,
        markdown_table(full_cols, full_rows),
        pd.DataFrame(verdicts),
    )


def _difference(a, b) -> tuple[float, float]:
    """w1(a) - w1(b) and the noise allowance: twice the standard error of the difference (each
    w1 a mean over fit seeds, or over NOISE_SEEDS sets of draws for unseeded rows), at least 0.005."""
    se = math.hypot(_finite(a.get("w1_se")), _finite(b.get("w1_se")))
    return float(a["w1"] - b["w1"]), max(2 * se, 0.005)


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


def at_least_as_good(a, b) -> tuple[bool, str]:
    """Is fit row ``a`` at least as accurate as ``b`` (w1 not larger beyond the noise)?"""
    if a is None:
        return False, "no fit"
    if b is None:
        return True, "yes (no SVI fit)"
    diff, tol = _difference(a, b)
    ok = diff <= tol
    return (
        ok,
        f"{'yes' if ok else '**no**'} ({_number(a['w1'])} vs {_number(b['w1'])}, Δ {diff:+.3f} ± {tol:.3f})",
    )


def strictly_better(a, b) -> tuple[bool, str]:
    """Is fit row ``a`` more accurate than ``b`` beyond the noise?"""
    if a is None or b is None:
        return False, ""
    diff, tol = _difference(a, b)
    better = diff < -tol
    return better, f"{'yes' if better else 'no'} (vs {b['config'].removeprefix('SVI ')} {_number(b['w1'])})"


def _svi_cell(svi_rows: pd.DataFrame) -> str:
    """w1 of each SVI learning rate; "diverged" where its loss went non-finite, "failed" where
    scoring failed (e.g. non-finite log densities at q's draws)."""
    cells = []
    for r in svi_rows.sort_values("config").itertuples():
        if pd.notna(r.w1):
            cells.append(_number(r.w1))
        else:
            cells.append("diverged" if r.status == "nonfinite" else "failed")
    return " / ".join(cells)


def _w1_cell(row) -> str:
    if row is None or pd.isna(row.get("w1")):
        return ""
    khat = row.get("khat")
    if khat is None or pd.isna(khat):
        return f"{row['w1']:.3f}"
    return f"{row['w1']:.3f} ({khat:.2f} {row['verdict']})"


def _number(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _cell(v):
    if isinstance(v, float) and np.isnan(v):
        return ""
    if isinstance(v, float):
        if v == 0 or not np.isfinite(v):
            return "0" if v == 0 else str(v)
        return round(v, 3) if abs(v) >= 0.001 else f"{v:.1e}"
    return v


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(df["model"]))
    cols = 4
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colors = {"meanfield": "tab:blue", "fullrank": "tab:red", "lowrank": "tab:green", "iaf": "tab:purple"}
    for ax, name in zip(axes.flat, models, strict=False):
        group = df[(df["model"] == name) & df["w1"].notna()]
        for config, g in group[group["method"] != "nuts"].groupby("config", sort=False):
            g = g.sort_values("grad_evals")
            svi = g["method"].iloc[0] == "svi"
            marker = ("^" if "lr=0.1" in config else "x") if svi else "o"
            ax.plot(
                g["grad_evals"],
                g["w1"],
                marker=marker,
                mfc="none" if marker == "^" else None,
                ms=4,
                lw=1.2,
                color=colors.get(g["family"].iloc[0], "gray"),
                ls=":" if svi else ("-" if g["objective"].iloc[0] == "reverse_kl" else "--"),
                label=config,
            )
        nuts = group[group["method"] == "nuts"]
        if len(nuts):
            ax.plot(nuts["grad_evals"], nuts["w1"], "k*", ms=10, label="NUTS (equal wall time)")
        ax.axhline(FAILURE_W1, color="gray", lw=0.6, ls="-.")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("gradient (density) evaluations", fontsize=8)
        ax.set_ylabel("mean W1 / sd", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2, frameon=False)
    fig.suptitle(
        "Accuracy vs gradient evaluations (solid: reverse KL, dashed: forward KL, dotted: NumPyro SVI; "
        "dash-dot: w1 = 0.25)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(df: pd.DataFrame, out: Path, header: str, budgets, svi_rates) -> None:
    """accuracy.md, accuracy_verdicts.csv and the plot from the table of all fits."""
    plot(df, out / "accuracy_vs_evals.png")
    summary, silent, full, verdicts = summarise(df)
    rates = ", ".join(f"{r:g}" for r in svi_rates)
    text = f"""{header}
Budgets: {", ".join(map(str, budgets))} steps, as vt.fit's `num_steps`: a ceiling, since vt.fit stops
on convergence; the tables below are at its default {DEFAULT_STEPS} (reverse KL: 16 draws/step =
{16 * DEFAULT_STEPS} gradient evaluations at most in the loop; forward KL: its default max(64, 2 dim)
draws/step, density evaluations without gradients). vitools' `grad_evals` count everything a fit
spent: the start (Laplace path, Newton steps, Hessians at dim evaluations each; `init_grad_evals`),
the start race's pilots and the loop's steps actually run (`steps`).
**NumPyro SVI: `Trace_ELBO(num_particles={SVI_PARTICLES})` for the whole budget of steps**, so
{SVI_PARTICLES} x steps gradient evaluations; `optax.adam(lr)`, lr in
({rates}), at constant rate; NumPyro's default init (`init_to_uniform`, scale 0.1).
vitools families: meanfield, fullrank, lowrank (rank 5, where dim > 5) and iaf (a normalizing flow:
2 IAF layers under a full affine map) on the models with dim <= {IAF_MAX_DIM} (its log q at a given point
inverts d network passes per layer; forward KL at d = 103 ran past 15 minutes).
vitools default = `vt.fit(model)`: reverse KL, fullrank, Laplace-path init, Adam at vitools' default
peak rate (per objective and dimension) with warm-up and cosine decay.
NUTS: one chain, warm-up = draws, sized so that its wall time (compile included) matches the
default `vt.fit` call's (compile and Laplace init included).
Accuracy: `vitools.comparison.compare` against the zoo reference, {NUM_DRAWS} draws of q; `w1` = mean
1-D W1 of reference-standardized marginals; k̂ threshold at {NUM_DRAWS} draws =
{khat_threshold(NUM_DRAWS):.2f}. At {DEFAULT_STEPS} steps every w1 is the mean over {NOISE_SEEDS} independent
sets of draws of q. The fits the targets compare (vitools' reverse KL fullrank and meanfield, and
every SVI configuration) are repeated with {FIT_SEEDS} fit seeds (init and optimisation noise): their w1 is
the mean over seeds (`fit_seeds`, `w1_seed0` in the full table) and `w1_se` its standard error over
seeds. "≥" and "beats" allow for that noise: twice the standard error of the difference (at least
0.005). A configuration that fails at any seed (non-finite loss) has no w1. The SVI side is the
better of its two learning rates (a choice vitools does not get).

## Summary per model

{summary}

## Silent failures (w1 > {FAILURE_W1} with k̂ below threshold)

{chr(10).join(silent) if silent else "None."}

## All fits at {DEFAULT_STEPS} steps

Times in seconds: `wall_s` = the whole call; `elapsed_s` = the compiled loop; `compile_s` = the loop's
compilation (first call of a configuration); `init_s` = tracing + Laplace-path init (its compilation on the
model's first fit). For NUTS, `steps` = warm-up + draws and `grad_evals` = leapfrog steps of the kept draws.
`w1_psis` = w1 after Pareto-smoothed importance reweighting of q's draws.

{full}

Plot: `accuracy_vs_evals.png` (w1 against gradient evaluations at each budget). Raw numbers: `accuracy.csv`.
"""
    (out / "accuracy.md").write_text(text)
    verdicts.to_csv(out / "accuracy_verdicts.csv", index=False)
