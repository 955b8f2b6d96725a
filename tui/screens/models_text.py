"""How the Models screens write a byte count, a download on one line, an entry's detail pane and the
question before a large pull (shared by `models` and `models_check`, so neither imports the other for it)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.models import downloads
from engine.models.registry import Component, Entry, component_status
from engine.models.settings import min_free_bytes, models_dir
from tui import units

# A pull of more than this asks first (the key scheme: `p` confirms when large); the registry's sizes are
# estimates, so the question says "about".
LARGE_PULL_BYTES = 1e9
GB = 1e9  # the registry's approx_gb is decimal gigabytes, as the Hub shows sizes


def size_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def download_line(dl: downloads.Download) -> str:
    what = f"{dl.entry}/{dl.key}" if dl.entry else dl.repo
    pct = f"{dl.progress * 100:5.1f}%" if dl.progress is not None else "  ?  "
    eta = f" eta {units.duration(dl.eta_s)}" if dl.eta_s is not None and dl.state == "running" else ""
    speed = f" {size_text(dl.speed)}/s" if dl.state == "running" and dl.speed else ""
    retry = f" retry {dl.retries}" if dl.retries else ""
    why = dl.error or (dl.wait_reason if dl.state == "queued" else None)
    return f"{dl.id[:8]} {what} {dl.state} {pct} {size_text(dl.bytes_done)}{speed}{eta}{retry}" + (f" {why}" if why else "")


@dataclass(frozen=True)
class PartInfo:
    """One component of an entry as the detail pane shows it."""

    key: str
    status: str  # present / partial / missing / manual
    source: str  # repo:file, or repo (patterns)
    target: Path  # where dpdeck puts it
    found_at: Path | None  # where it is (the target, or another scanned folder / the HF cache)
    on_disk: int | None  # bytes there now
    approx: float | None  # the registry's estimate of its size, in bytes


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # vanished mid-walk: the next poll counts again
    return total


def _source(comp: Component) -> str:
    if comp.repo is None:
        return "no Hub source (manual)"
    return f"{comp.repo}:{comp.file}" if comp.kind == "file" else f"{comp.repo} ({', '.join(comp.include)})"


def part_infos(entry: Entry) -> list[PartInfo]:
    """Each part's status, source, target and size: reads the disk (call it from a worker)."""
    out = []
    for comp in entry.components:
        status, where = component_status(comp)
        found = where if where is not None and where.exists() else None
        out.append(PartInfo(
            comp.key, status, _source(comp), comp.local_path(), found,
            _disk_bytes(found) if found is not None else None,
            comp.approx_gb * GB if comp.approx_gb else None,
        ))
    return out


def free_bytes(folder: Path | None = None) -> int:
    """Free space where pulls land (the nearest folder that exists: the models dir is made on first pull)."""
    probe = folder or models_dir()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def to_download(parts: list[PartInfo], key: str | None = None) -> list[PartInfo]:
    """The parts a pull fetches: every part not present (or the one named), as pull_entry chooses them."""
    return [p for p in parts if (p.key == key if key else p.status != "present") and p.status != "manual"]


def detail_text(entry: Entry, parts: list[PartInfo], free: int, width: int = 78) -> str:
    """The Models detail pane: what the entry is, and per part its status, source, target folder and size."""
    gated = {True: "gated (accept its licence on the Hub first)", False: "open", None: "access unknown"}[entry.gated]
    lines = [f"{entry.title}  ·  type {entry.model_type}  ·  licence {entry.licence}  ·  {gated}"]
    for p in parts:
        size = (f"{units.size(p.on_disk)} on disk" if p.on_disk is not None
                else f"~{units.size(p.approx)} to download" if p.approx else "size unknown")
        lines.append(f"  {p.key}: {p.status}, {size}  <- {p.source}")
        where = p.found_at or p.target
        lines.append(f"    {'at' if p.found_at else 'into'} {units.middle(where, max(20, width - 9))}")
    missing = to_download(parts)
    need = sum(p.approx or 0 for p in missing)
    lines.append(
        f"pull (p): ~{units.size(need)} into {units.middle(models_dir(), max(20, width - 45))}, "
        f"{units.size(free)} free" if missing else "every part is present"
    )
    if entry.notes:
        lines.append(entry.notes)
    return "\n".join(lines)


def pull_question(what: str, fetch: list[PartInfo], free: int) -> str | None:
    """The confirm text before a large pull ("Pull sd15: ~4.3 GB into /x/y? Free space there: 120.0 GB");
    None for a small one (it starts at once). Says plainly when it will not fit with the configured reserve."""
    need = sum(p.approx or 0 for p in fetch)
    if need < LARGE_PULL_BYTES:
        return None
    targets = sorted({str(p.target.parent if p.target.suffix else p.target) for p in fetch})
    text = (f"Pull {what}: ~{units.size(need)} into {', '.join(targets)}?\n"
            f"Free space there: {units.size(free)} (dpdeck keeps {units.size(min_free_bytes())} free).")
    if need + min_free_bytes() > free:
        text += "\nIt does not fit: the pull will be refused unless space is freed first."
    return text
