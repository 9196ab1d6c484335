"""The ``vitools`` command: fit a model (built-in, or any NumPyro model in a file with its data) in
both KL directions and with several families, compare the fits, write a report.

Exit status: 0 done; 2 bad input (``vitools: error: ...`` on one stderr line): every option is
checked with :mod:`vitools.validate` before anything is fitted, and an
:class:`~vitools.validate.ArgumentError` the library raises during the run is reported the same way;
130 Ctrl-C (``vitools: interrupted``): the first interrupted fit ends the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vitools import commands, validate
from vitools.commands import NUTS_CHAINS, NUTS_DRAWS, NUTS_WARMUP
from vitools.convert import DIAGNOSTIC_DRAWS

__all__ = ["main"]

DEFAULT_MODEL = "banana"
DEFAULT_OBJECTIVES = "reverse_kl,forward_kl"
DEMO_OBJECTIVES, DEMO_FAMILIES = "forward_kl", "fullrank,iaf"
FROM_DRAWS = "forward_kl_draws"  # the objective name for vt.ForwardKLFromDraws on the reference's draws
PATHFINDER = "pathfinder"  # vt.pathfinder (4 paths), fitted once whatever the families
MIN_DRAWS = 25  # PSIS needs at least this many draws (vitools.importance.MIN_PSIS_DRAWS)

DESCRIPTION = """\
Variational inference in both KL directions on NumPyro models, compared with ArviZ diagnostics.

Each objective and family is fitted to a model (a built-in one, or yours: file.py:function with
--data); the fits are compared side by side (verdict, PSIS k-hat, importance ESS, log-evidence
bounds, and distances to a reference posterior), and a report (markdown + HTML with plots) is
written. A fit that reads bad gets a suggested next step."""

EPILOG = """\
examples:
  vitools models                                   list the built-in models
  vitools demo                                     a Gaussian against a flow on 'banana'
  vitools compare eight_schools_noncentered --reference nuts --out report-8s
  vitools compare funnel --objectives reverse_kl,forward_kl --family fullrank,iaf
  vitools compare my_model.py:model --data data.json --reference nuts --csv > table.csv
  vitools fit banana --objective forward_kl --family iaf --out banana.vitools.npz

Run 'vitools COMMAND --help' for the options of a command."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``vitools: error: ...``) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"vitools: error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


