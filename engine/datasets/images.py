"""Image batch operations: resize down to a maximum side, convert format, strip EXIF. Plan -> dry run -> apply.

Rules: EXIF orientation is applied to the pixels first (what a viewer shows is what gets resized/converted), so
outputs never carry an orientation tag; images are never upscaled (those already within the limit are skipped
and reported); a conversion writes `<stem>.<new ext>` and removes the original, so `<stem>.txt` still belongs to
it (a captions.json entry is renamed with it); a target name that already exists is an error, as is a folder that
is not writable, both before anything is touched. apply() journals the original bytes (engine.datasets.undo) before
the first write, so `undo` restores the originals byte for byte and deletes the files it created.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from engine.datasets.items import CAPTIONS_JSON, IMAGE_EXTENSIONS
from statefiles.atomic import atomic_write_bytes, atomic_write_text

FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
DEFAULT_QUALITY = 95
_ORIENTATION = 0x0112
# Formats whose encoder is lossless, so re-encoding them to drop EXIF loses nothing.
_LOSSLESS = {"PNG", "BMP", "TIFF", "GIF"}


class ImageOpError(ValueError):
    """Bad arguments or a target that must not be touched; the message names the file and what is expected."""


@dataclass(frozen=True)
class ImageChange:
    source: Path
    target: Path  # equal to source unless the format (and so the extension) changes
    action: str  # "resize" | "convert" | "strip-exif"
    old_size: tuple[int, int]  # as displayed (EXIF orientation applied)
    new_size: tuple[int, int]
    old_format: str
    new_format: str
    old_bytes: int
    quality: int = DEFAULT_QUALITY
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        (ow, oh), (nw, nh) = self.old_size, self.new_size
        where = str(self.source) if self.target == self.source else f"{self.source} -> {self.target.name}"
        text = f"{where}: {ow}x{oh} {self.old_format} -> {nw}x{nh} {self.new_format}"
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "target": str(self.target),
            "action": self.action,
            "old_size": list(self.old_size),
            "new_size": list(self.new_size),
            "old_format": self.old_format,
            "new_format": self.new_format,
            "old_bytes": self.old_bytes,
            "notes": list(self.notes),
        }


@dataclass
class ImagePlan:
    changes: list[ImageChange] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why it is left alone"


def _images(target: Path | Iterable[Path]) -> list[Path]:
    from engine.datasets.layout import list_dir

    if isinstance(target, Path) and target.is_dir():
        return [target / n for n in list_dir(target).images]
    paths = [target] if isinstance(target, Path) else [Path(p) for p in target]
    for p in paths:
        if not p.is_file():
            raise ImageOpError(f"{p}: not a file")
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ImageOpError(f"{p}: not an image (expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


@dataclass(frozen=True)
class _Info:
    size: tuple[int, int]  # displayed size
    format: str
    mode: str
    orientation: int
    has_exif: bool
    nbytes: int


def _info(path: Path) -> _Info:
    with Image.open(path) as img:
        exif = img.getexif()
        orientation = int(exif.get(_ORIENTATION, 1) or 1)
        w, h = img.size
        if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees: the displayed image is h x w
            w, h = h, w
        return _Info((w, h), img.format or "?", img.mode, orientation, len(exif) > 0, path.stat().st_size)


def _each(target: Path | Iterable[Path], plan: ImagePlan) -> Iterable[tuple[Path, _Info]]:
    from engine.datasets.layout import is_outside

    for path in _images(target):
        if is_outside(path.parent, path.name):
            plan.skipped.append(f"{path}: symlink pointing outside the dataset folder")
            continue
        try:
            yield path, _info(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            plan.skipped.append(f"{path}: unreadable image ({exc.__class__.__name__})")


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _change(
    source: Path,
    target: Path,
    action: str,
    info: _Info,
    new_size: tuple[int, int],
    new_format: str,
    quality: int,
    notes: tuple[str, ...],
) -> ImageChange:
    return ImageChange(
        source, target, action, info.size, new_size, info.format, new_format, info.nbytes, quality, notes
    )


def plan_resize(target: Path | Iterable[Path], max_side: int, quality: int = DEFAULT_QUALITY) -> ImagePlan:
    """Shrink every image whose longer side exceeds `max_side`; others are skipped (never upscaled)."""
    if max_side < 1:
        raise ImageOpError(f"--max-side: expected a positive number of pixels, found {max_side}")
    plan = ImagePlan()
    for path, info in _each(target, plan):
        if max(info.size) <= max_side:
            plan.skipped.append(
                f"{path}: {info.size[0]}x{info.size[1]} already within {max_side}; not upscaled"
            )
            continue
        notes = ("orientation applied",) if info.orientation != 1 else ()
        if info.format == "JPEG":
            notes += (f"re-encoded at quality {quality}",)
        plan.changes.append(
            _change(path, path, "resize", info, _fit(info.size, max_side), info.format, quality, notes)
        )
    _check_targets(plan)
    return plan


def plan_convert(target: Path | Iterable[Path], fmt: str, quality: int = DEFAULT_QUALITY) -> ImagePlan:
    """Re-encode to png, jpeg or webp as `<stem>.<ext>`; images already in that format are skipped."""
    if fmt.lower() not in FORMATS:
        raise ImageOpError(f"--convert: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    pil_format, ext = FORMATS[fmt.lower()]
    plan = ImagePlan()
    for path, info in _each(target, plan):
        if info.format == pil_format and info.orientation == 1:
            plan.skipped.append(f"{path}: already {pil_format}")
            continue
        notes: tuple[str, ...] = ("orientation applied",) if info.orientation != 1 else ()
        if pil_format == "JPEG" and ("A" in info.mode or info.mode == "P"):
            notes += ("transparency flattened onto white",)
        new_path = path if info.format == pil_format else path.with_suffix(ext)
        plan.changes.append(_change(path, new_path, "convert", info, info.size, pil_format, quality, notes))
    _check_targets(plan)
    return plan


def plan_strip_exif(target: Path | Iterable[Path], quality: int = DEFAULT_QUALITY) -> ImagePlan:
    """Drop EXIF (camera, GPS, ...) after applying its orientation; images without EXIF are skipped."""
    plan = ImagePlan()
    for path, info in _each(target, plan):
        if not info.has_exif:
            plan.skipped.append(f"{path}: no EXIF data")
            continue
        if info.orientation != 1:
            notes: tuple[str, ...] = ("orientation applied",)
            if info.format not in _LOSSLESS:
                notes += (f"re-encoded at quality {quality}",)
        elif info.format == "JPEG":
            notes = ("lossless: EXIF segment removed, image data untouched",)
        else:
            notes = () if info.format in _LOSSLESS else (f"re-encoded at quality {quality}",)
        plan.changes.append(_change(path, path, "strip-exif", info, info.size, info.format, quality, notes))
    return plan


def _check_targets(plan: ImagePlan) -> None:
    claimed: dict[Path, Path] = {}
    for c in plan.changes:
        if c.target == c.source:
            continue
        if c.target.exists() or os.path.lexists(c.target):
            raise ImageOpError(f"{c.target}: already exists; converting {c.source.name} would overwrite it")
        if c.target in claimed:
            raise ImageOpError(
                f"{c.target}: both {claimed[c.target].name} and {c.source.name} would be converted to it"
            )
        claimed[c.target] = c.source


def strip_jpeg_exif(data: bytes) -> bytes:
    """The JPEG without its EXIF APP1 segment(s); every other byte (image data included) is kept as is."""
    if data[:2] != b"\xff\xd8":
        raise ImageOpError("not a JPEG stream")
    out = [data[:2]]
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows, no more metadata
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos : pos + 2 + length]
        if not (marker == 0xE1 and segment[4:10] == b"Exif\x00\x00"):
            out.append(segment)
        pos += 2 + length
    out.append(data[pos:])
    return b"".join(out)


def _for_format(img: Image.Image, pil_format: str) -> Image.Image:
    if pil_format == "JPEG":
        if "A" in img.mode or img.mode == "P":
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img if img.mode in ("RGB", "L", "CMYK") else img.convert("RGB")
    if pil_format == "WEBP":
        return img if img.mode in ("RGB", "RGBA") else img.convert("RGBA" if "A" in img.mode else "RGB")
    if pil_format == "PNG" and img.mode == "CMYK":
        return img.convert("RGB")
    return img


def _encode(change: ImageChange) -> bytes:
    raw = change.source.read_bytes()
    lossless_strip = change.action == "strip-exif" and change.old_format == "JPEG"
    with Image.open(io.BytesIO(raw)) as img:
        if lossless_strip and int(img.getexif().get(_ORIENTATION, 1) or 1) == 1:
            return strip_jpeg_exif(raw)
        icc = img.info.get("icc_profile")
        webp_lossless = img.format == "WEBP" and b"VP8L" in raw[:64]
        out = ImageOps.exif_transpose(img)
    exif = out.getexif()
    exif.pop(_ORIENTATION, None)  # the pixels are upright now
    if change.new_size != change.old_size:
        if out.mode in ("P", "1"):  # PIL resizes palette images with nearest-neighbour only
            out = out.convert("RGBA" if "transparency" in out.info else "RGB")
        out = out.resize(change.new_size, Image.Resampling.LANCZOS)
    out = _for_format(out, change.new_format)
    kwargs: dict[str, object] = {}
    if icc:
        kwargs["icc_profile"] = icc
    if change.action != "strip-exif" and len(exif) and change.new_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["exif"] = exif.tobytes()
    if change.new_format in ("JPEG", "WEBP"):
        kwargs["quality"] = change.quality
    if change.new_format == "WEBP" and webp_lossless and change.action == "strip-exif":
        kwargs["lossless"] = True
    buf = io.BytesIO()
    out.save(buf, format=change.new_format, **kwargs)
    return buf.getvalue()


def _renamed_captions_json(changes: list[ImageChange]) -> dict[Path, str]:
    """New captions.json text per folder where a converted image had an entry (the entry follows the file)."""
    out: dict[Path, str] = {}
    for folder in sorted({c.source.parent for c in changes if c.target != c.source}):
        cj = folder / CAPTIONS_JSON
        if not cj.is_file():
            continue
        try:
            data = json.loads(cj.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ImageOpError(f"{cj}: cannot read it to rename converted images' entries ({exc})") from exc
        if not isinstance(data, dict):
            continue
        renames = {c.source.name: c.target.name for c in changes if c.source.parent == folder}
        if renames.keys() & data.keys():
            new = {renames.get(k, k): v for k, v in data.items()}
            out[cj] = json.dumps(new, indent=2, ensure_ascii=False) + "\n"
    return out


def apply(changes: list[ImageChange], description: str) -> str | None:
    """Journal the originals, then write every new image atomically; returns the undo op id (None if no-op)."""
    from engine.datasets.undo import record

    if not changes:
        return None
    for folder in sorted({c.source.parent for c in changes}):
        if not os.access(folder, os.W_OK):
            raise ImageOpError(f"{folder}: folder is not writable; nothing was changed")
    for c in changes:
        if c.target != c.source and os.path.lexists(c.target):
            raise ImageOpError(f"{c.target}: already exists; nothing was changed")
    json_updates = _renamed_captions_json(changes)
    created = [c.target for c in changes if c.target != c.source]
    op_id = record(description, [c.source for c in changes] + created + list(json_updates))
    done = 0
    touched = False  # whether any dataset file changed yet (a failed atomic write changes none)
    try:
        for c in changes:
            data = _encode(c)
            mode = c.source.stat().st_mode & 0o7777
            atomic_write_bytes(c.target, data, mode=mode)
            touched = True
            if c.target != c.source:
                c.source.unlink()
            done += 1
        for path, text in json_updates.items():
            atomic_write_text(path, text)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if not touched:
            from engine.datasets.undo import drop_record

            drop_record(op_id)  # nothing changed: no op to undo
            raise ImageOpError(f"{c.source}: {exc.__class__.__name__}: {exc}; nothing was changed") from exc
        raise ImageOpError(
            f"{c.source}: {exc.__class__.__name__}: {exc}; {done} image(s) were already written - "
            f"`dpdeck dataset undo {op_id}` restores every original"
        ) from exc
    return op_id
