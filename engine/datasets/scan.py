"""Dataset health report: what diffusion-pipe will see in a folder or a dataset TOML, and what is wrong with it.

Uses the same file rules as the trainer (engine.datasets.layout / items: non-recursive, its image extensions,
captions.json when the folder has one, else `<stem>.txt`, as diffusion-pipe 8f83dbf reads them) so the report
never disagrees with training; an empty caption is listed (empty_captions) but trains with the empty caption. Image sizes come from file
headers only (engine.datasets.headers), and so do video sizes, frame counts and durations
(engine.datasets.video_headers); the default scan decodes no pixels and reads each caption once, which is what
keeps 100,000 images within a few seconds. Duplicate detection reads every byte and decodes thumbnails, so it
only runs when asked (`scan(..., dupes=True)`).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.datasets.captions import decode_caption, split_tags
from engine.datasets.fastio import read_bytes
from engine.datasets.headers import EmptyImageError, read_image_size
from engine.datasets.items import CAPTIONS_JSON, entry_is_file, load_captions_json
from engine.datasets.layout import DirSpec, Listing, folder_problem, list_dir, target_dirs
from engine.datasets.video_headers import EmptyVideoError, VideoHeaderError, read_video_info

_BROKEN = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class DirReport:
    path: str
    images: int = 0
    videos: int = 0
    captioned: int = 0
    missing_captions: list[str] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    zero_byte: list[str] = field(default_factory=list)
    # Captions that are not valid UTF-8: the trainer cannot read them and skips the image.
    bad_encoding: list[str] = field(default_factory=list)
    video_files: list[str] = field(default_factory=list)
    # Per readable video, from its container header: name, stored width/height, frames and fps at the file's own
    # rate, duration (s), frames_estimated (Matroska), rotation and a note on what is unknown.
    video_meta: list[dict[str, Any]] = field(default_factory=list)
    video_frames: int = 0  # sum of the known frame counts (at each file's own rate)
    video_seconds: float = 0.0  # sum of the known durations
    video_unknown_frames: list[str] = field(default_factory=list)  # readable, but the header has no frame count
    links_outside: list[str] = field(default_factory=list)  # symlinks leaving the folder; batch ops skip them
    broken_links: list[str] = field(default_factory=list)  # symlinks that lead nowhere (loop, missing target)
    other_files: list[str] = field(default_factory=list)  # diffusion-pipe would try to load these as media
    # Per .tar file: name, images (members), captioned (by captions.json), uncaptioned, unreadable.
    archives: list[dict[str, Any]] = field(default_factory=list)
    mask_path: str | None = None
    missing_masks: list[str] = field(default_factory=list)  # media without a mask of the same stem
    orphan_masks: list[str] = field(default_factory=list)  # masks whose stem matches no image
    mask_size_mismatch: list[str] = field(default_factory=list)  # "name: image WxH, mask WxH"
    warnings: list[str] = field(default_factory=list)
    # What could not be read at all (the folder, a symlink loop), each naming the path; with no image or video
    # readable anywhere, `dataset scan` exits 1.
    errors: list[str] = field(default_factory=list)


@dataclass
class ScanReport:
    directories: list[DirReport] = field(default_factory=list)
    resolutions: dict[str, int] = field(default_factory=dict)
    aspects: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    caption_length: dict[str, float] = field(default_factory=dict)
    duplicates: list[dict[str, Any]] | None = None  # only with scan(..., dupes=True)

    @property
    def totals(self) -> dict[str, int | float]:
        d = self.directories
        out: dict[str, int | float] = {"images": sum(r.images for r in d), "videos": sum(r.videos for r in d)}
        out["captioned"] = sum(r.captioned for r in d)
        out["archive_images"] = sum(a["images"] for r in d for a in r.archives)
        out["video_frames"] = sum(r.video_frames for r in d)
        out["video_seconds"] = round(sum(r.video_seconds for r in d), 3)
        for key in (
            "missing_captions",
            "empty_captions",
            "unreadable",
            "zero_byte",
            "bad_encoding",
            "links_outside",
            "broken_links",
            "other_files",
            "missing_masks",
            "orphan_masks",
            "mask_size_mismatch",
            "video_unknown_frames",
        ):
            out[key] = sum(len(getattr(r, key)) for r in d)
        if self.duplicates is not None:
            out["duplicate_groups"] = len(self.duplicates)
        return out

    @property
    def errors(self) -> list[str]:
        return [e for d in self.directories for e in d.errors]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = self.totals
        out["errors"] = self.errors
        return out


def _aspect_label(width: int, height: int) -> str:
    # Two decimals groups near-identical crops together while still separating 4:3 from 3:2.
    return f"{width / height:.2f}"


def _read_caption(path: str, rep: DirReport) -> str | None:
    try:
        data = read_bytes(path)
    except OSError as exc:
        rep.warnings.append(f"{path}: unreadable caption ({exc})")
        return None
    if not data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    text, warning = decode_caption(data)
    if warning:
        rep.warnings.append(f"{path}: {warning}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # items.py reads captions as strict UTF-8, so training skips this image until the file is re-encoded.
        rep.bad_encoding.append(os.path.basename(path))
        return None
    return text


class _Totals:
    """Histograms and caption stats accumulated over every folder of one scan."""

    def __init__(self) -> None:
        self.res: Counter[str] = Counter()
        self.asp: Counter[str] = Counter()
        self.tags: Counter[str] = Counter()
        self.lengths: list[int] = []


def _masks(spec: DirSpec, listing: Listing, rep: DirReport) -> dict[str, Path] | None:
    """Mask file per stem (any extension, as diffusion-pipe matches them), or None without a mask folder."""
    if spec.mask_path is None:
        return None
    rep.mask_path = str(spec.mask_path)
    try:
        with os.scandir(spec.mask_path) as it:
            masks = {os.path.splitext(e.name)[0]: Path(e.path) for e in it if entry_is_file(e)}
    except OSError as exc:
        rep.warnings.append(f"{spec.mask_path}: mask folder cannot be read ({exc.__class__.__name__})")
        return None
    stems = {os.path.splitext(n)[0] for n in listing.images + listing.videos}
    rep.orphan_masks = sorted(masks[s].name for s in masks.keys() - stems)
    return masks


def _check_mask(name: str, size: tuple[int, int] | None, masks: dict[str, Path], rep: DirReport) -> None:
    mask = masks.get(os.path.splitext(name)[0])
    if mask is None:
        rep.missing_masks.append(name)
        return
    if size is None:
        return
    try:
        msize = read_image_size(mask)
    except _BROKEN:
        rep.warnings.append(f"{mask}: unreadable mask")
        return
    if msize != size:
        rep.mask_size_mismatch.append(f"{name}: image {size[0]}x{size[1]}, mask {msize[0]}x{msize[1]}")


def _scan_dir(spec: DirSpec, report: ScanReport, acc: _Totals) -> None:
    directory = spec.path
    rep = DirReport(path=str(directory))
    report.directories.append(rep)
    try:
        listing = list_dir(directory)
    except OSError as exc:
        rep.errors.append(f"{directory}: cannot list directory ({exc})")
        return
    outside = set(listing.links_outside)
    json_caps: dict[str, list[str]] = {}
    use_json = listing.has_captions_json and CAPTIONS_JSON not in outside
    if use_json:
        json_caps = load_captions_json(directory, rep.warnings) or {}
    masks = _masks(spec, listing, rep)
    rep.images, rep.videos = len(listing.images), len(listing.videos)
    rep.video_files = listing.videos
    rep.other_files = [n for n in listing.others if not n.endswith(".tar")]
    for name in listing.others:
        if name.endswith(".tar") and name not in outside:
            rep.archives.append(_scan_archive(directory / name, json_caps if use_json else None, rep))
    rep.links_outside = listing.links_outside
    for name in listing.links_outside:
        rep.warnings.append(f"{directory / name}: {_outside_note(name)}")
    rep.broken_links = sorted(listing.broken_links)
    for name in rep.broken_links:
        why = listing.broken_links[name]
        rep.errors.append(f"{directory / name}: {why}; it cannot be read (training skips it)")
    video_set = set(listing.videos)
    # Plain strings in this loop: pathlib joins cost more than the header reads themselves at 100k files.
    prefix = os.path.join(os.fspath(directory), "")
    for name in listing.images + listing.videos:
        path = prefix + name
        size: tuple[int, int] | None = None
        if name not in video_set:
            try:
                size = read_image_size(path)
            except EmptyImageError:
                rep.zero_byte.append(name)
            except _BROKEN as exc:
                rep.unreadable.append(name)
                rep.warnings.append(f"{path}: unreadable image ({exc.__class__.__name__})")
            else:
                acc.res[f"{size[0]}x{size[1]}"] += 1
                acc.asp[_aspect_label(*size)] += 1
        else:
            size = _probe_video(name, path, rep, acc)
        if masks is not None:
            _check_mask(name, size, masks, rep)
        stem = os.path.splitext(name)[0]
        captions: list[str] | None = None
        if use_json:
            # diffusion-pipe reads no .txt caption in a folder that has captions.json.
            captions = json_caps.get(name)
        elif f"{stem}.txt" in outside:
            rep.captioned += 1  # diffusion-pipe reads it; the scan does not read through such a link
            continue
        elif f"{stem}.txt" in listing.captions:
            text = _read_caption(f"{prefix}{stem}.txt", rep)
            if text is None:
                continue
            captions = [text]
        if captions is None:
            rep.missing_captions.append(name)
            continue
        nonempty = [c.strip() for c in captions if c.strip()]
        if not nonempty:
            rep.empty_captions.append(name)
            continue
        rep.captioned += 1
        for cap in nonempty:
            acc.lengths.append(len(cap))
            acc.tags.update(split_tags(cap))


def _scan_archive(path: Path, json_caps: dict[str, list[str]] | None, rep: DirReport) -> dict[str, Any]:
    """One .tar of the folder as diffusion-pipe reads it (engine.datasets.archives): its images, in place."""
    from engine.datasets.archives import scan_archive
    from engine.datasets.items import ScanResult

    result = ScanResult()
    scan_archive(path, json_caps, "", True, result)
    rep.warnings.extend(result.warnings)
    captioned = len({i.member for i in result.items})
    images = captioned + result.skipped_no_caption + result.skipped_broken
    return {
        "name": path.name,
        "images": images,
        "captioned": captioned,
        "uncaptioned": result.skipped_no_caption,
        "unreadable": result.skipped_broken,
    }


def _outside_note(name: str) -> str:
    if name == CAPTIONS_JSON:
        return (
            "symlink pointing outside the dataset folder; not read, so captions only it gives are reported "
            "missing"
        )
    if name.lower().endswith(".txt"):
        return (
            "caption is a symlink pointing outside the dataset folder; not read for the tag statistics, "
            "batch ops skip it"
        )
    return "symlink pointing outside the dataset folder"


def _probe_video(name: str, path: str, rep: DirReport, acc: _Totals) -> tuple[int, int] | None:
    """Record one video's header facts in the report; its stored frame size, or None when unreadable."""
    try:
        info = read_video_info(path)
    except EmptyVideoError:
        rep.zero_byte.append(name)
        return None
    except VideoHeaderError as exc:
        rep.unreadable.append(name)
        rep.warnings.append(f"{path}: unreadable video ({exc.reason})")
        return None
    except OSError as exc:
        rep.unreadable.append(name)
        rep.warnings.append(f"{path}: unreadable video ({exc.__class__.__name__})")
        return None
    rep.video_meta.append({"name": name, **info.to_dict()})
    if info.frames is None:
        rep.video_unknown_frames.append(name)
    else:
        rep.video_frames += info.frames
    if info.duration is not None:
        rep.video_seconds += info.duration
    if info.width is None or info.height is None:
        return None
    if info.rotation in (90, 270):
        rep.warnings.append(
            f"{path}: players show it rotated {info.rotation}°, but frames are decoded as stored: diffusion-pipe "
            f"buckets it as {info.width}x{info.height}; re-encode with the rotation applied if that is wrong"
        )
    acc.res[f"{info.width}x{info.height}"] += 1
    acc.asp[_aspect_label(info.width, info.height)] += 1
    return info.width, info.height


