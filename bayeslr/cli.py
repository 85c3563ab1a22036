"""The `bayeslr` command line: a thin layer over the Python API.

Each subcommand lives in `bayeslr/commands/<name>.py` and defines `HELP`,
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`, so
`bayeslr --help` stays fast and never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bayeslr import __version__
from bayeslr.errors import BayesLRError

COMMANDS = {
    "demo": "demo",
    "import": "import_csv",
    "collect": "collect",
    "fit": "fit",
    "predict": "predict",
    "compare": "compare",
    "report": "report",
    "sharpness": "sharpness",
}
"""Subcommand name -> module in bayeslr.commands; modules not present are not offered."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayeslr",
        description="Which learning rate should a model you have not trained yet use? "
        "Collect LR sweeps, fit a Bayesian scaling law, ask it.",
    )
    parser.add_argument("--version", action="version", version=f"bayeslr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"bayeslr.commands.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"bayeslr.commands.{module_name}":
                continue
            raise
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except BayesLRError as err:
        print(f"bayeslr {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bayeslr {args.command}: interrupted; completed work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
