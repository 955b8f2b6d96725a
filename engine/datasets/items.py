"""Scan one dataset directory: image (and, for video models, video) files, their header sizes and their captions.

Sizes come from the file headers (engine.datasets.headers, engine.datasets.video_headers), so scanning a large
folder is cheap. Broken files are reported per file and counted, never raised: a bad file must not stop a scan
halfway.
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from engine.datasets.fastio import read_bytes
from engine.datasets.headers import read_image_size
from engine.datasets.video_headers import VideoHeaderError, read_video_info

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTIONS_JSON = "captions.json"


@dataclass(frozen=True)
class DatasetItem:
    """One training example: an image or a video and the caption it is trained with."""

    path: Path
    width: int
    height: int
    caption: str
    size_bytes: int
    mtime_ns: int
    # 1 for an image; for a video, its frames at the model's frame rate (what picks its frame bucket).
    frames: int = 1

    @property
    def key(self) -> str:
        """Stable identity of the file's content as far as a cheap stat can tell."""
        return f"{self.path}|{self.size_bytes}|{self.mtime_ns}"


@dataclass
class ScanResult:
    items: list[DatasetItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped_broken: int = 0
    skipped_no_caption: int = 0
    videos_ignored: int = 0  # videos seen while scanning for an image-only model (no frame rate)
    videos_unknown_frames: int = 0  # videos whose header gives no frame count (left out)


def entry_is_file(entry: os.DirEntry[str]) -> bool:
    """entry.is_file(), but False for a symlink that cannot be followed: for a loop is_file() raises ELOOP,
    which took the whole folder's listing down with it."""
    try:
        return entry.is_file()
    except OSError:
        return False


def entry_is_dir(entry: os.DirEntry[str]) -> bool:
    """entry.is_dir(), False for a symlink that cannot be followed (a loop raises ELOOP there too)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def symlink_problem(path: str) -> str | None:
    """Why the symlink `path` does not lead to a file or folder (loop, missing target), else None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT:
            return "dangling symlink (its target does not exist)"
        return f"symlink that cannot be followed ({exc.strerror})"
    if stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode):
        return None
    return "symlink to something that is not a regular file"


def shuffle_tags(caption: str, seed: int, delimiter: str = ",") -> str:
    """Shuffle comma-separated tags deterministically (same seed -> same order)."""
    tags = [t.strip() for t in caption.split(delimiter) if t.strip()]
    random.Random(seed).shuffle(tags)
    return f"{delimiter} ".join(tags)


def _load_captions_json(directory: Path, result: ScanResult) -> dict[str, list[str]]:
    path = directory / CAPTIONS_JSON
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        result.warnings.append(f"{path}: unreadable captions file ignored ({exc})")
        return {}
    if not isinstance(raw, dict):
        result.warnings.append(
            f"{path}: expected an object mapping file name -> caption, found {type(raw).__name__}"
        )
        return {}
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            out[name] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
        else:
            result.warnings.append(f"{path}: key {name!r}: expected a string or a list of strings")
    return out


