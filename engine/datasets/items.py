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
# diffusion-pipe takes its video extensions from imageio's list (dozens, most of them exotic); these are the ones a
# training set realistically holds. Matching is case-insensitive.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".ogv", ".3gp"}
)
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
    # The member's name when the image lies inside the .tar archive `path`.
    member: str | None = None

    @property
    def key(self) -> str:
        """Stable identity of the file's content as far as a cheap stat can tell."""
        if self.member is not None:
            return f"{self.path}|{self.member}|{self.size_bytes}|{self.mtime_ns}"
        return f"{self.path}|{self.size_bytes}|{self.mtime_ns}"


@dataclass
class ScanResult:
    items: list[DatasetItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped_broken: int = 0
    skipped_no_caption: int = 0
    videos_ignored: int = 0  # videos seen while scanning for an image-only model (no frame rate)
    videos_unknown_frames: int = 0  # videos whose header gives no frame count (left out)
    # The folder's .tar files (not read here: engine.datasets.archives.add_archives reads them, for the trainers
    # that do) and its parsed captions.json, which also captions archive members.
    archives: list[Path] = field(default_factory=list)
    captions_json: dict[str, list[str]] | None = None


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


def load_captions_json(directory: Path, warnings: list[str]) -> dict[str, list[str]] | None:
    """captions.json of the folder (file name, or archive member name, -> list of captions); None when absent.

    diffusion-pipe (8f83dbf) asserts that every value is a list; a plain string is taken as one caption here,
    with a warning that diffusion-pipe stops on it."""
    path = directory / CAPTIONS_JSON
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable captions file ({exc}); diffusion-pipe stops on it")
        return {}
    if not isinstance(raw, dict):
        warnings.append(
            f"{path}: expected an object mapping file name -> caption, found {type(raw).__name__}"
        )
        return {}
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            warnings.append(
                f"{path}: key {name!r}: a string; diffusion-pipe stops on it ('captions.json must contain lists "
                "of captions'): write [\"...\"]"
            )
            out[name] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
        else:
            warnings.append(f"{path}: key {name!r}: expected a list of strings")
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


def _captions(
    fpath: str,
    name: str,
    txt_path: str | None,
    json_captions: dict[str, list[str]] | None,
    skip_empty_caption: bool,
    result: ScanResult,
) -> list[str] | None:
    """The captions one image or video trains with, by diffusion-pipe's rules (utils/dataset.py, 8f83dbf); None:
    skipped (recorded in result).

    A folder with captions.json takes every caption from it, by file name (archive members by member name):
    .txt files are then not read. Otherwise `<stem>.txt` beside the file, stripped; an empty one trains with the
    empty caption. No caption at all skips the file when skip_empty_caption (the default), else trains it with ""."""
    captions: list[str] | None = None
    why = ""
    if json_captions is not None:
        captions = json_captions.get(name)
        why = f"no entry in {CAPTIONS_JSON} (its folder's .txt captions are not read while it exists)"
    elif txt_path is not None:
        text = _read_caption_file(txt_path, result)
        if text is None:
            result.skipped_no_caption += 1
            return None
        captions = [text]
    else:
        why = f"no caption ({os.path.splitext(os.path.basename(name))[0]}.txt or {CAPTIONS_JSON})"
    if captions is None:
        if skip_empty_caption:
            result.warnings.append(f"{fpath}: {why}; skipped")
            result.skipped_no_caption += 1
            return None
        captions = [""]
    return captions


def scan_directory(
    directory: Path,
    *,
    caption_prefix: str = "",
    skip_empty_caption: bool = True,
    framerate: float | None = None,
) -> ScanResult:
    """Non-recursive scan of one directory, as diffusion-pipe does; captions by its rules (_captions).

    Each caption is its own example. Videos become items only with the model's `framerate`
    (engine.datasets.framerate): their `frames` are then counted at that rate. Without one (image-only model
    types) they are only counted, as diffusion-pipe skips them. `.tar` files are listed in `archives`, unread.
    """
    result = ScanResult()
    json_captions = result.captions_json = load_captions_json(directory, result.warnings)
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
    tars: list[str] = []
    # Plain strings in this loop: pathlib joins cost more than the reads they would name (100k-image folders).
    prefix = os.path.join(os.fspath(directory), "")
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            if ext.lower() in VIDEO_EXTENSIONS:
                videos.append(name)
            elif ext == ".tar":  # diffusion-pipe compares the suffix as written
                tars.append(name)
            continue
        fpath = prefix + name
        txt = f"{stem}.txt"
        captions = _captions(
            fpath, name, prefix + txt if txt in present else None, json_captions, skip_empty_caption, result
        )
        if captions is None:
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
    result.archives = [directory / name for name in tars]
    if framerate is None:
        result.videos_ignored = len(videos)
        return result
    for name in videos:
        stem = os.path.splitext(name)[0]
        txt = f"{stem}.txt"
        fpath = prefix + name
        captions = _captions(
            fpath, name, prefix + txt if txt in present else None, json_captions, skip_empty_caption, result
        )
        video = _video_size_frames(fpath, framerate, result) if captions else None
        if video is None:
            continue
        try:
            stat = os.stat(fpath)
        except OSError as exc:
            result.warnings.append(f"{fpath}: unreadable video skipped ({exc.__class__.__name__}: {exc})")
            result.skipped_broken += 1
            continue
        width, height, frames = video
        for caption in captions or []:
            full = f"{caption_prefix}{caption}" if caption_prefix else caption
            item = DatasetItem(directory / name, width, height, full, stat.st_size, stat.st_mtime_ns, frames)
            result.items.append(item)
    return result


def _is_media(name: str) -> bool:
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS


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
