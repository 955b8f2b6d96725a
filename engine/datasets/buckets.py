"""Aspect-ratio and frame buckets exactly as diffusion-pipe computes them.

ars = round(geomspace(min_ar, max_ar, n), 3), deduplicated and sorted (or the explicit ar_buckets); an image
goes to the bucket whose ar is closest in log space; for each resolution r the bucket size is
w = sqrt(r*r*ar), h = r*r/w, each rounded to the nearest multiple of `round_to` (Python round(), so an exact
half goes to the even multiple, as utils/common.py round_to_nearest_multiple does): 16 for the built-in trainer and
most diffusion-pipe models, the model's own multiple otherwise (engine.datasets.framerate.pixel_multiple). Every
image is trained at every resolution. A bucket is one (ar, width, height, frames), pooled across directories, as
diffusion-pipe's Dataset groups its SizeBucketDatasets: two aspect ratios that round to the same size stay apart.
Each bucket is truncated to a multiple of the global batch so every step sees one full batch of one size
(image_micro_batch_size_per_gpu, when set, gives the batch of the frames = 1 buckets).

Frame buckets (diffusion-pipe utils/dataset.py, DirectoryDataset and _find_closest_ar_bucket, checked against
tdrussell/diffusion-pipe): frame_buckets comes from the [[directory]], else the dataset, else [1]; 1 is added
when missing and the list is sorted. An image has 1 frame. A video's frame count is taken at the model's frame
rate (engine.datasets.framerate): int(source frames * framerate / source fps). The item goes to the largest frame
bucket <= its frame count; a video (more than 1 frame) that would land in the 1 bucket, i.e. is shorter than
the smallest video bucket, is skipped ("too short"), as is one with 0 frames; a 1-frame video counts as an image.
One clip per video is trained (video_clip_mode picks which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.datasets.items import DatasetItem, scan_directory

SIZE_ROUND_TO = 16
MAX_RESOLUTIONS = 3
# Keys a [[directory]] entry may override; everything else is dataset-wide.
DIRECTORY_KEYS = (
    "resolutions",
    "enable_ar_bucket",
    "ar_buckets",
    "min_ar",
    "max_ar",
    "num_ar_buckets",
    "frame_buckets",
    "num_repeats",
    "shuffle_tags",
    "caption_prefix",
    "skip_empty_caption",
)


class DatasetConfigError(ValueError):
    """Bad dataset TOML content; the message names the key and what is expected."""


@dataclass(frozen=True)
class BucketItem:
    item: DatasetItem
    shuffle_tags: bool
    directory: Path


@dataclass
class Bucket:
    ar: float
    width: int
    height: int
    frames: int
    items: list[BucketItem] = field(default_factory=list)
    # How many examples (after repeats) the truncation to the global batch dropped.
    dropped: int = 0

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.width, self.height, self.frames)

    @property
    def count(self) -> int:
        return len(self.items)


@dataclass
class BucketPlan:
    buckets: list[Bucket]
    global_batch: int
    warnings: list[str] = field(default_factory=list)
    skipped_broken: int = 0
    skipped_no_caption: int = 0
    directories: list[Path] = field(default_factory=list)
    global_batch_image: int | None = None  # batch of the frames = 1 buckets when it differs (mixed image/video)
    videos_ignored: int = 0  # no frame rate given: an image-only model, whose videos diffusion-pipe skips
    videos_too_short: int = 0  # fewer frames than the smallest video frame bucket
    videos_unknown_frames: int = 0  # the header gives no frame count
    round_to: int = SIZE_ROUND_TO  # the pixel multiple bucket sizes were rounded to

    def batch_for(self, bucket: Bucket) -> int:
        if bucket.frames == 1 and self.global_batch_image:
            return self.global_batch_image
        return self.global_batch

    @property
    def steps_per_epoch(self) -> int:
        return sum(b.count // self.batch_for(b) for b in self.buckets)

    @property
    def num_examples(self) -> int:
        return sum(b.count for b in self.buckets)

    def unique_items(self) -> list[DatasetItem]:
        seen: dict[tuple[str, str], DatasetItem] = {}
        for bucket in self.buckets:
            for bi in bucket.items:
                seen.setdefault((bi.item.key, bi.item.caption), bi.item)
        return list(seen.values())

    def drop_report(self) -> str:
        """Why examples were dropped, bucket by bucket (for the empty-dataset error)."""
        lines = []
        for b in self.buckets:
            if b.dropped:
                size = f"{b.width}x{b.height}" + (f"x{b.frames} frames" if b.frames != 1 else "")
                lines.append(
                    f"bucket {size} (ar {b.ar}): {b.dropped + b.count} examples after repeats, "
                    f"{b.dropped} dropped to make a multiple of the global batch {self.batch_for(b)}"
                )
        if self.skipped_broken:
            lines.append(f"{self.skipped_broken} unreadable image(s) skipped")
        if self.skipped_no_caption:
            lines.append(f"{self.skipped_no_caption} image(s) without a caption skipped (skip_empty_caption)")
        if not lines:
            lines.append("no images found in: " + ", ".join(str(d) for d in self.directories))
        return "\n".join(lines)


def round_to_multiple(x: float, multiple: int = SIZE_ROUND_TO) -> int:
    return int(round(x / multiple) * multiple)


def geomspace(start: float, stop: float, num: int) -> list[float]:
    if num == 1:
        return [float(start)]
    ratio = math.log(stop / start) / (num - 1)
    return [start * math.exp(ratio * i) for i in range(num)]


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetConfigError(f"{where}: {key}: expected a number, found {value!r}")
    return float(value)


def resolution_list(cfg: Mapping[str, Any], where: str) -> list[float]:
    raw = cfg.get("resolutions")
    if raw is None:
        raise DatasetConfigError(f"{where}: resolutions: required (e.g. resolutions = [512])")
    if not isinstance(raw, list) or not raw:
        raise DatasetConfigError(f"{where}: resolutions: expected a non-empty list, found {raw!r}")
    out: list[float] = []
    for value in raw:
        if isinstance(value, list):
            # [w, h] means "the area of w x h": the side of the equivalent square.
            if len(value) != 2:
                raise DatasetConfigError(
                    f"{where}: resolutions: expected a number or [width, height], found {value!r}"
                )
            w = _number(value[0], "resolutions", where)
            h = _number(value[1], "resolutions", where)
            out.append(math.sqrt(w * h))
        else:
            out.append(_number(value, "resolutions", where))
    if any(r <= 0 for r in out):
        raise DatasetConfigError(f"{where}: resolutions: expected positive numbers, found {raw!r}")
    if len(out) > MAX_RESOLUTIONS:
        raise DatasetConfigError(
            f"{where}: resolutions: at most {MAX_RESOLUTIONS} resolutions are supported, found {len(out)}"
        )
    return out


def ar_bucket_list(cfg: Mapping[str, Any], where: str) -> list[float]:
    """The aspect ratios (w/h) images are sorted into."""
    if not cfg.get("enable_ar_bucket", False):
        return [1.0]
    explicit = cfg.get("ar_buckets")
    if explicit is not None:
        if not isinstance(explicit, list) or not explicit:
            raise DatasetConfigError(f"{where}: ar_buckets: expected a non-empty list, found {explicit!r}")
        ars = []
        for value in explicit:
            if isinstance(value, list):
                if len(value) != 2:
                    raise DatasetConfigError(
                        f"{where}: ar_buckets: expected a number or [width, height], found {value!r}"
                    )
                ars.append(_number(value[0], "ar_buckets", where) / _number(value[1], "ar_buckets", where))
            else:
                ars.append(_number(value, "ar_buckets", where))
    else:
        missing = [k for k in ("min_ar", "max_ar", "num_ar_buckets") if k not in cfg]
        if missing:
            raise DatasetConfigError(
                f"{where}: enable_ar_bucket = true without ar_buckets needs {', '.join(missing)}"
            )
        lo = _number(cfg["min_ar"], "min_ar", where)
        hi = _number(cfg["max_ar"], "max_ar", where)
        n = cfg["num_ar_buckets"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DatasetConfigError(f"{where}: num_ar_buckets: expected a positive integer, found {n!r}")
        if lo <= 0 or hi < lo:
            raise DatasetConfigError(
                f"{where}: min_ar/max_ar: expected 0 < min_ar <= max_ar, found {lo}, {hi}"
            )
        ars = [round(a, 3) for a in geomspace(lo, hi, n)]
    if any(a <= 0 for a in ars):
        raise DatasetConfigError(f"{where}: ar_buckets: aspect ratios must be positive, found {ars}")
    return sorted(set(ars))


def frame_bucket_list(cfg: Mapping[str, Any], where: str) -> list[int]:
    """The sorted frame buckets of one directory's settings, 1 included (diffusion-pipe always adds it)."""
    raw = cfg.get("frame_buckets", [1])
    if not isinstance(raw, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in raw):
        raise DatasetConfigError(
            f"{where}: frame_buckets: expected a list of whole numbers >= 1 (e.g. [1, 33]), found {raw!r}"
        )
    return sorted(set(raw) | {1})