def scan(target: Path | str, *, dupes: bool = False, max_distance: int | None = None) -> ScanReport:
    """Scan a dataset folder, or every [[directory]] of a dataset TOML file; raises ValueError for a bad target."""
    report = ScanReport()
    acc = _Totals()
    specs = target_dirs(target)
    for spec in specs:
        if not spec.path.is_dir():
            problem = f"{spec.path}: {folder_problem(spec.path)}"
            report.directories.append(DirReport(path=str(spec.path), errors=[problem]))
            continue
        _scan_dir(spec, report, acc)
    report.resolutions = dict(acc.res.most_common())
    report.aspects = dict(sorted(acc.asp.items()))
    report.tags = dict(acc.tags.most_common())
    if acc.lengths:
        report.caption_length = {
            "min": min(acc.lengths),
            "max": max(acc.lengths),
            "mean": round(statistics.fmean(acc.lengths), 1),
            "median": statistics.median(acc.lengths),
        }
    if dupes:
        from engine.datasets.dupes import DEFAULT_MAX_DISTANCE, find_duplicates

        paths = [Path(d.path) / n for d in report.directories for n in _image_names(d)]
        groups = find_duplicates(
            paths, max_distance=DEFAULT_MAX_DISTANCE if max_distance is None else max_distance
        )
        report.duplicates = [g.to_dict() for g in groups]
    return report


def _image_names(rep: DirReport) -> list[str]:
    try:
        return list_dir(Path(rep.path)).images
    except OSError:
        return []
