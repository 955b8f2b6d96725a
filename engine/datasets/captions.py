"""Batch caption operations: plan -> dry-run diff -> apply (journalled for undo, atomic writes).

A caption is treated as comma-separated tags. Every op returns the original text untouched when its tags do not
change, so formatting is only normalised (", " joins) in files the op really edits; unchanged files are never
rewritten.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.datasets.items import CAPTIONS_JSON, IMAGE_EXTENSIONS
from profiles.atomic import atomic_write_text


class CaptionError(ValueError):
    """Bad op arguments (e.g. a regex that does not compile); the message says which."""


@dataclass(frozen=True)
class Change:
    path: Path
    old: str | None  # None: the caption file does not exist yet
    new: str
    warning: str | None = None


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """Decode caption bytes: UTF-8, else BOM-marked UTF-8/UTF-16, else cp1252; the second value warns why."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode(
            "utf-8", errors="replace"
        ), "UTF-8 with BOM (written back without it if edited)"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace"), "UTF-16 caption (written back as UTF-8 if edited)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        # cp1252 leaves 5 bytes undefined; latin-1 covers those so decoding never fails.
        try:
            return data.decode("cp1252"), "not UTF-8, decoded as cp1252 (written back as UTF-8 if edited)"
        except UnicodeDecodeError:
            return data.decode("latin-1"), "not UTF-8, decoded as latin-1 (written back as UTF-8 if edited)"


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _retag(text: str, func: Callable[[list[str]], list[str]]) -> str:
    tags = split_tags(text)
    new = func(tags)
    return text if new == tags else ", ".join(new)


def add_trigger(trigger: str) -> Callable[[str], str]:
    trigger = trigger.strip()
    if not trigger:
        raise CaptionError("trigger word is empty")

    def op(text: str) -> str:
        # "Not twice": a caption already starting with the trigger, or holding it as a tag, is left alone.
        if text.strip().startswith(trigger) or trigger in split_tags(text):
            return text
        return f"{trigger}, {text.strip()}" if text.strip() else trigger

    return op


def remove_tag(pattern: str, regex: bool = False) -> Callable[[str], str]:
    if regex:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise CaptionError(f"bad regex {pattern!r}: {exc}") from exc
        match: Callable[[str], bool] = lambda t: rx.fullmatch(t) is not None  # noqa: E731
    else:
        match = lambda t: t == pattern.strip()  # noqa: E731
    return lambda text: _retag(text, lambda tags: [t for t in tags if not match(t)])


def replace_tag(old: str, new: str) -> Callable[[str], str]:
    old, new = old.strip(), new.strip()
    return lambda text: _retag(text, lambda tags: [new if t == old else t for t in tags])


def _dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def dedupe() -> Callable[[str], str]:
    return lambda text: _retag(text, _dedupe)


def sort_tags() -> Callable[[str], str]:
    return lambda text: _retag(text, sorted)


def strip() -> Callable[[str], str]:
    def op(text: str) -> str:
        tags = split_tags(text)
        joined = ", ".join(tags) if "," in text else text.strip()
        return joined if joined != text else text

    return op


def lowercase() -> Callable[[str], str]:
    return str.lower


def _split_newline(text: str) -> tuple[str, str]:
    body = text.rstrip("\r\n")
    return body, text[len(body) :]


def caption_files(target: Path | Iterable[Path]) -> list[Path]:
    """The `<stem>.txt` captions of the images in a folder (non-recursive), or the given files."""
    if isinstance(target, Path) and target.is_dir():
        return [p.with_suffix(".txt") for p in _images(target) if p.with_suffix(".txt").is_file()]
    return [Path(p) for p in ([target] if isinstance(target, Path) else target)]


def _images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def plan(target: Path | Iterable[Path], op: Callable[[str], str]) -> list[Change]:
    """Changes `op` would make; files it leaves equal are not listed."""
    changes = []
    for path in caption_files(target):
        text, warning = decode_caption(path.read_bytes())
        body, tail = _split_newline(text)
        new = op(body) + tail
        if new != text:
            changes.append(Change(path, text, new, warning))
    return changes


def plan_create_missing(directory: Path) -> list[Change]:
    """Empty `<stem>.txt` for every image with neither a .txt nor a captions.json entry."""
    import json

    listed: set[str] = set()
    cj = directory / CAPTIONS_JSON
    if cj.is_file():
        try:
            raw = json.loads(cj.read_text(encoding="utf-8"))
            listed = set(raw) if isinstance(raw, dict) else set()
        except (OSError, ValueError):
            listed = set()
    return [
        Change(p.with_suffix(".txt"), None, "")
        for p in _images(directory)
        if not p.with_suffix(".txt").exists() and p.name not in listed
    ]


def diff(changes: list[Change]) -> str:
    out = []
    for c in changes:
        old = [] if c.old is None else c.old.splitlines(keepends=True)
        fromfile = "/dev/null" if c.old is None else str(c.path)
        lines = list(difflib.unified_diff(old, c.new.splitlines(keepends=True), fromfile, str(c.path)))
        if not lines:  # a created empty file has no content lines; still show that it appears
            lines = [f"--- {fromfile}\n", f"+++ {c.path}\n", "(new empty file)\n"]
        out.extend(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
        )
    return "".join(out)


def apply(changes: list[Change], description: str) -> str | None:
    """Journal the old bytes, then write each new caption atomically; returns the undo op id (None if no-op)."""
    if not changes:
        return None
    # Check every folder first so a read-only one fails before any file is touched, not halfway through.
    for folder in sorted({c.path.parent for c in changes}):
        if not os.access(folder, os.W_OK):
            raise CaptionError(f"{folder}: folder is not writable; nothing was changed")
    from engine.datasets.undo import record

    op_id = record(description, [c.path for c in changes])
    for c in changes:
        atomic_write_text(c.path, c.new)
    return op_id