def frame_bucket_for(frames: int, frame_buckets: Sequence[int]) -> int | None:
    """The largest frame bucket <= frames; None when there is none, or a video would fall to the image bucket."""
    fitting = [fb for fb in frame_buckets if fb <= frames]
    if not fitting or (frames > 1 and max(fitting) == 1):
        return None
    return max(fitting)


def bucket_size(resolution: float, ar: float, round_to: int = SIZE_ROUND_TO) -> tuple[int, int]:
    w = math.sqrt(resolution * resolution * ar)
    h = resolution * resolution / w
    return round_to_multiple(w, round_to), round_to_multiple(h, round_to)


def closest_ar(width: int, height: int, ars: Sequence[float]) -> float:
    log_ar = math.log(width / height)
    return min(ars, key=lambda a: abs(log_ar - math.log(a)))


def _directory_configs(data: Mapping[str, Any], base_dir: Path) -> list[tuple[Path, dict[str, Any], str]]:
    dirs = data.get("directory")
    if not isinstance(dirs, list) or not dirs:
        raise DatasetConfigError("dataset: [[directory]]: at least one entry with a path is required")
    out = []
    for index, entry in enumerate(dirs):
        where = f"dataset: directory[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise DatasetConfigError(f"{where}: path: required, a string")
        path = Path(entry["path"]).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_dir():
            raise DatasetConfigError(f"{where}: path: {path} is not a directory")
        merged = {k: data[k] for k in DIRECTORY_KEYS if k in data}
        merged.update({k: entry[k] for k in DIRECTORY_KEYS if k in entry})
        out.append((path, merged, where))
    return out