def _read_caption_file(path: str, result: ScanResult) -> str | None:
    try:
        text = read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.warnings.append(f"{path}: unreadable caption ({exc.__class__.__name__}: {exc})")
        return None
    if "\r" in text:  # universal newlines, as text-mode reading gives
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def scan_directory(
    directory: Path,
    *,
    caption_prefix: str = "",
    skip_empty_caption: bool = True,
    framerate: float | None = None,
) -> ScanResult:
    """Non-recursive scan of one directory, as diffusion-pipe does.

    Caption source, in order: `<stem>.txt` beside the image, then captions.json in the folder (a string or a
    list of strings; each string becomes its own example). A missing or empty caption skips the image when
    skip_empty_caption, else it trains with the empty caption.

    Videos become items only with the model's `framerate` (engine.datasets.framerate): their `frames` are then
    counted at that rate. Without one (image-only model types) they are only counted, as diffusion-pipe skips them.
    """
    # Imported here: layout imports this module for the image extensions.
    from engine.datasets.layout import VIDEO_EXTENSIONS

    result = ScanResult()
    json_captions = _load_captions_json(directory, result)
    try:
        # One scandir instead of iterdir + is_file per entry: the listing alone is most of a 100k-file scan.
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as exc:
        result.warnings.append(f"{directory}: cannot list directory ({exc})")
        return result
    names = sorted(e.name for e in entries if entry_is_file(e))
    for entry in entries:
        if entry.is_symlink() and _is_media(entry.name) and not entry_is_file(entry):
            problem = symlink_problem(entry.path)
            if problem:
                result.warnings.append(f"{entry.path}: {problem}; skipped")
    present = set(names)
    videos: list[str] = []
    # Plain strings in this loop: pathlib joins cost more than the reads they would name (100k-image folders).
    prefix = os.path.join(os.fspath(directory), "")
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            if ext.lower() in VIDEO_EXTENSIONS:
                videos.append(name)
            continue
        fpath = prefix + name
        captions: list[str] | None = None
        txt = f"{stem}.txt"
        if txt in present:
            text = _read_caption_file(prefix + txt, result)
            if text is None:
                result.skipped_no_caption += 1
                continue
            captions = [text]
        elif name in json_captions:
            captions = json_captions[name]
        captions = [c.strip() for c in (captions or []) if c.strip()] or (
            [""] if not skip_empty_caption else []
        )
        if not captions:
            result.warnings.append(f"{fpath}: no caption ({txt} or {CAPTIONS_JSON}); skipped")
            result.skipped_no_caption += 1
            continue
        try:
            width, height = read_image_size(fpath)
            stat = os.stat(fpath)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            result.warnings.append(f"{fpath}: unreadable image skipped ({exc.__class__.__name__}: {exc})")
            result.skipped_broken += 1
            continue
        if width <= 0 or height <= 0:
            result.warnings.append(f"{fpath}: image has size {width}x{height}; skipped")
            result.skipped_broken += 1
            continue
        path = directory / name
        for caption in captions:
            full = f"{caption_prefix}{caption}" if caption_prefix else caption
            result.items.append(DatasetItem(path, width, height, full, stat.st_size, stat.st_mtime_ns))
    if framerate is None:
        result.videos_ignored = len(videos)
        return result
    for name in videos:
        captions = _captions_of(directory, name, present, json_captions, skip_empty_caption, result)
        video = _video_size_frames(prefix + name, framerate, result) if captions else None
        if video is None:
            continue
        try:
            stat = os.stat(prefix + name)
        except OSError as exc:
            result.warnings.append(f"{prefix + name}: unreadable video skipped ({exc.__class__.__name__}: {exc})")
            result.skipped_broken += 1
            continue
        width, height, frames = video
        for caption in captions or []:
            full = f"{caption_prefix}{caption}" if caption_prefix else caption
            item = DatasetItem(directory / name, width, height, full, stat.st_size, stat.st_mtime_ns, frames)
            result.items.append(item)
    return result


def _is_media(name: str) -> bool:
    from engine.datasets.layout import VIDEO_EXTENSIONS

    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS


def _captions_of(
    directory: Path,
    name: str,
    present: set[str],
    json_captions: dict[str, list[str]],
    skip_empty_caption: bool,
    result: ScanResult,
) -> list[str] | None:
    """A video's captions by the image loop's rules (which inlines this lookup for speed); None: skipped."""
    stem = os.path.splitext(name)[0]
    txt = f"{stem}.txt"
    captions: list[str] | None = None
    if txt in present:
        text = _read_caption_file(os.path.join(directory, txt), result)
        if text is None:
            result.skipped_no_caption += 1
            return None
        captions = [text]
    elif name in json_captions:
        captions = json_captions[name]
    captions = [c.strip() for c in (captions or []) if c.strip()] or ([""] if not skip_empty_caption else [])
    if not captions:
        result.warnings.append(f"{directory / name}: no caption ({txt} or {CAPTIONS_JSON}); skipped")
        result.skipped_no_caption += 1
        return None
    return captions


def _video_size_frames(fpath: str, framerate: float, result: ScanResult) -> tuple[int, int, int] | None:
    """(width, height, frames at `framerate`) from the video's header, or None with the reason recorded."""
    try:
        info = read_video_info(fpath)
    except VideoHeaderError as exc:
        result.warnings.append(f"{fpath}: unreadable video skipped ({exc.reason})")
        result.skipped_broken += 1
        return None
    except OSError as exc:
        result.warnings.append(f"{fpath}: unreadable video skipped ({exc.__class__.__name__}: {exc})")
        result.skipped_broken += 1
        return None
    frames = info.frames_at(framerate)
    if frames is None or info.width is None or info.height is None:
        why = info.note or "frame size unknown"
        result.warnings.append(f"{fpath}: {why}; left out of the buckets (diffusion-pipe decodes it to find out)")
        result.videos_unknown_frames += 1
        return None
    return info.width, info.height, frames
