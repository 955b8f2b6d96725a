"""The images inside a dataset folder's `.tar` files, read in place as diffusion-pipe reads them.

diffusion-pipe (utils/dataset.py, 8f83dbf) opens every `*.tar` of a dataset folder with tarfile.TarFile (plain,
uncompressed tar: a compressed one stops it) and trains each member it can open as an image. A member's caption
comes only from the folder's captions.json, keyed by the member's name inside the archive: the `.txt` it looks
for is a path relative to the training process's working folder, never the archive's own `.txt` members. So
without captions.json every member is skipped (skip_empty_caption, the default) or trained uncaptioned.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from PIL import Image

from engine.datasets.items import CAPTIONS_JSON, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DatasetItem, ScanResult


def add_archives(result: ScanResult, caption_prefix: str = "", skip_empty_caption: bool = True) -> ScanResult:
    """Add the images inside the .tar files a directory scan listed (items.scan_directory) to its items."""
    for tar_path in result.archives:
        scan_archive(tar_path, result.captions_json, caption_prefix, skip_empty_caption, result)
    return result


def scan_archive(
    tar_path: Path,
    json_captions: dict[str, list[str]] | None,
    caption_prefix: str,
    skip_empty_caption: bool,
    result: ScanResult,
) -> None:
    """Add the archive's images to result.items (one per caption); problems go to result.warnings."""
    try:
        mtime_ns = os.stat(tar_path).st_mtime_ns
        tar = tarfile.TarFile(tar_path)
    except (OSError, tarfile.TarError) as exc:
        result.warnings.append(f"{tar_path}: not a readable plain .tar ({exc}); diffusion-pipe stops on it")
        result.skipped_broken += 1
        return
    other = uncaptioned = videos = 0
    with tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            ext = os.path.splitext(member.name)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                if ext in VIDEO_EXTENSIONS:
                    videos += 1
                else:
                    other += 1
                continue
            captions = None if json_captions is None else json_captions.get(member.name)
            if captions is None:
                if skip_empty_caption:
                    uncaptioned += 1
                    result.skipped_no_caption += 1
                    continue
                captions = [""]
            size = _member_size(tar, member)
            if size is None:
                result.warnings.append(f"{tar_path}: {member.name}: unreadable image skipped")
                result.skipped_broken += 1
                continue
            for caption in captions:
                full = f"{caption_prefix}{caption}" if caption_prefix else caption
                result.items.append(
                    DatasetItem(tar_path, size[0], size[1], full, member.size, mtime_ns, member=member.name)
                )
    if uncaptioned:
        where = (
            f"no entry in {CAPTIONS_JSON}"
            if json_captions is not None
            else f"no {CAPTIONS_JSON} in the folder"
        )
        result.warnings.append(
            f"{tar_path}: {uncaptioned} image(s) skipped: {where} (archive members take their captions only "
            f"from {CAPTIONS_JSON}, by member name)"
        )
    if videos:
        result.warnings.append(f"{tar_path}: {videos} video(s) inside the archive are not bucketed by dpdeck")
    if other:
        result.warnings.append(
            f"{tar_path}: {other} member(s) that are not images (diffusion-pipe tries each one and skips it)"
        )


def _member_size(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, int] | None:
    try:
        handle = tar.extractfile(member)
        if handle is None:
            return None
        with handle, Image.open(handle) as img:
            width, height = img.size
    except (OSError, ValueError, tarfile.TarError, Image.DecompressionBombError):
        return None
    return (width, height) if width > 0 and height > 0 else None