def plan_buckets(
    dataset_toml_data: Mapping[str, Any],
    base_dir: Path | str,
    global_batch: int,
    *,
    framerate: float | None = None,
    global_batch_image: int | None = None,
    round_to: int = SIZE_ROUND_TO,
) -> BucketPlan:
    """Scan every directory and sort its examples into size buckets, truncated to the global batch.

    global_batch = micro_batch_size_per_gpu * gradient_accumulation_steps * data-parallel world size;
    global_batch_image the same with image_micro_batch_size_per_gpu (None: global_batch). Videos are bucketed
    only with the model's `framerate` (engine.datasets.framerate.model_framerate); without one they are counted
    in videos_ignored, as diffusion-pipe skips the videos of image-only models. round_to is the pixel multiple
    (engine.datasets.framerate.pixel_multiple; 16, the default, for the built-in trainer).
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise DatasetConfigError(f"size multiple must be a whole number >= 1, found {round_to!r}")
    if global_batch < 1:
        raise DatasetConfigError(f"global batch must be >= 1, found {global_batch}")
    if global_batch_image is not None and global_batch_image < 1:
        raise DatasetConfigError(f"image global batch must be >= 1, found {global_batch_image}")
    resolution_list(dataset_toml_data, "dataset")  # top-level resolutions are required even with overrides
    plan = BucketPlan(
        buckets=[], global_batch=global_batch, global_batch_image=global_batch_image, round_to=round_to
    )
    by_size: dict[tuple[float, int, int, int], Bucket] = {}
    for directory, cfg, where in _directory_configs(dataset_toml_data, Path(base_dir)):
        plan.directories.append(directory)
        resolutions = resolution_list(cfg, where)
        ars = ar_bucket_list(cfg, where)
        frame_buckets = frame_bucket_list(cfg, where)
        repeats = cfg.get("num_repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise DatasetConfigError(f"{where}: num_repeats: expected a positive integer, found {repeats!r}")
        prefix = cfg.get("caption_prefix", "")
        if not isinstance(prefix, str):
            raise DatasetConfigError(f"{where}: caption_prefix: expected a string, found {prefix!r}")
        scan = scan_directory(
            directory,
            caption_prefix=prefix,
            skip_empty_caption=bool(cfg.get("skip_empty_caption", True)),
            framerate=framerate,
        )
        plan.warnings.extend(scan.warnings)
        plan.skipped_broken += scan.skipped_broken
        plan.skipped_no_caption += scan.skipped_no_caption
        plan.videos_unknown_frames += scan.videos_unknown_frames
        if scan.videos_ignored:
            plan.videos_ignored += scan.videos_ignored
            plan.warnings.append(
                f"{directory}: {scan.videos_ignored} video(s) not bucketed: no model frame rate given "
                "(diffusion-pipe skips the videos of image-only model types)"
            )
        shuffle = bool(cfg.get("shuffle_tags", False))
        # Most images of a set share a handful of sizes, so each size's buckets are worked out once.
        buckets_of: dict[tuple[int, int, int], list[Bucket]] = {}
        for item in scan.items:
            frames = 1 if item.frames == 1 else frame_bucket_for(item.frames, frame_buckets)
            if frames is None:
                plan.videos_too_short += 1
                plan.warnings.append(
                    f"{item.path}: {item.frames} frames at {framerate:g} fps is shorter than the smallest video "
                    f"frame bucket {frame_buckets[1] if len(frame_buckets) > 1 else '(none: frame_buckets = [1])'}"
                    "; skipped, as diffusion-pipe does"
                )
                continue
            key = (item.width, item.height, frames)
            targets = buckets_of.get(key)
            if targets is None:
                ar = closest_ar(item.width, item.height, ars)
                targets = buckets_of[key] = []
                for res in resolutions:
                    w, h = bucket_size(res, ar, round_to)
                    if (ar, w, h, frames) not in by_size:
                        by_size[(ar, w, h, frames)] = Bucket(ar=ar, width=w, height=h, frames=frames)
                    targets.append(by_size[(ar, w, h, frames)])
            entry = [BucketItem(item, shuffle, directory)] * repeats
            for bucket in targets:
                bucket.items.extend(entry)
    # Listed by size first, so the order is the one the preview always showed.
    for key in sorted(by_size, key=lambda k: (k[1], k[2], k[3], k[0])):
        bucket = by_size[key]
        keep = bucket.count - bucket.count % plan.batch_for(bucket)
        bucket.dropped = bucket.count - keep
        del bucket.items[keep:]
        plan.buckets.append(bucket)
    return plan
