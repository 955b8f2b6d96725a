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
    "tui.cli.cmd_backend",
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


def _store_errors() -> tuple[type[BaseException], ...]:
    # Evaluated only when a command raised: sqlite3 is loaded by then if the store was touched at all.
    sqlite3 = sys.modules.get("sqlite3")
    return (sqlite3.DatabaseError,) if sqlite3 is not None else ()


def _store_message(exc: BaseException) -> str | None:
    """One line for a damaged job store (file + repair command); None for other database errors."""
    from engine.jobs import store
    from statefiles import paths

    if isinstance(exc, store.StoreCorrupt):
        return str(exc)
    return store.corrupt_message(paths.store_path(), exc) if store.is_corruption(exc) else None


def _state_write_errors() -> tuple[type[BaseException], ...]:
    # sqlite3.OperationalError too ("unable to open database file" for a read-only state dir), when loaded.
    sqlite3 = sys.modules.get("sqlite3")
    return (OSError, sqlite3.OperationalError) if sqlite3 is not None else (OSError,)


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
        status = int(func(args) or 0)
        # Flushed here, not at exit: a reader that left (`| head`) must end quietly below, and a flush at
        # interpreter exit would print "Exception ignored ... BrokenPipeError" instead.
        sys.stdout.flush()
        return status
    except UsageError as exc:
        print(f"dpdeck: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `dpdeck ls | head`: the reader left. Quietly, as git does; stdout goes to /dev/null so the flush
        # at exit does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except _state_write_errors() as exc:  # a read-only or foreign state dir: one line, not a traceback
        from tui.cli.output import state_write_error

        message = state_write_error(exc)
        if message is None:
            raise
        print(f"dpdeck: error: {message}", file=sys.stderr)
        return 2
    except _store_errors() as exc:
        message = _store_message(exc)
        if message is None:
            raise
        print(f"dpdeck: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
