"""Dataset health report: what diffusion-pipe will see in a folder or a dataset TOML, and what is wrong with it.

Uses the same file rules as engine.datasets.items (non-recursive, its image extensions, `<stem>.txt` first,
then captions.json) so the report never disagrees with the trainer. Sizes come from headers only.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from engine.datasets.items import CAPTIONS_JSON, IMAGE_EXTENSIONS, read_image_size


@dataclass
class DirReport:
    path: str
    images: int = 0
    captioned: int = 0
    missing_captions: list[str] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    zero_byte: list[str] = field(default_factory=list)
    # Captions that are not valid UTF-8: the trainer cannot read them and skips the image.
    bad_encoding: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ScanReport:
    directories: list[DirReport] = field(default_factory=list)
    resolutions: dict[str, int] = field(default_factory=dict)
    aspects: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    caption_length: dict[str, float] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        d = self.directories
        return {
            "images": sum(r.images for r in d),
            "captioned": sum(r.captioned for r in d),
            "missing_captions": sum(len(r.missing_captions) for r in d),
            "empty_captions": sum(len(r.empty_captions) for r in d),
            "unreadable": sum(len(r.unreadable) for r in d),
            "zero_byte": sum(len(r.zero_byte) for r in d),
            "bad_encoding": sum(len(r.bad_encoding) for r in d),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = self.totals
        return out


def _aspect_label(width: int, height: int) -> str:
    # Two decimals groups near-identical crops together while still separating 4:3 from 3:2.
    return f"{width / height:.2f}"


def _read_caption(path: Path, rep: DirReport) -> str | None:
    from engine.datasets.captions import decode_caption

    try:
        data = path.read_bytes()
    except OSError as exc:
        rep.warnings.append(f"{path}: unreadable caption ({exc})")
        return None
    text, warning = decode_caption(data)
    if warning:
        rep.warnings.append(f"{path}: {warning}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # items.py reads captions as strict UTF-8, so training skips this image until the file is re-encoded.
        rep.bad_encoding.append(path.name)
        return None
    return text


def _captions_json(directory: Path, warnings: list[str]) -> dict[str, list[str]]:
    path = directory / CAPTIONS_JSON
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable captions file ignored ({exc})")
        return {}
    if not isinstance(raw, dict):
        warnings.append(f"{path}: expected an object mapping file name -> caption")
        return {}
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            out[name] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
    return out


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def _scan_dir(directory: Path, report: ScanReport, lengths: list[int], tags: Counter[str]) -> None:
    rep = DirReport(path=str(directory))
    report.directories.append(rep)
    json_caps = _captions_json(directory, rep.warnings)
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        rep.warnings.append(f"{directory}: cannot list directory ({exc})")
        return
    res: Counter[str] = Counter(report.resolutions)
    asp: Counter[str] = Counter(report.aspects)
    for path in entries:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rep.images += 1
        try:
            size = path.stat().st_size
        except OSError as exc:
            rep.unreadable.append(path.name)
            rep.warnings.append(f"{path}: {exc}")
            continue
        if size == 0:
            rep.zero_byte.append(path.name)
        else:
            try:
                w, h = read_image_size(path)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
                rep.unreadable.append(path.name)
                rep.warnings.append(f"{path}: unreadable image ({exc.__class__.__name__})")
            else:
                if w > 0 and h > 0:
                    res[f"{w}x{h}"] += 1
                    asp[_aspect_label(w, h)] += 1
        txt = path.with_suffix(".txt")
        captions: list[str] | None = None
        if txt.is_file():
            text = _read_caption(txt, rep)
            if text is None:
                continue
            captions = [text]
        elif path.name in json_caps:
            captions = json_caps[path.name]
        if captions is None:
            rep.missing_captions.append(path.name)
            continue
        nonempty = [c.strip() for c in captions if c.strip()]
        if not nonempty:
            rep.empty_captions.append(path.name)
            continue
        rep.captioned += 1
        for cap in nonempty:
            lengths.append(len(cap))
            tags.update(split_tags(cap))
    report.resolutions = dict(res.most_common())
    report.aspects = dict(sorted(asp.items()))


def dataset_directories(toml_data: Mapping[str, Any], base_dir: Path) -> list[Path]:
    """The [[directory]] paths of a dataset TOML, relative ones resolved against the TOML's folder."""
    out = []
    for entry in toml_data.get("directory") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str):
            p = Path(entry["path"]).expanduser()
            out.append(p if p.is_absolute() else base_dir / p)
    return out


def scan(target: Path | str) -> ScanReport:
    """Scan a dataset folder, or every [[directory]] of a dataset TOML file."""
    target = Path(target)
    if target.is_dir():
        dirs = [target]
    elif target.is_file() and target.suffix.lower() == ".toml":
        from profiles.document import TomlFile

        dirs = dataset_directories(TomlFile.load(target).data(), target.parent)
        if not dirs:
            raise ValueError(f"{target}: no [[directory]] entry with a path")
    else:
        raise ValueError(f"{target}: not a folder or a dataset .toml file")
    report = ScanReport()
    lengths: list[int] = []
    tags: Counter[str] = Counter()
    for d in dirs:
        if not d.is_dir():
            report.directories.append(DirReport(path=str(d), warnings=[f"{d}: not a directory"]))
            continue
        _scan_dir(d, report, lengths, tags)
    report.tags = dict(tags.most_common())
    if lengths:
        report.caption_length = {
            "min": min(lengths),
            "max": max(lengths),
            "mean": round(statistics.fmean(lengths), 1),
            "median": statistics.median(lengths),
        }
    return report
