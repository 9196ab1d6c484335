"""Regenerate the zoo's stored NUTS references: ``vitools/models/references/<name>.npz``.

Usage:
    python benchmarks/make_references.py               # every model with a NUTS reference
    python benchmarks/make_references.py radon funnel  # just these (closed-form ones are skipped)
    python benchmarks/make_references.py --data        # first rewrite the breast-cancer data (scikit-learn)

Each reference is a long NUTS run (float64, chains run sequentially), accepted only if the
rank-normalized split R-hat is below 1.01 and the bulk and tail ESS exceed 400 for every scalar
component (ArviZ ``rhat``/``ess``), with no divergent transitions. Moments come from all draws;
the stored draws are thinned evenly over all chains to ``NutsSettings.num_kept`` and written as
float32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# vitools.models.regression.BREAST_CANCER_PATH; not imported, since importing it needs the file.
BREAST_CANCER_PATH = Path(__file__).resolve().parents[1] / "vitools/models/references/data_breast_cancer.npz"
MAX_RHAT, MIN_ESS = 1.01, 400.0
FEATURES = (
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean compactness",
    "mean concave points",
    "mean symmetry",
    "mean fractal dimension",
    "radius error",
    "texture error",
    "smoothness error",
)


def write_breast_cancer_data() -> None:
    """Standardize 10 features of scikit-learn's breast-cancer data and store them in the package."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = [list(data.feature_names).index(name) for name in FEATURES]
    X = data.data[:, columns]
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    BREAST_CANCER_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        BREAST_CANCER_PATH,
        X=X.astype(np.float32),
        y=data.target.astype(np.int8),
        feature_names=np.asarray(FEATURES),
    )
    print(f"wrote {BREAST_CANCER_PATH} ({X.shape[0]} rows, {X.shape[1]} features)", flush=True)


def reference_nuts(zoo, settings, seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """NUTS on ``zoo``; returns latent draws shaped ``(chain, draw, *site)`` and the divergence count."""
    import jax
    from baselines import run_nuts  # imports JAX: after enable_x64 (see main)
    from numpyro import handlers

    model = zoo.model
    if settings.reparam is not None:
        model = handlers.reparam(model, config=dict(settings.reparam))
    mcmc, _, divergences = run_nuts(
        jax.random.key(seed),
        model,
        zoo.args,
        zoo.kwargs,
        num_warmup=settings.num_warmup,
        num_draws=settings.num_draws,
        num_chains=settings.num_chains,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
        dense_mass=settings.dense_mass,
    )
    samples = mcmc.get_samples(group_by_chain=True)
    draws = {site: np.asarray(samples[site], dtype=np.float64) for site in zoo.latent_shapes()}
    return draws, divergences


def diagnose(draws: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """Max R-hat, min bulk ESS and min tail ESS over every scalar component."""
    import arviz as az

    tree = az.from_dict({"posterior": draws})
    rhat = az.rhat(tree)
    ess_bulk = az.ess(tree, method="bulk")
    ess_tail = az.ess(tree, method="tail")
    worst = [
        (float(np.max(rhat[s].values)), float(np.min(ess_bulk[s].values)), float(np.min(ess_tail[s].values)))
        for s in draws
    ]
    return max(w[0] for w in worst), min(w[1] for w in worst), min(w[2] for w in worst)


def make_reference(name: str) -> bool:
    """Build and store the reference of model ``name``; returns whether it passed the checks."""
    from vitools.models import Reference, get_model
    from vitools.models.base import reference_path, save_reference

    zoo = get_model(name)
    settings = zoo.nuts
    if settings is None:
        print(f"{name:26s} closed form, nothing to store", flush=True)
        return True
    start = time.perf_counter()
    source_zoo = get_model(settings.source_model) if settings.source_model else zoo
    draws, divergences = reference_nuts(source_zoo, settings)
    if settings.transform is not None:
        chains, length = next(iter(draws.values())).shape[:2]
        flat = {site: value.reshape(chains * length, *value.shape[2:]) for site, value in draws.items()}
        transformed = settings.transform(flat)
        draws = {site: value.reshape(chains, length, *value.shape[1:]) for site, value in transformed.items()}
    max_rhat, min_bulk, min_tail = diagnose(draws)
    ok = max_rhat < MAX_RHAT and min_bulk > MIN_ESS and min_tail > MIN_ESS and divergences == 0
    source = (
        f"NUTS: {settings.num_chains} chains x {settings.num_draws} draws ({settings.num_warmup} warm-up), "
        f"max R-hat {max_rhat:.4f}, min ESS bulk {min_bulk:.0f} / tail {min_tail:.0f}, "
        f"{divergences} divergences, target_accept {settings.target_accept_prob}; "
        f"{settings.num_kept} draws kept"
    )
    if settings.reparam:
        source += f"; run with {', '.join(f'{type(r).__name__} on {s}' for s, r in settings.reparam.items())}"
    if settings.source_model:
        source += f"; run on {settings.source_model} and transformed (same posterior)"
    elapsed = time.perf_counter() - start
    if not ok:
        print(f"{name:26s} FAILED checks ({elapsed:.0f} s): {source}", flush=True)
        return False
    total = settings.num_chains * settings.num_draws
    keep = np.linspace(0, total - 1, settings.num_kept).round().astype(int)
    flat = {site: value.reshape(total, *value.shape[2:]) for site, value in draws.items()}
    reference = Reference(
        draws={site: value[keep] for site, value in flat.items()},
        mean={site: value.mean(axis=0) for site, value in flat.items()},
        sd={site: value.std(axis=0, ddof=1) for site, value in flat.items()},
        source=source,
    )
    path = reference_path(name)
    save_reference(path, reference, zoo.data_fingerprint())
    print(f"{name:26s} {elapsed:5.0f} s  {path.stat().st_size / 1024:6.0f} KiB  {source}", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("names", nargs="*", help="models to rebuild (default: all)")
    parser.add_argument("--data", action="store_true", help="rewrite the breast-cancer data first")
    args = parser.parse_args(argv)

    import numpyro

    numpyro.enable_x64()  # before any JAX array exists: the references are computed in float64
    if args.data:
        write_breast_cancer_data()
    from vitools.models import list_models

    names = args.names or list_models()
    start = time.perf_counter()
    failed = [name for name in names if not make_reference(name)]
    print(f"done in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
