"""The ``densitylearn`` command line.

Each subcommand lives in :mod:`densitylearn.commands` as a module with ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args)``; heavy imports happen inside ``run``.
User errors (:class:`densitylearn.errors.DensityLearnError`) print as one line and exit
with status 2; ``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand name -> module in densitylearn.commands.
COMMANDS = {
    "compute": "compute",
    "fit-basis": "fit_basis",
    "fit-grid": "fit_grid",
    "merge": "merge",
    "evaluate": "evaluate",
    "train": "train",
    "export": "export",
    "predict": "predict",
    "nscf": "nscf",
    "scf": "scf",
    "quickstart": "quickstart",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="densitylearn",
        description="Machine-learned electron densities with Delta-SAED difference densities.")
    parser.add_argument("--version", action="version", version=f"densitylearn {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show full tracebacks for errors instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(f"densitylearn.commands.{modname}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks for errors instead of one line")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    from .errors import DensityLearnError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        rc = args._run(args)
    except DensityLearnError as exc:
        if args.traceback:
            raise
        print(f"densitylearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"densitylearn {args.command}: interrupted; finished work is kept, rerun to resume",
              file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
