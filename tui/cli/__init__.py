"""The `dpdeck` command: with no arguments it opens the deck; subcommands are scriptable.

Each command group lives in its own module with a `register(subparsers)` function. Modules import the
engine lazily inside their handlers so `dpdeck --version` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tui import __version__

# Order is the order shown in --help.
COMMAND_MODULES = (
    "tui.cli.cmd_profile",
    "tui.cli.cmd_queue",
    "tui.cli.cmd_daemon",
    "tui.cli.cmd_demo",
    "tui.cli.cmd_dataset",
    "tui.cli.cmd_models",
)


class UsageError(Exception):
    """Bad command-line usage detected after parsing (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpdeck",
        description="Train diffusion LoRAs on headless GPU boxes. Run with no command to open the deck.",
    )
    parser.add_argument("--version", action="version", version=f"dpdeck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tui_parser = sub.add_parser("tui", help="open the full-screen deck (the default)")
    tui_parser.set_defaults(func=_run_tui)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not built yet
                continue
            raise
        module.register(sub)
    return parser


def _run_tui(args: argparse.Namespace) -> int:
    from tui.app import run_app

    return run_app()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        if args.command is None:
            return _run_tui(args)
        parser.parse_args([args.command, "--help"])
        return 2
    try:
        return int(func(args) or 0)
    except UsageError as exc:
        print(f"dpdeck: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
