"""How the Models screens write a byte count and a download on one line (shared by `models` and
`models_check`, so neither imports the other for it)."""

from __future__ import annotations

from engine.models import downloads


def size_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def download_line(dl: downloads.Download) -> str:
    what = f"{dl.entry}/{dl.key}" if dl.entry else dl.repo
    pct = f"{dl.progress * 100:5.1f}%" if dl.progress is not None else "  ?  "
    eta = f" eta {dl.eta_s:.0f}s" if dl.eta_s is not None and dl.state == "running" else ""
    speed = f" {size_text(dl.speed)}/s" if dl.state == "running" and dl.speed else ""
    retry = f" retry {dl.retries}" if dl.retries else ""
    why = dl.error or (dl.wait_reason if dl.state == "queued" else None)
    return f"{dl.id[:8]} {what} {dl.state} {pct} {size_text(dl.bytes_done)}{speed}{eta}{retry}" + (f" {why}" if why else "")
