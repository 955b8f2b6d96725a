"""`dpdeck demo`: train a tiny LoRA end to end on this machine (no GPU, no internet needed).

Exit codes: 0 the run completed and saved its LoRA files; 1 it did not (the message says why).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from tui.cli.output import error, print_json

# engine.demo.FAMILIES, default first; named here so that `dpdeck demo --help` imports nothing heavy (a test
# holds the two equal).
DEMO_FAMILIES = ("sd15", "chroma", "flux")


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    if args.json:
        # Libraries print to stdout on import (DeepSpeed's accelerator notice); keep stdout pure JSON.
        with _stdout_to_stderr():
            result = run_demo(timeout=args.timeout, direct=args.direct, log=log, family=args.family)
    else:
        result = run_demo(timeout=args.timeout, direct=args.direct, log=log, family=args.family)
    if args.json:
        print_json(result.as_dict())
        return 0 if result.ok else 1
    if not result.ok:
        error(f"demo run {result.state}" + (f" (job {result.job_id})" if result.job_id is not None else ""))
        if result.message:
            print(result.message, file=sys.stderr)
        return 1
    print(f"run folder: {result.run_dir}")
    for path in result.lora_files:
        print(f"  LoRA: {path}")
    if result.first_loss is not None and result.last_loss is not None:
        print(f"loss: {result.first_loss:.4f} -> {result.last_loss:.4f} over {result.steps} steps")
    print(
        f"done in {result.wall_s:.1f} s ({'queued job ' + str(result.job_id) if result.job_id is not None else 'direct launch'})"
    )
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a tiny LoRA end to end (no GPU or internet needed)",
        description="Build a tiny random model of one family and a small captioned dataset in the state dir, queue "
        "a profile of that family's template shape on the built-in trainer, wait, and print where the LoRA files "
        "are and how the loss moved.",
    )
    p.add_argument(
        "--family",
        choices=DEMO_FAMILIES,
        default=DEMO_FAMILIES[0],
        help="the model family to train: sd15 (the demo-tiny template, ~40 s on CPU), chroma (the "
        "chroma-e6ai-512 template's shape) or flux (flux-dev's); default sd15",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run (default 600)")
    p.add_argument(
        "--direct", action="store_true", help="launch the trainer directly instead of through the queue"
    )
    p.set_defaults(func=_cmd_demo)
