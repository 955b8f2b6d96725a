"""Batch caption operations: plan -> dry-run diff -> apply (journalled for undo, atomic writes).

A caption is treated as comma-separated tags. Every op returns the original text untouched when its tags do not
change, so formatting is only normalised (", " joins) in files the op really edits; unchanged files are never
rewritten. A target is a folder (the `<stem>.txt` of each of its images) or a selection: image paths (their
`<stem>.txt`) and caption paths, mixed freely. A caption that is a symlink pointing outside its folder is never
edited (it is listed in `skipped`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.datasets.items import CAPTIONS_JSON, IMAGE_EXTENSIONS
from engine.datasets.names import escape, quote_name


class CaptionError(ValueError):
    """Bad op arguments (e.g. a regex that does not compile); the message says which."""


@dataclass(frozen=True)
class Change:
    path: Path
    old: str | None  # None: the caption file does not exist yet
    new: str
    warning: str | None = None
    # (inode, size, mtime_ns) of the file `old` was read from: apply checks it is unchanged with one stat instead
    # of reading and decoding it again. None: apply reads and compares the text.
    stamp: tuple[int, int, int] | None = None


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


def add_prefix(prefix: str) -> Callable[[str], str]:
    """Put a literal prefix before the caption (no separator added); skipped where the caption starts with it."""
    if not prefix.strip():
        raise CaptionError("prefix is empty")
    return lambda text: text if text.startswith(prefix) else prefix + text


def sort_tags(keep: int = 0) -> Callable[[str], str]:
    """Sort the tags, leaving the first `keep` in place (diffusion-pipe's keep-tags idea: e.g. a trigger first)."""
    if keep < 0:
        raise CaptionError(f"--keep: expected a number >= 0, found {keep}")
    return lambda text: _retag(text, lambda tags: tags[:keep] + sorted(tags[keep:]))


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


def _images(directory: Path) -> list[Path]:
    from engine.datasets.layout import list_dir

    return [directory / n for n in list_dir(directory).images]


def _caption_of(path: Path) -> Path:
    return path.with_suffix(".txt") if path.suffix.lower() in IMAGE_EXTENSIONS else path


def caption_files(target: Path | Iterable[Path], skipped: list[str] | None = None) -> list[Path]:
    """The existing `<stem>.txt` captions of a folder's images (non-recursive), or of a selection."""
    from engine.datasets.layout import is_outside

    if isinstance(target, Path) and target.is_dir():
        # One listing answers "exists" and "links outside" for every file (no stat per caption).
        from engine.datasets.layout import list_dir

        listing = list_dir(target)
        outside = set(listing.links_outside)
        names = []
        for image in listing.images:
            name = image[: image.rfind(".")] + ".txt"  # an image name always has its extension
            if name not in listing.captions:
                continue
            if name in outside:
                if skipped is not None:
                    skipped.append(
                        f"{target / name}: symlink pointing outside the dataset folder; not edited"
                    )
                continue
            names.append(name)
        # a.png and a.jpg share a.txt: keep its first appearance only
        return [target / name for name in dict.fromkeys(names)]
    else:
        candidates = [_caption_of(Path(p)) for p in ([target] if isinstance(target, Path) else target)]
    out = []
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        if is_outside(path.parent, path.name):
            if skipped is not None:
                skipped.append(f"{path}: symlink pointing outside the dataset folder; not edited")
            continue
        out.append(path)
    return out


def plan(
    target: Path | Iterable[Path], op: Callable[[str], str], skipped: list[str] | None = None
) -> list[Change]:
    """Changes `op` would make; files it leaves equal are not listed."""
    from engine.datasets.fastio import read_stamped

    changes = []
    for path in caption_files(target, skipped):
        data, stamp = read_stamped(path)
        text, warning = decode_caption(data)
        body, tail = _split_newline(text)
        new = op(body) + tail
        if new != text:
            changes.append(Change(path, text, new, warning, stamp))
    return changes


def plan_set(image: Path, text: str) -> list[Change]:
    """The change that makes the caption of `image` (or the caption file itself) hold `text`.

    Empty when it already does. The file is created when missing. When `text` has no trailing newline, the
    existing file's trailing newline is kept, so an editor that strips it does not create a spurious change.
    """
    from engine.datasets.layout import is_outside

    path = _caption_of(Path(image))
    if is_outside(path.parent, path.name):
        raise CaptionError(f"{path}: symlink pointing outside the dataset folder; not edited")
    if path.exists() and not path.is_file():
        raise CaptionError(f"{path}: not a regular file")
    if not path.exists():
        return [Change(path, None, text)]
    old, warning = decode_caption(path.read_bytes())
    new = text if text.endswith("\n") else text + _split_newline(old)[1]
    return [] if new == old else [Change(path, old, new, warning)]


def plan_create_missing(target: Path | Iterable[Path]) -> list[Change]:
    """Empty `<stem>.txt` for every image (of a folder or a selection) with neither a .txt nor a captions.json
    entry."""
    import json

    if isinstance(target, Path) and target.is_dir():
        images = _images(target)
    else:
        images = [
            Path(p)
            for p in ([target] if isinstance(target, Path) else target)
            if Path(p).suffix.lower() in IMAGE_EXTENSIONS
            and Path(p).is_file()  # no caption for a missing image
        ]
    listed: dict[Path, set[str]] = {}
    for folder in {p.parent for p in images}:
        listed[folder] = set()
        cj = folder / CAPTIONS_JSON
        if cj.is_file():
            try:
                raw = json.loads(cj.read_text(encoding="utf-8"))
                listed[folder] = set(raw) if isinstance(raw, dict) else set()
            except (OSError, ValueError):
                pass
    return [
        Change(p.with_suffix(".txt"), None, "")
        for p in images
        if not p.with_suffix(".txt").exists() and p.name not in listed[p.parent]
    ]


def _diff_lines(text: str) -> list[str]:
    """Lines for the diff, split at "\n" only (str.splitlines also splits at \x0b, \x1c, U+2028, ...), each with
    its control characters escaped so a caption cannot move the cursor or forge a line; a line end is kept."""
    out = []
    for line in text.split("\n"):
        end = "\r" if line.endswith("\r") else ""
        out.append(escape(line[: len(line) - len(end)], keep_tab=True) + end + "\n")
    if text.endswith("\n") or not text:
        out.pop()  # text.split gives an empty last part after a final newline
    else:
        out[-1] = out[-1][:-1]
    return out


def diff(changes: list[Change]) -> str:
    """Unified diff of the changes; file names are quoted and escaped when they hold control characters (a
    newline in a name forged diff lines), caption text has its control characters escaped."""
    out = []
    for c in changes:
        old = [] if c.old is None else _diff_lines(c.old)
        tofile = quote_name(str(c.path))
        fromfile = "/dev/null" if c.old is None else tofile
        lines = list(difflib.unified_diff(old, _diff_lines(c.new), fromfile, tofile))
        if not lines:  # a created empty file has no content lines; still show that it appears
            lines = [f"--- {fromfile}\n", f"+++ {tofile}\n", "(new empty file)\n"]
        out.extend(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
        )
    return "".join(out)


def _current(path: Path | str) -> bytes | None:
    from engine.datasets.fastio import read_bytes

    try:
        return read_bytes(path)
    except FileNotFoundError:
        return None


def apply(changes: list[Change], description: str) -> str | None:
    """Journal the old state, then replace each caption atomically; returns the undo op id (None if no-op).

    Refuses (changing nothing) when a folder is not writable or a file changed since it was planned (e.g. edited
    elsewhere between a dry run and its apply). The writes are engine.datasets.undo.replace_journalled: a crash
    leaves every caption old or new, the journal restores them all, and a failure before the first replacement
    (disk full) changes nothing and leaves no record.
    """
    from engine.datasets.fastio import stamp_of
    from engine.datasets.undo import SwapError, replace_journalled

    if not changes:
        return None
    # Check every folder first so a read-only one fails before any file is touched, not halfway through.
    paths = [os.fspath(c.path) for c in changes]  # strings: pathlib overhead is visible at 100k files
    for folder in sorted({os.path.dirname(p) for p in paths}):
        if not os.access(folder or ".", os.W_OK):
            raise CaptionError(f"{folder}: folder is not writable; nothing was changed")
    modes: list[int | None] = []
    for c, path in zip(changes, paths, strict=True):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if c.stamp is None or st is None or stamp_of(st) != c.stamp:  # no stamp, or it moved: compare the text
            data = _current(path)
            if (None if data is None else decode_caption(data)[0]) != c.old:
                raise CaptionError(f"{path}: changed on disk since the edit was planned; nothing was changed")
        modes.append(None if st is None else st.st_mode & 0o7777)
    items = [(path, c.new.encode("utf-8"), mode) for c, path, mode in zip(changes, paths, modes, strict=True)]
    try:
        return replace_journalled(description, items)
    except SwapError as exc:
        raise CaptionError(str(exc)) from exc