MODEL_HELP = (
    "a built-in model (see 'vitools models'), or yours: path/to/file.py:function or package.module:function"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``vitools`` argument parser (subcommands ``compare``, ``fit``, ``models``, ``demo``)."""
    parser = _Parser(prog="vitools", description=DESCRIPTION, epilog=EPILOG, formatter_class=_formatter)
    from vitools import __version__

    parser.add_argument("--version", action="version", version=f"vitools {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compare = sub.add_parser(
        "compare",
        help="fit several objectives and families to a model, compare them, write a report",
        description="Fit each objective with each family to a model, compare the fits against a\n"
        "reference posterior, print the table and write DIR/report.md, DIR/report.html (with plots)\n"
        "and DIR/table.csv.",
        formatter_class=_formatter,
    )
    compare.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _add_compare_options(compare)
    compare.set_defaults(run=commands.run_compare)

    fit = sub.add_parser(
        "fit",
        help="fit one objective to a model and print its estimates and diagnostics",
        description="Fit one objective to a model; print the fit, its posterior summary, its\n"
        "diagnostics and (with a reference) its distance to the reference; save it with --out.",
        formatter_class=_formatter,
    )
    fit.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    fit.add_argument(
        "--objective",
        default="reverse_kl",
        help=f"{_objective_names()} (default: %(default)s)",
    )
    fit.add_argument(
        "--auto",
        action="store_true",
        help="choose the objective and the family: fit the default, read its diagnostics and escalate "
        "(more steps, a mode search, a flow, forward KL) until the fit reads good (vt.auto_fit)",
    )
    fit.add_argument(
        "--max-grad-evals",
        type=int,
        default=1_000_000,
        metavar="N",
        help="--auto's budget in gradient evaluations, starts included (default: %(default)s)",
    )
    fit.add_argument(
        "--max-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="--auto's budget in seconds, checked between its fits (default: none)",
    )
    fit.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="save the fit: FILE.nc its draws as an ArviZ DataTree (netCDF), any other name the fit "
        "itself (vt.load reads it back)",
    )
    _add_fit_options(fit, several=False)
    fit.set_defaults(run=commands.run_fit)

    models = sub.add_parser("models", help="list the built-in models", formatter_class=_formatter)
    models.set_defaults(run=commands.run_models)

    demo = sub.add_parser(
        "demo",
        help=f"a Gaussian against a flow on '{DEFAULT_MODEL}', with its reference",
        description=f"Fit forward KL with a full-rank Gaussian and with a flow (IAF) to the curved\n"
        f"'{DEFAULT_MODEL}' posterior, compare them against its reference, say which to trust and\n"
        f"why, and write the report to vitools-report/{DEFAULT_MODEL} unless --out says otherwise.",
        formatter_class=_formatter,
    )
    _add_compare_options(demo)
    demo.set_defaults(
        run=commands.run_compare, model=DEFAULT_MODEL, objectives=DEMO_OBJECTIVES, family=DEMO_FAMILIES
    )
    return parser


def _add_fit_options(parser: argparse.ArgumentParser, several: bool = True) -> None:
    from vitools.families import FAMILIES

    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="the data of a model from a file: .json, .npz or .csv (passed as keyword arguments "
        "when the model names them, else as one dict)",
    )
    parser.add_argument(
        "--family",
        default="fullrank",
        metavar="LIST" if several else "NAME",
        help=f"{'comma-separated: ' if several else ''}{', '.join(FAMILIES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=2000,
        metavar="N",
        help="most optimisation steps (default: %(default)s)",
    )
    parser.add_argument(
        "--num-draws",
        type=int,
        default=DIAGNOSTIC_DRAWS,
        metavar="S",
        help=f"draws per fit for diagnostics and plots, at least {MIN_DRAWS} for PSIS (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="K", help="seed of fits and draws (default: %(default)s)"
    )
    parser.add_argument(
        "--var-names",
        default=None,
        metavar="LIST",
        help="comma-separated sites (latent or deterministic) to summarise and plot (default: all)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="{zoo,nuts,none,FILE}",
        help="zoo: a built-in model's stored reference (its default); nuts: run NUTS now (see --nuts-*); "
        "FILE: posterior draws, an ArviZ DataTree (.nc) or .npz/.json of arrays (site -> (draws, ...)); "
        "none (default for your own model)",
    )
    nuts = parser.add_argument_group("NUTS (--reference nuts)")
    nuts.add_argument(
        "--nuts-chains", type=int, default=NUTS_CHAINS, metavar="C", help="chains (default: %(default)s)"
    )
    nuts.add_argument(
        "--nuts-warmup",
        type=int,
        default=NUTS_WARMUP,
        metavar="N",
        help="warm-up per chain (default: %(default)s)",
    )
    nuts.add_argument(
        "--nuts-draws",
        type=int,
        default=NUTS_DRAWS,
        metavar="N",
        help="draws per chain (default: %(default)s)",
    )
    nuts.add_argument(
        "--target-accept",
        type=float,
        default=None,
        metavar="P",
        help="step-size target (default: 0.8, or the zoo's)",
    )
    nuts.add_argument("--dense-mass", action="store_true", help="adapt a dense mass matrix")
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print the table as JSON on stdout (the rest on stderr)"
    )
    output.add_argument(
        "--csv", action="store_true", help="print the table as CSV on stdout (the rest on stderr)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not keep compiled programs on disk (default: keep them in $VITOOLS_CACHE_DIR or "
        "~/.cache/vitools/jax, so a second run skips compiling)",
    )


def _objective_names() -> str:
    from vitools.objectives import OBJECTIVES

    return (
        f"{', '.join(OBJECTIVES)}, {FROM_DRAWS} (forward KL from the reference's draws), "
        f"{PATHFINDER} (Pathfinder, 4 paths; one fit whatever the families)"
    )


def _add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--objectives",
        default=DEFAULT_OBJECTIVES,
        metavar="LIST",
        help=f"comma-separated: {_objective_names()} (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="report folder (default: vitools-report/MODEL)"
    )
    _add_fit_options(parser)


def _names(text: str, option: str, choices: Sequence[str] | None = None) -> list[str]:
    """A comma-separated option as a list without repeats; each checked against ``choices``."""
    names = list(dict.fromkeys(o.strip() for o in text.split(",") if o.strip()))
    if not names:
        raise validate.ArgumentValueError(f"{option} is empty; give a comma-separated list", option)
    return names if choices is None else [validate.choice(n, option, list(choices)) for n in names]


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    """Validate every option before fitting anything; raises :class:`validate.ArgumentError`
    naming the option.

    Adds ``args.zoo`` (the model: a zoo model, or a :class:`vitools.usermodel.UserModel`),
    ``args.families``, ``args.objectives`` (lists), ``args.var_names`` (list or None) and
    ``args.stored_reference`` (the zoo's reference, or None); the output folder is created last,
    once the rest is known to be valid.
    """
    from vitools.families import FAMILIES
    from vitools.models import get_model
    from vitools.objectives import OBJECTIVES
    from vitools.usermodel import is_spec, user_model

    if is_spec(args.model):
        args.zoo = user_model(args.model, args.data)
    elif args.model.endswith(".py"):
        raise validate.ArgumentValueError(
            f"MODEL {args.model!r}: name the function too, e.g. {args.model}:model", "MODEL"
        )
    else:
        if args.data is not None:
            raise validate.ArgumentValueError(
                "--data is for a model from a file (file.py:function)", "--data"
            )
        args.zoo = validate.option(get_model, args.model, "MODEL")
    objectives = [*OBJECTIVES, FROM_DRAWS, PATHFINDER]
    args.families = _names(args.family, "--family", list(FAMILIES))
    validate.count(args.num_steps, "--num-steps")
    validate.count(args.num_draws, "--num-draws", minimum=MIN_DRAWS)
    validate.seed(args.seed, "--seed")
    validate.count(args.nuts_chains, "--nuts-chains")
    validate.count(args.nuts_warmup, "--nuts-warmup")
    validate.count(args.nuts_draws, "--nuts-draws")
    if args.target_accept is not None:
        validate.in_range(args.target_accept, "--target-accept", 0.0, 1.0)
    args.var_names = None if args.var_names is None else _names(args.var_names, "--var-names")
    if args.command == "fit":
        if len(args.families) > 1:
            raise validate.ArgumentValueError(
                "vitools fit takes one --family; use compare for several", "--family"
            )
        args.objectives = [validate.choice(args.objective, "--objective", objectives)]
        if args.auto:
            if (args.objective, args.family) != ("reverse_kl", "fullrank"):
                raise validate.ArgumentValueError(
                    "--auto chooses the objective and the family: leave out --objective and --family",
                    "--auto",
                )
            args.objectives, args.families = ["auto"], ["auto"]
        validate.count(args.max_grad_evals, "--max-grad-evals")
        if args.max_time is not None:
            validate.positive(args.max_time, "--max-time")
    else:
        args.objectives = _names(args.objectives, "--objectives", objectives)
    _check_reference(args)
    if FROM_DRAWS in args.objectives and args.reference == "none":
        raise validate.ArgumentValueError(
            f"{FROM_DRAWS} fits q to the reference's draws: give --reference nuts, zoo or a file of draws",
            "--objectives",
        )
    if args.var_names is not None:
        from vitools.usermodel import model_sites

        sites = model_sites(args.zoo.model, args.zoo.args, dict(args.zoo.kwargs))
        unknown = [name for name in args.var_names if name not in sites]
        if unknown:
            raise validate.ArgumentValueError(
                f"--var-names {', '.join(unknown)}: not sites of the model ({', '.join(sites)})",
                "--var-names",
            )
    if args.command == "fit":
        if args.out is not None:
            args.out = Path(args.out)
            _writable(args.out.parent, "--out", "the fit")
        return args
    default_out = Path("vitools-report") / _folder_name(args.model)
    args.out = _writable(Path(args.out or default_out), "--out")
    return args


def _check_reference(args: argparse.Namespace) -> None:
    """``args.reference`` becomes "zoo", "nuts", "none" or "file" (``args.reference_path``); the
    zoo's draws are read now (``args.stored_reference``), so a missing one is reported first."""
    from vitools.usermodel import UserModel

    explicit = args.reference is not None
    default = "none" if isinstance(args.zoo, UserModel) else "zoo"
    value = args.reference or default
    args.stored_reference, args.reference_path = None, None
    if value not in ("zoo", "nuts", "none"):
        path = Path(value)
        if path.suffix not in (".nc", ".npz", ".json"):
            raise validate.ArgumentValueError(
                f"--reference {value!r}: expected zoo, nuts, none, or a .nc, .npz or .json file of draws",
                "--reference",
            )
        if not path.is_file():
            raise validate.ArgumentValueError(f"--reference: no such file {value!r}", "--reference")
        args.reference, args.reference_path = "file", path
        return
    args.reference = value
    if value != "zoo":
        return
    try:
        args.stored_reference = args.zoo.reference()
    except (FileNotFoundError, ValueError) as err:
        if explicit:
            raise validate.ArgumentValueError(f"--reference zoo: {err}", "--reference") from None
        print(
            f"vitools: no stored reference for {args.model} ({err}); comparing without one", file=sys.stderr
        )
        args.reference = "none"


def _folder_name(model: str) -> str:
    """A report folder name for a MODEL argument: ``path/to/my_model.py:model`` -> ``my_model-model``."""
    source, _, name = model.rpartition(":")
    return f"{Path(source).stem}-{name}" if source else model


def _writable(path: Path, option: str, what: str = "the report") -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vitools-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        message = f"cannot write {what} to {str(path)!r}: {err.strerror or err}"
        raise validate.ArgumentValueError(message, option) from None
    return path


def _enable_cache() -> None:
    """JAX's persistent compilation cache (:mod:`vitools.cache`); a cache that cannot be created
    costs time, not the run, so it is a warning."""
    from vitools.cache import enable_compilation_cache

    try:
        enable_compilation_cache()
    except OSError as err:
        print(f"vitools: warning: {err}; running without the compilation cache", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vitools`` command line; returns the exit status: 0 ok, 2 bad input (any
    :class:`validate.ArgumentError`, from the checks here or from the library during the run),
    130 Ctrl-C (a fit that came back interrupted, or a KeyboardInterrupt anywhere in the command).

    Examples:
        >>> main(["compare", "bimodal", "--num-steps", "500", "--out", "/tmp/report"])
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a parse error (already printed)
        return stop.code if isinstance(stop.code, int) else 0
    try:
        if args.command != "models":
            args = _checked(args)
            if not args.no_compilation_cache:
                _enable_cache()
        return args.run(args)
    except validate.ArgumentError as err:
        print("vitools: error:", " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitools: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
