"""The ``vitools`` command: fit zoo models in both KL directions, compare them, write a report.

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
from vitools.convert import DIAGNOSTIC_DRAWS

__all__ = ["main"]

DEFAULT_MODEL = "bimodal"
DEFAULT_OBJECTIVES = "reverse_kl,forward_kl"
MIN_DRAWS = 25  # PSIS needs at least this many draws (vitools.importance.MIN_PSIS_DRAWS)

DESCRIPTION = """\
Variational inference in both KL directions on NumPyro models, compared with ArviZ diagnostics.

Each objective is fitted to a built-in model; the fits are compared side by side (PSIS k-hat and
verdict, importance ESS, log-evidence bounds, and distances to a reference posterior), and a
report (markdown + HTML with plots) is written."""

EPILOG = """\
examples:
  vitools models                                   list the built-in models
  vitools demo                                     compare both KL directions on 'bimodal'
  vitools compare eight_schools_noncentered --reference nuts --out report-8s
  vitools compare funnel --objectives reverse_kl,forward_kl,renyi --family meanfield
  vitools fit banana --objective forward_kl --num-steps 3000

Run 'vitools COMMAND --help' for the options of a command."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``vitools: error: ...``) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"vitools: error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The ``vitools`` argument parser (subcommands ``compare``, ``fit``, ``models``, ``demo``)."""
    parser = _Parser(prog="vitools", description=DESCRIPTION, epilog=EPILOG, formatter_class=_formatter)
    from vitools import __version__

    parser.add_argument("--version", action="version", version=f"vitools {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compare = sub.add_parser(
        "compare",
        help="fit several objectives to a model, compare them, write a report",
        description="Fit each objective to a built-in model, compare the fits against a reference\n"
        "posterior, print the table and write DIR/report.md and DIR/report.html (with plots).",
        formatter_class=_formatter,
    )
    compare.add_argument("model", metavar="MODEL", help="a built-in model (see 'vitools models')")
    _add_compare_options(compare)
    compare.set_defaults(run=commands.run_compare)

    fit = sub.add_parser(
        "fit",
        help="fit one objective to a model and print its diagnostics",
        description="Fit one objective to a built-in model; print the fit, its PSIS diagnostics\n"
        "and its distance to the model's stored reference.",
        formatter_class=_formatter,
    )
    fit.add_argument("model", metavar="MODEL", help="a built-in model (see 'vitools models')")
    fit.add_argument(
        "--objective", default="reverse_kl", help="reverse_kl, forward_kl or renyi (default: %(default)s)"
    )
    _add_fit_options(fit)
    fit.set_defaults(run=commands.run_fit)

    models = sub.add_parser("models", help="list the built-in models", formatter_class=_formatter)
    models.set_defaults(run=commands.run_models)

    demo = sub.add_parser(
        "demo",
        help=f"'compare {DEFAULT_MODEL}' with its exact reference",
        description=f"Compare reverse and forward KL on the '{DEFAULT_MODEL}' model (two separated modes:\n"
        "reverse KL locks onto one, forward KL covers both) against its exact reference,\n"
        f"and write the report to vitools-report/{DEFAULT_MODEL} unless --out says otherwise.",
        formatter_class=_formatter,
    )
    _add_compare_options(demo)
    demo.set_defaults(run=commands.run_compare, model=DEFAULT_MODEL)
    return parser


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    from vitools.families import FAMILIES

    parser.add_argument("--family", default="fullrank", help=f"{', '.join(FAMILIES)} (default: %(default)s)")
    parser.add_argument(
        "--num-steps", type=int, default=2000, metavar="N", help="optimisation steps (default: %(default)s)"
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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not keep compiled programs on disk (default: keep them in $VITOOLS_CACHE_DIR or "
        "~/.cache/vitools/jax, so a second run skips compiling)",
    )


def _add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--objectives",
        default=DEFAULT_OBJECTIVES,
        metavar="LIST",
        help="comma-separated objectives (default: %(default)s)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="{zoo,nuts,none}",
        help="zoo: the model's stored reference (default); nuts: run NUTS now (2 chains); none",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="report folder (default: vitools-report/MODEL)"
    )
    _add_fit_options(parser)


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    """Validate every option before fitting anything; raises :class:`validate.ArgumentError`
    naming the option.

    Adds ``args.zoo`` (the model) and, for ``compare``/``demo``, ``args.stored_reference`` (the zoo's
    reference, or None); the output folder is created last, once the rest is known to be valid.
    """
    from vitools.families import FAMILIES
    from vitools.models import get_model
    from vitools.objectives import OBJECTIVES

    args.zoo = validate.option(get_model, args.model, "MODEL")
    validate.choice(args.family, "--family", list(FAMILIES))
    validate.count(args.num_steps, "--num-steps")
    validate.count(args.num_draws, "--num-draws", minimum=MIN_DRAWS)
    validate.seed(args.seed, "--seed")
    if args.command == "fit":
        validate.choice(args.objective, "--objective", list(OBJECTIVES))
        return args
    names = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if not names:
        raise validate.ArgumentValueError(
            "--objectives is empty; give a comma-separated list, e.g. reverse_kl,forward_kl", "--objectives"
        )
    args.objectives = [validate.choice(o, "--objectives", list(OBJECTIVES)) for o in dict.fromkeys(names)]
    explicit = args.reference is not None
    args.reference = validate.choice(args.reference or "zoo", "--reference", ["zoo", "nuts", "none"])
    args.stored_reference = None
    if args.reference == "zoo":
        try:
            args.stored_reference = args.zoo.reference()
        except (FileNotFoundError, ValueError) as err:
            if explicit:
                raise validate.ArgumentValueError(f"--reference zoo: {err}", "--reference") from None
            print(
                f"vitools: no stored reference for {args.model} ({err}); comparing without one",
                file=sys.stderr,
            )
            args.reference = "none"
    args.out = _writable(Path(args.out or Path("vitools-report") / args.model))
    return args


def _writable(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vitools-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        message = f"cannot write the report to {str(path)!r}: {err.strerror or err}"
        raise validate.ArgumentValueError(message, "--out") from None
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

    Example:
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
