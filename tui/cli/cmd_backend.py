"""`dpdeck backend install|status|update diffusion-pipe`: a managed diffusion-pipe checkout (docs/backend.md).

Exit codes: 0 done; 1 a step failed (the message names the step, its command, output tail and fix; the
checkout that was in use stays configured); 2 bad usage or another install running.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tui.cli.output import error, print_json

BACKENDS = ("diffusion-pipe",)
_MARK = {"running": "…", "done": "✓", "skipped": "–", "failed": "✗"}


def _print_step(n: int, name: str, state: str, detail: str) -> None:
    if state == "running":
        return  # one line per step: its outcome
    print(f"[{n}/6] {name:<12} {_MARK.get(state, state)} {detail}".rstrip(), flush=True)


def _run(action: str, args: argparse.Namespace) -> int:
    from engine.jobs.checkout import pipeline
    from engine.jobs.checkout.steps import StepError

    try:
        if action == "install":
            outcome = pipeline.install(url=args.url, ref=args.ref, home=args.path, base_python=args.python,
                                       on_step=_print_step)
        else:
            outcome = pipeline.update(ref=args.ref, on_step=_print_step)
    except StepError as exc:
        print(str(exc), file=sys.stderr)
        error(f"backend {action} stopped at step {exc.step} ({exc.name}); the checkout that was in use stays "
              "configured; run the command again after the fix (done steps are skipped)")
        return 1
    except pipeline.BackendError as exc:
        error(str(exc))
        return 2
    print(outcome.summary)
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    return _run("install", args)


def _cmd_update(args: argparse.Namespace) -> int:
    return _run("update", args)


def _cmd_status(args: argparse.Namespace) -> int:
    from engine.jobs.checkout import status

    rep = status.report(fetch=args.fetch)
    if args.json:
        print_json(rep)
    else:
        print("\n".join(status.lines(rep)))
    return 0 if rep["configured"] and not rep["problems"] else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backend", help="install, inspect and update a managed diffusion-pipe checkout",
        description="A diffusion-pipe checkout that dpdeck clones (with submodules), gives a venv over the "
        "system torch, verifies and configures. See docs/backend.md.",
    )
    sub = p.add_subparsers(dest="backend_command", metavar="ACTION", required=True)

    i = sub.add_parser("install", help="clone, make a venv, install requirements, verify, configure")
    i.add_argument("backend", choices=BACKENDS)
    i.add_argument("--ref", help="a tag or commit to pin (kept by update), or a branch to track")
    i.add_argument("--url", help="the repository (default https://github.com/tdrussell/diffusion-pipe; "
                   "a local path or a carried copy works too)")
    i.add_argument("--path", help="folder for its checkouts and venvs (default $DPDECK_HOME/backend/diffusion-pipe)")
    i.add_argument("--python", help="interpreter whose packages (its torch) the venv reuses (default: dpdeck's)")
    i.set_defaults(func=_cmd_install)

    s = sub.add_parser("status", help="commit, dirty, how far behind its remote, venv, verified")
    s.add_argument("backend", choices=BACKENDS, nargs="?", default="diffusion-pipe")
    s.add_argument("--fetch", action="store_true", help="git fetch first (needs the network)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_cmd_status)

    u = sub.add_parser("update", help="fetch; fast-forward the tracked branch (a pinned ref stays put)")
    u.add_argument("backend", choices=BACKENDS)
    u.add_argument("--ref", help="move to this tag, commit (pinned) or branch (tracked)")
    u.set_defaults(func=_cmd_update)
