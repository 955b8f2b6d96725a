"""Shared output helpers for CLI commands: JSON for scripts, tables for people, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    """Stable, machine-readable output (sorted keys, ISO strings for anything non-JSON)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def error(message: str) -> None:
    print(f"dpdeck: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"dpdeck: warning: {message}", file=sys.stderr)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table (no colour) that survives pipes and narrow terminals."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)
