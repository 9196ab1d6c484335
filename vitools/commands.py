"""What each ``vitools`` subcommand does, once :mod:`vitools.cli` has parsed and checked its input.

Each ``run_*`` takes the checked ``argparse.Namespace`` (``args.zoo`` is the zoo model) and returns
the exit status. Heavy imports (JAX, NumPyro, ArviZ, matplotlib) happen here, on first use, so
``vitools --help`` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["fit_one", "run_compare", "run_fit", "run_models", "run_nuts"]

NUTS_WARMUP, NUTS_DRAWS, NUTS_CHAINS = 500, 1000, 2  # < 1 min on the small zoo models, 2 CPU cores


def fit_one(args: argparse.Namespace, objective: str) -> Any:
    """``vt.fit`` of ``args.zoo`` with the command's settings; a non-finite loss warns, not raises.

    Raises:
        KeyboardInterrupt: Ctrl-C stopped the fit (the engine catches it and returns the fit so far,
            status "interrupted"): the command stops here, no further fit starts, and
            :func:`vitools.cli.main` exits 130.
    """
    import vitools as vt

    zoo = args.zoo
    fit = vt.fit(
        zoo.model,
        *zoo.args,
        objective=objective,
        family=args.family,
        num_steps=args.num_steps,
        seed=args.seed,
        on_nonfinite="warn",
        progress=not args.quiet,
        **zoo.kwargs,
    )
    if fit.status == "interrupted":
        raise KeyboardInterrupt
    return fit


def run_nuts(
    zoo: Any, seed: int = 0, progress: bool = True, num_warmup: int = NUTS_WARMUP, num_draws: int = NUTS_DRAWS
) -> Any:
    """NUTS reference for a zoo model: sequential chains (NumPyro's progress bar), with the step-size
    target, mass matrix and reparameterization of the zoo's own reference settings where it has them.

    Returns:
        Its DataTree (through :func:`vitools.convert.to_datatree`), with ``elapsed_s`` (wall time,
        compilation included) in the root attrs.
    """
    import jax
    from numpyro.handlers import reparam
    from numpyro.infer import MCMC, NUTS

    from vitools.convert import to_datatree

    settings = zoo.nuts
    model = zoo.model
    if settings is not None and settings.reparam:
        model = reparam(model, config=dict(settings.reparam))
    kernel = NUTS(
        model,
        target_accept_prob=settings.target_accept_prob if settings else 0.9,
        dense_mass=settings.dense_mass if settings else False,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_draws,
        num_chains=NUTS_CHAINS,
        chain_method="sequential",
        progress_bar=progress,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *zoo.args, extra_fields=("num_steps",), **zoo.kwargs)
    tree = to_datatree(mcmc)
    tree.attrs["elapsed_s"] = time.perf_counter() - start
    return tree


def run_compare(args: argparse.Namespace) -> int:
    """``vitools compare``/``demo``: fit each objective, compare against the reference, write the report.

    Each fit is drawn from once (:func:`vitools.convert.to_datatrees`, every fit with seed
    ``args.seed``); the table, the plots and the report read those trees. Ctrl-C in a fit ends
    the command there (:func:`fit_one` raises KeyboardInterrupt): no later objective is fitted and
    no report is written from the fits done so far.
    """
    from vitools.comparison import compare, format_table
    from vitools.convert import draws_to_datatree, to_datatrees
    from vitools.report import write_report

    zoo = args.zoo
    print(f"vitools compare {zoo.name}: {zoo.description}", flush=True)
    fits = {}
    for objective in args.objectives:
        fit = fit_one(args, objective)
        fits[fit.name] = fit
    trees = to_datatrees(fits, num_draws=args.num_draws, seed=args.seed)
    rows: dict[str, Any] = dict(trees)
    reference: Any = None
    source = "none"
    if args.reference == "zoo":
        stored = args.stored_reference
        reference = draws_to_datatree(stored.draws, what="reference draws")  # read once, used twice
        source = f"the zoo's ({stored.source}, {stored.num_draws} draws)"
    elif args.reference == "nuts":
        size = f"{NUTS_CHAINS} chains x ({NUTS_WARMUP} warm-up + {NUTS_DRAWS} draws)"
        print(f"NUTS reference: {size}", flush=True)
        reference = rows["NUTS"] = run_nuts(zoo, seed=args.seed, progress=not args.quiet)
        source = f"NUTS run here, {size}; row 'NUTS' (its time_s includes compilation)"
    table = compare(
        rows,
        reference="NUTS" if args.reference == "nuts" else reference,
        num_draws=args.num_draws,
        seed=args.seed,
    )
    print()
    print(format_table(table))
    notes = [f"model `{zoo.name}`: {zoo.description}", f"reference: {source}"]
    if zoo.log_normalizer is not None:
        notes.append(f"true log evidence (known for this model): {zoo.log_normalizer:.4g}")
    notes.append(
        f"family `{args.family}`, {args.num_steps} steps, seed {args.seed}, {args.num_draws} draws per fit; "
        "time_s is optimisation only (compilation excluded)"
    )
    paths = write_report(
        trees,
        table,
        args.out,
        reference=reference,
        title=f"vitools compare {zoo.name}",
        notes=notes,
        num_draws=args.num_draws,
        seed=args.seed,
    )
    print(f"\nreport written: {paths.markdown} and {paths.html}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """``vitools fit``: one fit, its PSIS diagnostics and its distances to the zoo reference, both
    from one set of draws (one :func:`vitools.convert.to_datatree`)."""
    from vitools.comparison import compare, format_table
    from vitools.convert import to_datatree
    from vitools.diagnostics import diagnose

    fit = fit_one(args, args.objective)
    print(fit)
    tree = to_datatree(fit, num_draws=args.num_draws, seed=args.seed)
    print(diagnose(tree, warn=False))
    try:
        reference = args.zoo.reference()
    except (FileNotFoundError, ValueError) as err:
        print(f"(no reference to compare with: {err})")
        return 0
    table = compare({fit.name: tree}, reference=reference.draws, num_draws=args.num_draws, seed=args.seed)
    print(f"against the zoo reference ({reference.source}):")
    print(format_table(table[["mean_error", "sd_ratio", "w1"]]))
    return 0


def run_models(args: argparse.Namespace) -> int:
    """``vitools models``: one line per zoo model: name, kind of reference, description."""
    from vitools.models import MODELS

    width = max(map(len, MODELS))
    for name, zoo in MODELS.items():
        kind = "exact" if zoo.closed_form is not None else "NUTS"
        print(f"{name:<{width}}  [{kind:>5} reference]  {zoo.description}")
    return 0
