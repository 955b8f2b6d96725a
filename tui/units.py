"""Values as a person reads them: local times with their age, durations, counts as sentences, booleans as
words, byte sizes, paths shortened in the middle. Every screen and CLI line that shows one of these uses this
module, so `2026-12-06 21:14 (3 min ago)` reads the same everywhere. Pure functions, no Textual."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping

ELLIPSIS = "…"

# (seconds per unit, unit label), largest first: a duration shows its two largest non-zero units.
_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))

# Byte sizes in decimal units, as disk tools and model hubs print them (a "23.8 GB" download is 23.8e9 bytes).
_BYTES = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 20 s`, `2 h 05 min`, `3 d 4 h`; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    left = max(0, round(seconds))
    if left < 60:
        return f"{left} s"
    parts: list[str] = []
    for size, label in _UNITS:
        n, left = divmod(left, size)
        if n or parts:
            parts.append(f"{n:02d} {label}" if parts else f"{n} {label}")
        if len(parts) == 2:
            break
    if parts[-1].startswith("00 "):  # "3 min 00 s" says no more than "3 min"
        parts.pop()
    return " ".join(parts)


def span(seconds: float | None) -> str:
    """`duration` in whole minutes once it is a minute or more (`45 s`, `4 min`, `1 h 05 min`): for text that
    is redrawn on a poll, which would otherwise change every second."""
    if seconds is None or not math.isfinite(seconds) or seconds < 60:
        return duration(seconds)
    return duration(seconds - seconds % 60)


def age(then: float, now: float | None = None) -> str:
    """How long ago `then` (epoch seconds) was: `just now`, `3 min ago`, `2 h 05 min ago`; `in 5 min` ahead."""
    delta = (time.time() if now is None else now) - then
    if abs(delta) < 5:
        return "just now"
    coarse = duration(abs(delta)).split(" ")
    text = " ".join(coarse[:2]) if abs(delta) >= 3600 * 24 else duration(abs(delta))
    return f"{text} ago" if delta > 0 else f"in {text}"


def when(then: float | None, now: float | None = None) -> str:
    """A moment as local date and time with its age: `2026-12-06 21:14 (3 min ago)`; `-` when unknown."""
    if then is None:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(then))} ({age(then, now)})"


def when_iso(stamp: str | None, now: float | None = None) -> str:
    """An ISO 8601 timestamp from a store (`2026-12-06T21:32:08+00:00`) as `when` shows a moment; a string
    that is not one comes back as it was (never an exception for a display)."""
    from datetime import datetime

    if not stamp:
        return "-"
    try:
        return when(datetime.fromisoformat(stamp).timestamp(), now)
    except ValueError:
        return stamp


def counts(by_name: Mapping[str, int], order: Iterable[str] = (), none: str = "none") -> str:
    """`{'cancelled': 2, 'completed': 1}` as `2 cancelled, 1 completed`: the names in `order` first, then the
    rest by name; zeros left out; `none` when nothing is left."""
    first = [k for k in order if by_name.get(k)]
    rest = sorted(k for k, n in by_name.items() if n and k not in first)
    return ", ".join(f"{by_name[k]} {k}" for k in first + rest) or none


def plural(n: int, noun: str, many: str | None = None) -> str:
    """`1 job`, `3 jobs`, `2 processes` (with `many`)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def yes_no(value: object) -> str:
    """A flag in words; `unknown` for None (a probe that could not tell)."""
    return "unknown" if value is None else "yes" if value else "no"


def size(n: float | None) -> str:
    """Bytes in decimal units: `23.8 GB`, `512 MB`, `900 B`; `-` when unknown."""
    if n is None:
        return "-"
    for unit, label in _BYTES:
        if abs(n) >= unit:
            return f"{n / unit:.1f} {label}"
    return f"{int(n)} B"


def middle(path: str | os.PathLike[str], width: int) -> str:
    """A path cut in the middle to fit `width`: its start (where it lives) and its end (the file) stay,
    `/home/…/loras/x.safetensors`. Whole components are dropped first; a file name longer than the space left
    is cut in its own middle."""
    text = os.fspath(path)
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    parts = text.split("/")
    # The first real component says where the path lives (/home, /mnt, ~); a tight width drops it too.
    # A relative path may drop its start altogether ("…/name"): the file name matters more than the root.
    heads = [parts[:2], parts[:1]] if parts[0] == "" and len(parts) > 2 else [parts[:1], []]
    for head in heads:
        kept: list[str] = []
        for part in reversed(parts[len(head) :]):
            if len("/".join([*head, ELLIPSIS, part, *kept])) > width:
                break
            kept.insert(0, part)
        if kept and len(kept) < len(parts) - len(head):
            return "/".join([*head, ELLIPSIS, *kept])
    keep = width - 1
    return text[: keep - keep // 2] + ELLIPSIS + text[len(text) - keep // 2 :]
