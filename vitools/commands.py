"""What each ``vitools`` subcommand does, once :mod:`vitools.cli` has parsed and checked its input.

Each ``run_*`` takes the checked ``argparse.Namespace`` (``args.zoo`` is the model: a zoo model or
a :class:`vitools.usermodel.UserModel`) and returns
the exit status. Heavy imports (JAX, NumPyro, ArviZ, matplotlib) happen here, on first use, so
``vitools --help`` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from typing import Any

from vitools import validate
from vitools.tables import TEXT_WIDTH  # the terminal width the table is laid out for

__all__ = [
    "fit_one",
    "next_steps",
    "read_draws",
    "reference_for",
    "run_compare",
    "run_fit",
    "run_models",
    "run_nuts",
]

NUTS_WARMUP, NUTS_DRAWS, NUTS_CHAINS = 500, 1000, 2  # < 1 min on the small zoo models, 2 CPU cores


def fit_one(
    args: argparse.Namespace, objective: str, family: str | None = None, reference: Any = None
) -> Any:
    """``vt.fit`` of ``args.zoo`` with the command's settings; a non-finite loss warns, not raises.

    ``objective`` "forward_kl_draws" is :class:`vitools.ForwardKLFromDraws` on ``reference`` (a
    DataTree of posterior draws); "pathfinder" is :func:`vitools.pathfinder` with 4 paths (the
    family is then a mixture of the paths' Gaussians, ``family`` unused).

    Raises:
        KeyboardInterrupt: Ctrl-C stopped the fit (the engine catches it and returns the fit so far,
            status "interrupted"): the command stops here, no further fit starts, and
            :func:`vitools.cli.main` exits 130.
    """
    import vitools as vt
    from vitools.cli import FROM_DRAWS, PATHFINDER

    zoo = args.zoo
    if objective == PATHFINDER:  # Stan's default of 4 paths, resampled across paths by PSIS
        return vt.pathfinder(
            zoo.model, *zoo.args, num_paths=4, seed=args.seed, progress=not args.quiet, **zoo.kwargs
        )
    if objective == "auto":  # vitools fit --auto
        return vt.auto_fit(
            zoo.model, *zoo.args, num_steps=args.num_steps, num_draws=args.num_draws, seed=args.seed,
            max_grad_evals=args.max_grad_evals, max_time=args.max_time, progress=not args.quiet, **zoo.kwargs,
        )  # fmt: skip
    chosen: Any = vt.ForwardKLFromDraws(reference) if objective == FROM_DRAWS else objective
    fit = vt.fit(
        zoo.model,
        *zoo.args,
        objective=chosen,
        family=family or args.families[0],
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
    zoo: Any,
    seed: int = 0,
    progress: bool = True,
    num_warmup: int = NUTS_WARMUP,
    num_draws: int = NUTS_DRAWS,
    num_chains: int = NUTS_CHAINS,
    target_accept_prob: float | None = None,
    dense_mass: bool = False,
) -> Any:
    """NUTS reference for a model: sequential chains (NumPyro's progress bar), with the step-size
    target, mass matrix and reparameterization of a zoo model's own reference settings where it has
    them (the arguments given here win; defaults 0.8 and a diagonal mass matrix, NumPyro's). A
    model that subsamples data (``plate(..., subsample_size=B)``) runs on all its rows
    (:func:`vitools.subsample.full_data_model`): the full-data posterior its fits approximate.

    Returns:
        Its DataTree (through :func:`vitools.convert.to_datatree`), with ``elapsed_s`` (wall time,
        compilation included) in the root attrs.
    """
    import jax
    from numpyro.handlers import reparam
    from numpyro.infer import MCMC, NUTS

    from vitools.convert import to_datatree
    from vitools.subsample import full_data_model

    settings = zoo.nuts
    model = full_data_model(zoo.model)  # NUTS cannot draw minibatches: a subsampling model runs on all rows
    if settings is not None and settings.reparam:
        model = reparam(model, config=dict(settings.reparam))
    if target_accept_prob is None:
        target_accept_prob = settings.target_accept_prob if settings else 0.8
    kernel = NUTS(
        model,
        target_accept_prob=target_accept_prob,
        dense_mass=dense_mass or bool(settings and settings.dense_mass),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_draws,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=progress,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *zoo.args, extra_fields=("num_steps", "diverging"), **zoo.kwargs)
    tree = to_datatree(mcmc)
    tree.attrs["elapsed_s"] = time.perf_counter() - start
    return tree


class _Say:
    """Where the command's words go: stdout, or stderr when stdout carries the table (--json/--csv)."""

    def __init__(self, args: argparse.Namespace):
        self.stream = sys.stderr if (args.json or args.csv) else sys.stdout

    def __call__(self, *parts: Any) -> None:
        print(*parts, file=self.stream, flush=True)


def reference_for(args: argparse.Namespace, say: _Say) -> tuple[Any, str, Any]:
    """``(reference tree or None, where it came from, NUTS's tree or None)`` for ``args.reference``."""
    from vitools.convert import draws_to_datatree

    if args.reference == "zoo":
        stored = args.stored_reference
        tree = draws_to_datatree(stored.draws, what="reference draws")  # read once, used twice
        return tree, f"the zoo's ({stored.source}, {stored.num_draws} draws)", None
    if args.reference == "file":
        tree = read_draws(args.reference_path)
        source = f"draws from {args.reference_path}"
        if tree.attrs.get("vitools_kind") == "vi":  # vitools fit --out x.nc: an approximation
            fitted = f"{tree.attrs.get('vitools_objective')}/{tree.attrs.get('vitools_family')}"
            source += f", a VI fit's ({fitted}): distances to it are not distances to the posterior"
        say(f"reference: {source}")
        return tree, source, None
    if args.reference == "nuts":
        size = f"{args.nuts_chains} chains x ({args.nuts_warmup} warm-up + {args.nuts_draws} draws)"
        say(f"NUTS reference: {size}")
        tree = run_nuts(
            args.zoo,
            seed=args.seed,
            progress=not args.quiet,
            num_warmup=args.nuts_warmup,
            num_draws=args.nuts_draws,
            num_chains=args.nuts_chains,
            target_accept_prob=args.target_accept,
            dense_mass=args.dense_mass,
        )
        return tree, f"NUTS run here, {size}; row 'NUTS' (its time_s includes compilation)", tree
    return None, "none", None


def read_draws(path: Any) -> Any:
    """A file of posterior draws as a DataTree: ``.nc`` (an ArviZ DataTree, e.g. ``vitools fit
    --out x.nc`` or ``tree.to_netcdf``), ``.npz`` or ``.json`` (site -> array with a leading draw
    axis).

    Raises:
        ArgumentValueError: the file cannot be read as draws (the reader's message is kept).
    """
    import json

    import numpy as np
    import xarray as xr

    from vitools import validate
    from vitools.convert import draws_to_datatree

    try:
        if path.suffix == ".nc":
            return xr.open_datatree(path).load()
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                draws = {k: npz[k] for k in npz.files}
        else:
            draws = {k: np.asarray(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        return draws_to_datatree(draws, what=f"the draws in {path}")
    except (ValueError, OSError, TypeError, AttributeError) as err:
        raise validate.ArgumentValueError(f"--reference {str(path)!r}: {err}", "--reference") from None


def run_compare(args: argparse.Namespace) -> int:
    """``vitools compare``/``demo``: fit each objective with each family, compare against the
    reference, print the table (text, or --json/--csv on stdout), suggest a next step for each fit
    that reads bad, and write the report (:func:`vitools.report.report`).

    Each fit is drawn from once; the table, the plots and the report read those draws. Ctrl-C in a
    fit ends the command there (:func:`fit_one` raises KeyboardInterrupt): no later fit starts and
    no report is written from the fits done so far.
    """
    from vitools.cli import PATHFINDER
    from vitools.report import report
    from vitools.tables import format_table

    say = _Say(args)
    zoo = args.zoo
    say(f"vitools {args.command} {zoo.name}: {zoo.description}")
    reference, source, nuts = reference_for(args, say)
    fits, refused, errors = {}, [], []
    for objective in args.objectives:
        for family in args.families[:1] if objective == PATHFINDER else args.families:
            try:
                fit = fit_one(args, objective, family, reference)
            except validate.ArgumentError as err:  # e.g. batch-and-match with a flow: say so, go on
                refused.append(f"{objective}/{family} not fitted: {err}")
                errors.append(err)
                say(refused[-1])
                continue
            fits[fit.name] = fit
    if not fits:  # nothing to compare: the first refusal is the command's error
        raise errors[0]
    rows = {**fits, "NUTS": nuts} if nuts is not None else dict(fits)
    notes = [f"model `{zoo.name}`: {zoo.description}", f"reference: {source}", *refused]
    if nuts is not None:  # kept, so the next run can use it: --reference DIR/nuts.nc
        nuts.to_netcdf(args.out / "nuts.nc", engine="h5netcdf")
        notes.append(f"NUTS draws saved: `{args.out / 'nuts.nc'}` (use it as --reference next time)")
    if zoo.log_normalizer is not None:
        notes.append(
            f"true log evidence (known for this model): {zoo.log_normalizer:.4g}; missed_mass is measured "
            "against it"
        )
    notes.append(
        f"families {', '.join(args.families)}; at most {args.num_steps} steps, seed {args.seed}, "
        f"{args.num_draws} draws per fit; time_s counts each fit's start, compilation and loop"
    )
    paths = report(
        rows,
        reference="NUTS" if nuts is not None else reference,
        out=args.out,
        title=f"vitools {args.command} {zoo.name}",
        notes=notes,
        num_draws=args.num_draws,
        seed=args.seed,
        var_names=args.var_names,
        log_evidence=zoo.log_normalizer,  # the missed mass's anchor where known (None: the fits')
    )
    table = paths.table
    if args.json or args.csv:
        print(format_table(table, "json" if args.json else "csv").rstrip("\n"))
    else:
        say()
        say(format_table(table))
    from vitools.advice import which_to_trust

    say("\n" + textwrap.fill(which_to_trust(table), TEXT_WIDTH))
    steps = next_steps(table)
    if steps:
        say("\nNext steps:")
        for line in steps:
            say(textwrap.fill(line, TEXT_WIDTH, initial_indent="  ", subsequent_indent="      "))
    say(f"\nreport written: {paths.markdown} and {paths.html}")
    return 0


def next_steps(table: Any, auto: Any = None) -> list[str]:
    """``"<fit> reads bad: try --family iaf (why)"`` for each fit that reads bad or uncertain
    (:func:`vitools.advice.next_steps`). ``auto``: the :class:`~vitools.auto.AutoPath` of an
    ``--auto`` fit, whose tried steps are not suggested again (:func:`vitools.advice.already_tried`)."""
    from vitools.advice import TRIED, already_tried
    from vitools.advice import next_steps as advise

    lines = []
    for name, step in advise(table).items():
        verdict, change = table.loc[name, "verdict"], step.as_flags()
        if auto is not None and already_tried(step, table.loc[name], auto):
            lines.append(f"{name} reads {verdict}, and " + TRIED.format(change=change))
            continue
        lines.append(f"{name} reads {verdict}: " + (f"try {change} ({step.why})" if change else step.why))
    return lines


def run_fit(args: argparse.Namespace) -> int:
    """``vitools fit``: one fit, its posterior summary (:func:`vitools.summary.summary`), its
    diagnostics and, with a reference, its distances to it, all from one set of draws; saved with
    ``--out`` (``.nc``: the draws' DataTree; otherwise :func:`vitools.persist.save`)."""
    from vitools.comparison import compare
    from vitools.convert import to_datatree
    from vitools.diagnostics import diagnose
    from vitools.persist import save
    from vitools.summary import summary
    from vitools.tables import format_table

    say = _Say(args)
    reference, source, _ = reference_for(args, say)
    fit = fit_one(args, args.objectives[0], args.families[0], reference)
    say(fit)
    num_draws = args.num_draws
    if fit.auto is not None:
        say(fit.auto)
        num_draws = max(num_draws, fit.auto.num_draws)  # read as auto read it (4x draws where k̂ straddled)
    tree = to_datatree(fit, num_draws=num_draws, seed=args.seed)
    say(summary(tree, var_names=args.var_names).to_string(float_format=lambda v: f"{v:.3g}"))
    for line in str(diagnose(tree, warn=False)).splitlines():
        if not line.startswith("PSIS-corrected"):  # the summary above has psis_mean, psis_sd
            say(textwrap.fill(line, TEXT_WIDTH, subsequent_indent="      "))
    table = compare({fit.name: tree}, reference=reference, num_draws=num_draws, seed=args.seed)
    if args.json or args.csv:
        print(format_table(table, "json" if args.json else "csv").rstrip("\n"))
    elif reference is not None:
        say(f"against the reference ({source}):")
        say(format_table(table[["mean_error", "sd_ratio", "w1"]]))
    for line in next_steps(table, fit.auto):
        say(f"next: {line}")
    if args.out is not None:
        if args.out.suffix == ".nc":
            tree.to_netcdf(args.out, engine="h5netcdf")
        else:
            save(fit, args.out)
        say(f"saved: {args.out}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """``vitools models``: one line per zoo model: name, kind of reference, description."""
    from vitools.models import MODELS

    width = max(map(len, MODELS))
    for name, zoo in MODELS.items():
        kind = "exact" if zoo.closed_form is not None else "NUTS"
        print(f"{name:<{width}}  [{kind:>5} reference]  {zoo.description}")
    return 0
