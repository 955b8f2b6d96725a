"""The right pane of Profiles for a stored profile: its key settings, the verdict `dpdeck profile validate`
gives (with the backend it names) and its last runs from the job store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.jobs.job import Job
from tui.theme import state_badge

# (label, file, key paths): the settings a person checks before enqueueing. A path ending in `*` takes every
# key of that table whose name says it is a path; `directory[*]` every dataset directory.
SUMMARY_FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("type", "main.toml", ("model.type",)),
    ("model", "main.toml", ("model.*",)),
    ("dataset", "dataset.toml", ("directory[*].path",)),
    ("resolution", "dataset.toml", ("resolutions",)),
    ("lr", "main.toml", ("optimizer.lr",)),
    ("epochs", "main.toml", ("epochs",)),
    ("rank", "main.toml", ("adapter.rank",)),
    ("output", "main.toml", ("output_dir",)),
)
PATH_SUFFIXES = ("path", "_dir", "_file")
LAST_RUNS = 3


@dataclass
class Summary:
    name: str
    settings: list[tuple[str, str]] = field(default_factory=list)
    verdict: str = ""  # "INVALID (3 error(s), 0 warning(s))"
    runs_on: str = ""  # "runs on: built-in trainer (...)"
    first_problems: list[str] = field(default_factory=list)
    runs: list[Job] = field(default_factory=list)


def _values(data: dict[str, Any], keypath: str) -> list[str]:
    if keypath.endswith(".*"):
        table = data.get(keypath[:-2])
        if not isinstance(table, dict):
            return []
        return [f"{k} {v}" for k, v in table.items() if isinstance(v, str) and k.endswith(PATH_SUFFIXES)]
    if keypath.startswith("directory[*]."):
        leaf = keypath.split(".", 1)[1]
        dirs = data.get("directory")
        return (
            [str(d[leaf]) for d in dirs if isinstance(d, dict) and leaf in d]
            if isinstance(dirs, list)
            else []
        )
    node: Any = data
    for part in keypath.split("."):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    return [str(node)]


def key_settings(docs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, value) for each SUMMARY_FIELDS entry the profile sets; `-` for one it leaves out."""
    out = []
    for label, fname, keys in SUMMARY_FIELDS:
        found = [v for key in keys for v in _values(docs.get(fname, {}), key)]
        out.append((label, "; ".join(found) if found else "-"))
    return out


def last_runs(name: str, jobs: list[Job]) -> list[Job]:
    """The newest LAST_RUNS jobs enqueued from stored profile `name`."""
    mine = [job for job in jobs if job.profile == name]
    return sorted(mine, key=lambda job: job.id, reverse=True)[:LAST_RUNS]


def run_line(job: Job, now: float | None = None) -> str:
    now = time.time() if now is None else now
    when = job.ended_at or job.started_at or job.created_at
    age = _age(now - when) if when else ""
    reason = f" · {job.exit_reason}" if job.exit_reason and job.exit_reason != str(job.state) else ""
    return f"job {job.id} {state_badge(job.state).plain}{reason}" + (f" · {age} ago" if age else "")


def _age(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(0, int(seconds))} s"


def summary_text(summary: Summary) -> str:
    """Plain text for the pane (no markup: paths and messages may hold brackets)."""
    width = max(len(label) for label, _ in summary.settings) if summary.settings else 0
    lines = [f"{label:>{width}}  {value}" for label, value in summary.settings]
    lines += ["", f"validate: {summary.verdict or 'validating…'}"]
    if summary.runs_on:
        lines.append(summary.runs_on)
    # Runs before the problems: a short pane shows the verdict and the runs, the problems scroll.
    lines += ["", "last runs:" if summary.runs else "last runs: none yet"]
    lines += [f"  {run_line(job)}" for job in summary.runs]
    if summary.first_problems:
        lines += ["", "first problems (Enter opens the editor, ctrl+n steps through them):"]
        lines += [f"  {p}" for p in summary.first_problems]
    return "\n".join(lines)
