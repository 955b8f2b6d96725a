"""Aspect-ratio, size and frame buckets exactly as diffusion-pipe computes them.

Checked against tdrussell/diffusion-pipe utils/dataset.py and train.py at commit 8f83dbf.

Resolutions and aspect ratios are rounded to 3 decimals, deduplicated and sorted (dedup_and_sort): the geomspace
of min_ar..max_ar or the explicit ar_buckets, whose [w, h] pairs mean w/h. An image goes to the bucket whose ar
is closest in log space; for each resolution r the bucket size is w = sqrt(r*r*ar), h = r*r/w, each rounded to
the nearest multiple of `round_to` (Python round(), so an exact half goes to the even multiple, as
utils/common.py round_to_nearest_multiple does): 16 for the built-in trainer and most diffusion-pipe models, the
model's own multiple otherwise (engine.datasets.framerate.pixel_multiple). Every image is trained at every
resolution. With `size_buckets` ([width, height, frames] entries) there are no resolutions: each item goes to
one of those sizes (size_bucket_for). A bucket is one (ar, width, height, frames), pooled across directories, as
diffusion-pipe's Dataset groups its SizeBucketDatasets: two aspect ratios that round to the same size stay apart.

Examples: one per caption (captions.json lists several), times cache_shuffle_num shuffled variants for
diffusion-pipe (BACKEND_RULES: the built-in trainer cycles its variants over epochs instead), times num_repeats
(int(examples * num_repeats) per directory and bucket: a fraction is allowed). Each bucket is truncated to a
multiple of its global batch so every step sees one full batch of one size; the batch is a number or, from
micro_batch_size_per_gpu = [[size, batch], ...], the one whose size is nearest sqrt(width * height)
(image_micro_batch_size_per_gpu, when set, gives the batch of the frames = 1 buckets). subsample_ratio keeps
int(steps * ratio) steps of an epoch.

Frame buckets (diffusion-pipe DirectoryDataset and _find_closest_ar_bucket): frame_buckets comes from the
[[directory]], else the dataset, else [1]; 1 is added when missing and the list is sorted. An image has 1
frame. A video's frame count is taken at the model's frame rate (engine.datasets.framerate): int(source frames *
framerate / source fps). The item goes to the largest frame bucket <= its frame count; a video (more than 1
frame) that would land in the 1 bucket, i.e. is shorter than the smallest video bucket, is skipped ("too
short"), as is one with 0 frames; a 1-frame video counts as an image. One clip per video is trained
(video_clip_mode picks which).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.datasets.archives import add_archives
from engine.datasets.items import CAPTIONS_JSON, DatasetItem, scan_directory

SIZE_ROUND_TO = 16
MAX_RESOLUTIONS = 3
ROUND_DIGITS = 3  # diffusion-pipe's ROUND_DECIMAL_DIGITS
# Keys a [[directory]] entry may override; everything else is dataset-wide.
DIRECTORY_KEYS = (
    "resolutions",
    "size_buckets",
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
    "cache_shuffle_num",
    "cache_shuffle_delimiter",
    "shuffle_metadata",
    "online_captions",
)
# Keys diffusion-pipe reads only from the [[directory]] entry itself.
DIRECTORY_ONLY_KEYS = ("mask_path", "control_path", "default_mask_file")


class DatasetConfigError(ValueError):
    """Bad dataset TOML content; the message names the key and what is expected."""


@dataclass(frozen=True)
class ExampleRules:
    """How a backend turns files into examples, where the two trainers differ."""

    caption_variants: bool  # each of cache_shuffle_num shuffled captions is an example of its own
    archives: bool  # the images inside .tar files are read
    subsample: bool  # subsample_ratio cuts an epoch's steps
    checks_paths: bool  # mask_path / control_path / default_mask_file / online_captions are checked


BACKEND_RULES: dict[str, ExampleRules] = {
    # The built-in trainer keeps one example per caption and cycles its shuffled variants over epochs.
    "builtin": ExampleRules(caption_variants=False, archives=False, subsample=False, checks_paths=False),
    "diffusion-pipe": ExampleRules(caption_variants=True, archives=True, subsample=True, checks_paths=True),
}


@dataclass(frozen=True)
class BucketItem:
    item: DatasetItem
    shuffle_tags: bool
    directory: Path
    variant: int = 0  # which cache_shuffle_num copy of the caption (diffusion-pipe rules)


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
    # {None: batch}, or {size: batch} from a per-resolution micro_batch_size_per_gpu.
    batches: dict[float | None, int] = field(default_factory=dict)
    batches_image: dict[float | None, int] | None = None
    subsample_ratio: float | None = None
    backend: str = "builtin"

    def batch_for(self, bucket: Bucket) -> int:
        table = self.batches_image if bucket.frames == 1 and self.batches_image else self.batches
        if not table:
            table = {None: self.global_batch}
        return _nearest_batch(table, bucket.width, bucket.height)

    @property
    def steps_per_epoch(self) -> int:
        steps = sum(b.count // self.batch_for(b) for b in self.buckets)
        return int(steps * self.subsample_ratio) if self.subsample_ratio else steps

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
    """numpy.geomspace to the last bit, without numpy: 10 ** (a linspace of log10), ends set exactly."""
    if num == 1:
        return [float(start)]
    lo, hi = math.log10(start), math.log10(stop)
    step = (hi - lo) / (num - 1)
    out = [10.0 ** (i * step + lo) for i in range(num)]
    out[0], out[-1] = float(start), float(stop)
    return out


def _round3_numpy(x: float) -> float:
    """numpy's round(x, 3) (multiply, round half to even, divide), which can differ from Python's round(x, 3):
    diffusion-pipe rounds its geomspace values (numpy floats) this way."""
    scale = float(10**ROUND_DIGITS)
    return round(x * scale) / scale


def dedup_and_sort(values: Sequence[float]) -> list[float]:
    """Rounded to 3 decimals, duplicates dropped, ascending: what diffusion-pipe does to resolutions and ars."""
    return sorted({round(v, ROUND_DIGITS) for v in values})


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetConfigError(f"{where}: {key}: expected a number, found {value!r}")
    return float(value)


def resolution_list(cfg: Mapping[str, Any], where: str) -> list[float]:
    """The resolutions, rounded to 3 decimals, deduplicated and sorted as diffusion-pipe does."""
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
    # diffusion-pipe counts the list as written, before deduplicating, and stops above 3.
    if len(out) > MAX_RESOLUTIONS:
        raise DatasetConfigError(
            f"{where}: resolutions: at most {MAX_RESOLUTIONS} resolutions are supported, found {len(out)}"
        )
    return dedup_and_sort(out)


def size_bucket_list(cfg: Mapping[str, Any], where: str) -> list[tuple[int, int, int]] | None:
    """The [width, height, frames] size_buckets, longest frames first (a stable sort, as diffusion-pipe's);
    None when the settings use resolutions instead."""
    raw = cfg.get("size_buckets")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise DatasetConfigError(f"{where}: size_buckets: expected a non-empty list, found {raw!r}")
    out: list[tuple[int, int, int]] = []
    for value in raw:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
        ):
            raise DatasetConfigError(
                f"{where}: size_buckets: expected [width, height, frames] whole numbers >= 1, found {value!r}"
            )
        out.append((value[0], value[1], value[2]))
    out.sort(key=lambda t: t[-1], reverse=True)
    return out


def ar_bucket_list(cfg: Mapping[str, Any], where: str) -> list[float]:
    """The aspect ratios (w/h) images are sorted into, rounded to 3 decimals, deduplicated and sorted."""
    sizes = size_bucket_list(cfg, where)
    if sizes is not None:
        return dedup_and_sort([w / h for w, h, _ in sizes])
    if not cfg.get("enable_ar_bucket", False):
        return [1.0]
    explicit = cfg.get("ar_buckets")
    # An empty list is falsy there too: diffusion-pipe then falls back to min_ar/max_ar/num_ar_buckets.
    if explicit is not None and explicit != []:
        if not isinstance(explicit, list):
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
        rounded = dedup_and_sort(ars)
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
        rounded = sorted({_round3_numpy(a) for a in geomspace(lo, hi, n)})
    if any(a <= 0 for a in rounded):
        raise DatasetConfigError(f"{where}: ar_buckets: aspect ratios must be positive, found {rounded}")
    return rounded


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
        path = _resolve(entry["path"], base_dir)
        if not path.is_dir():
            raise DatasetConfigError(f"{where}: path: {path} is not a directory")
        merged = {k: data[k] for k in DIRECTORY_KEYS if k in data}
        merged.update({k: entry[k] for k in DIRECTORY_KEYS if k in entry})
        merged.update({k: entry[k] for k in DIRECTORY_ONLY_KEYS if k in entry})
        _require_top_level(data, merged, where)
        out.append((path, merged, where))
    return out


def _resolve(raw: str, base_dir: Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path


def _require_top_level(data: Mapping[str, Any], cfg: Mapping[str, Any], where: str) -> None:
    """diffusion-pipe reads these with the dataset's value as the default argument of .get, evaluated even when
    the [[directory]] sets its own: a directory-only value is a KeyError there."""
    if cfg.get("size_buckets") is not None:
        return
    needed = ["resolutions"]
    if cfg.get("enable_ar_bucket", False) and not cfg.get("ar_buckets"):
        needed += ["min_ar", "max_ar", "num_ar_buckets"]
    for key in needed:
        if key not in data:
            raise DatasetConfigError(
                f"dataset: {key}: required at the top of the dataset file (diffusion-pipe reads it there even "
                f"when {where.removeprefix('dataset: ')} sets its own; e.g. {key} = {_EXAMPLES[key]})"
            )


_EXAMPLES = {"resolutions": "[512]", "min_ar": "0.5", "max_ar": "2.0", "num_ar_buckets": "7"}


def _batch_table(value: int | Mapping[float | None, int], what: str) -> dict[float | None, int]:
    if isinstance(value, Mapping):
        table = dict(value)
    else:
        table = {None: value}
    if not table or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in table.values()):
        raise DatasetConfigError(f"{what} must be >= 1, found {value}")
    return table


def batch_table(raw: Any, key: str) -> dict[float | None, int]:
    """A main-config batch key as diffusion-pipe's train.py reads it: a number, or [[size, batch], ...] (the
    batch of the buckets whose sqrt(width * height) is nearest to size)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _batch_table(raw, key)
    pairs = raw if isinstance(raw, list) else None
    if not pairs or any(
        not isinstance(p, list) or len(p) != 2 or not all(isinstance(v, (int, float)) for v in p) for p in pairs
    ):
        raise DatasetConfigError(f"{key}: expected a number or [[size, batch], ...], found {raw!r}")
    return _batch_table({p[0]: p[1] for p in pairs}, key)


def _whole(main: Mapping[str, Any], key: str, default: int) -> int:
    value = main.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetConfigError(f"{key}: expected a whole number >= 1, found {value!r}")
    return value


@dataclass(frozen=True)
class GlobalBatches:
    """The global batches train.py works out from a main config (one resolver for the CLI and the deck)."""

    by_size: dict[float | None, int]  # micro_batch_size_per_gpu (a number or [[size, batch], ...]) x factor
    image_by_size: dict[float | None, int] | None  # image_micro_batch_size_per_gpu likewise; None: not set
    accumulation: int
    data_parallel: int  # GPUs / pipeline_stages: the data-parallel world size


def global_batches(main: Mapping[str, Any], num_gpus: int = 1) -> GlobalBatches:
    """micro batch x gradient_accumulation_steps x data-parallel world size (num_gpus / pipeline_stages), as
    train.py prints `Global batch size`. Raises DatasetConfigError naming the key on a bad value."""
    accum = _whole(main, "gradient_accumulation_steps", 1)
    stages = _whole(main, "pipeline_stages", 1)
    world = max(1, num_gpus // stages)
    factor = accum * world
    micro = batch_table(main.get("micro_batch_size_per_gpu", 1), "micro_batch_size_per_gpu")
    image_raw = main.get("image_micro_batch_size_per_gpu")
    image = None if image_raw is None else batch_table(image_raw, "image_micro_batch_size_per_gpu")
    return GlobalBatches(
        scale_batch(micro, factor), None if image is None else scale_batch(image, factor), accum, world
    )


def scale_batch(table: Mapping[float | None, int], factor: int) -> dict[float | None, int]:
    """Per-GPU batches times gradient accumulation and data-parallel world size: the global batches."""
    return {size: batch * factor for size, batch in table.items()}


def _nearest_batch(table: Mapping[float | None, int], width: int, height: int) -> int:
    if None in table:
        return table[None]
    side = math.sqrt(width * height)
    # The first of equally near sizes wins, as diffusion-pipe's strict < comparison has it.
    best = min(range(len(table)), key=lambda i: abs(list(table)[i] - side))  # type: ignore[operator]
    return list(table.values())[best]


def _variants(cfg: Mapping[str, Any], where: str) -> int:
    """How many examples one caption makes for diffusion-pipe: cache_shuffle_num shuffled copies (shuffle_tags
    alone means one), the caption itself when 0."""
    n = cfg.get("cache_shuffle_num", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DatasetConfigError(f"{where}: cache_shuffle_num: expected a whole number >= 0, found {n!r}")
    if n == 0 and cfg.get("shuffle_tags", False):
        n = 1
    return max(n, 1)


def _repeated(entries: list[BucketItem], repeats: float) -> list[BucketItem]:
    """int(len * num_repeats) examples, as diffusion-pipe's SizeBucketDataset counts them (a fractional
    num_repeats takes the first part of one more pass)."""
    whole = int(repeats)
    out = [e for e in entries for _ in range(whole)]
    return out + entries[: int(len(entries) * repeats) - len(out)]


def size_bucket_for(
    log_ar: float, frames: int, sizes: Sequence[tuple[int, int, int]], log_ars: Sequence[float]
) -> tuple[int, int, int] | None:
    """diffusion-pipe's _find_closest_size_bucket (8f83dbf), quirk included: it orders the size_buckets by the
    index of the nearest entry of the *sorted, deduplicated* aspect-ratio list, so when the list is not written
    in ascending width/height order (frames descending), an image lands in the bucket at that index, not in the
    one of its aspect ratio. dpdeck reproduces it (the preview must show what training does) and warns."""
    order = sorted(range(len(log_ars)), key=lambda i: abs(log_ar - log_ars[i]))
    for size in (sizes[i] for i in order):
        if frames > 1 and size[2] == 1:
            continue
        if frames >= size[2]:
            return size
    return None


def _size_bucket_warning(sizes: Sequence[tuple[int, int, int]], ars: Sequence[float], where: str) -> str | None:
    natural = [round(w / h, ROUND_DIGITS) for w, h, _ in sizes]
    if natural == list(ars):
        return None
    return (
        f"{where}: size_buckets: diffusion-pipe (8f83dbf) matches images to size_buckets by the position of the "
        "nearest aspect ratio in the sorted list, so with this order images go to other buckets than their "
        "aspect ratio's (the preview shows where they go); list them by ascending width/height, one per "
        "aspect ratio and frame count, to avoid it"
    )


def _check_paths(cfg: Mapping[str, Any], base_dir: Path, where: str) -> dict[str, Path]:
    """mask_path, control_path (folders) and default_mask_file (a file): diffusion-pipe stops when one is wrong."""
    out: dict[str, Path] = {}
    for key, want_dir in (("mask_path", True), ("control_path", True), ("default_mask_file", False)):
        raw = cfg.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str):
            raise DatasetConfigError(f"{where}: {key}: expected a path, found {raw!r}")
        path = _resolve(raw, base_dir)
        if not (path.is_dir() if want_dir else path.is_file()):
            kind = "folder" if want_dir else "file"
            raise DatasetConfigError(f"{where}: {key}: {path} is not a {kind} (diffusion-pipe stops on it)")
        out[key] = path
    return out


def _stems(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as it:
            return {os.path.splitext(e.name)[0] for e in it if e.is_file()}
    except OSError:
        return set()


def plan_buckets(
    dataset_toml_data: Mapping[str, Any],
    base_dir: Path | str,
    global_batch: int | Mapping[float | None, int],
    *,
    framerate: float | None = None,
    global_batch_image: int | Mapping[float | None, int] | None = None,
    round_to: int = SIZE_ROUND_TO,
    backend: str = "builtin",
) -> BucketPlan:
    """Scan every directory and sort its examples into size buckets, truncated to the global batch.

    global_batch = micro_batch_size_per_gpu * gradient_accumulation_steps * data-parallel world size, a number
    or a {size: batch} table (batch_table, scale_batch); global_batch_image the same with
    image_micro_batch_size_per_gpu (None: global_batch). Videos are bucketed only with the model's `framerate`
    (engine.datasets.framerate.model_framerate); without one they are counted in videos_ignored, as diffusion-pipe
    skips the videos of image-only models. round_to is the pixel multiple (engine.datasets.framerate.pixel_multiple;
    16, the default, for the built-in trainer). backend picks the example rules (BACKEND_RULES).
    """
    rules = BACKEND_RULES.get(backend)
    if rules is None:
        raise DatasetConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKEND_RULES)}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise DatasetConfigError(f"size multiple must be a whole number >= 1, found {round_to!r}")
    batches = _batch_table(global_batch, "global batch")
    batches_image = None if global_batch_image is None else _batch_table(global_batch_image, "image global batch")
    plan = BucketPlan(
        buckets=[],
        global_batch=next(iter(batches.values())),
        global_batch_image=None if batches_image is None else next(iter(batches_image.values())),
        round_to=round_to,
        batches=batches,
        batches_image=batches_image,
        backend=backend,
    )
    if rules.subsample:
        ratio = dataset_toml_data.get("subsample_ratio")
        if ratio is not None:
            plan.subsample_ratio = _number(ratio, "subsample_ratio", "dataset")
    by_size: dict[tuple[float | None, int, int, int], Bucket] = {}
    for directory, cfg, where in _directory_configs(dataset_toml_data, Path(base_dir)):
        plan.directories.append(directory)
        _plan_directory(plan, by_size, directory, cfg, where, Path(base_dir), rules, framerate)
    # Listed by size first, so the order is the one the preview always showed.
    for key in sorted(by_size, key=lambda k: (k[1], k[2], k[3], -1.0 if k[0] is None else k[0])):
        bucket = by_size[key]
        keep = bucket.count - bucket.count % plan.batch_for(bucket)
        bucket.dropped = bucket.count - keep
        del bucket.items[keep:]
        plan.buckets.append(bucket)
    return plan


def _plan_directory(
    plan: BucketPlan,
    by_size: dict[tuple[float | None, int, int, int], Bucket],
    directory: Path,
    cfg: Mapping[str, Any],
    where: str,
    base_dir: Path,
    rules: ExampleRules,
    framerate: float | None,
) -> None:
    sizes = size_bucket_list(cfg, where)
    resolutions = resolution_list(cfg, where) if sizes is None else []
    ars = ar_bucket_list(cfg, where)
    log_ars = [math.log(a) for a in ars]
    frame_buckets = frame_bucket_list(cfg, where)
    if sizes is not None and (warning := _size_bucket_warning(sizes, ars, where)):
        plan.warnings.append(warning)
    repeats = cfg.get("num_repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, (int, float)) or repeats <= 0:
        raise DatasetConfigError(f"{where}: num_repeats: expected a number > 0, found {repeats!r}")
    prefix = cfg.get("caption_prefix", "")
    if not isinstance(prefix, str):
        raise DatasetConfigError(f"{where}: caption_prefix: expected a string, found {prefix!r}")
    variants = _variants(cfg, where) if rules.caption_variants else 1
    paths = _check_paths(cfg, base_dir, where) if rules.checks_paths else {}
    if rules.checks_paths and cfg.get("online_captions") and not (directory / CAPTIONS_JSON).is_file():
        raise DatasetConfigError(f"{where}: online_captions = true needs {directory / CAPTIONS_JSON}")
    skip_empty = bool(cfg.get("skip_empty_caption", True))
    scan = scan_directory(directory, caption_prefix=prefix, skip_empty_caption=skip_empty, framerate=framerate)
    if rules.archives:
        add_archives(scan, prefix, skip_empty)
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
    _check_masks_and_controls(plan, scan.items, paths, directory, where)
    shuffle = bool(cfg.get("shuffle_tags", False))
    # Most images of a set share a handful of sizes, so each size's buckets are worked out once.
    buckets_of: dict[tuple[int, int, int], list[Bucket]] = {}
    # This directory's examples per bucket (its SizeBucketDataset); repeats apply to each as a whole.
    mine: dict[int, tuple[Bucket, list[BucketItem]]] = {}
    for item in scan.items:
        key = (item.width, item.height, item.frames)
        targets = buckets_of.get(key)
        if targets is None:
            targets = buckets_of[key] = _targets(
                by_size, item, sizes, resolutions, ars, log_ars, frame_buckets, plan.round_to
            )
            if not targets:
                plan.videos_too_short += 1
                plan.warnings.append(_too_short(item, framerate, frame_buckets, sizes))
        elif not targets:
            plan.videos_too_short += 1
            plan.warnings.append(_too_short(item, framerate, frame_buckets, sizes))
        entries = [BucketItem(item, shuffle, directory, v) for v in range(variants)]
        for bucket in targets:
            mine.setdefault(id(bucket), (bucket, []))[1].extend(entries)
    for bucket, entries in mine.values():
        bucket.items.extend(_repeated(entries, repeats))


def _targets(
    by_size: dict[tuple[float | None, int, int, int], Bucket],
    item: DatasetItem,
    sizes: Sequence[tuple[int, int, int]] | None,
    resolutions: Sequence[float],
    ars: Sequence[float],
    log_ars: Sequence[float],
    frame_buckets: Sequence[int],
    round_to: int,
) -> list[Bucket]:
    """The buckets one item trains in (one per resolution; one in size_buckets mode); [] for a too short video."""
    if sizes is not None:
        size = size_bucket_for(math.log(item.width / item.height), item.frames, sizes, log_ars)
        if size is None:
            return []
        w, h, frames = size
        key: tuple[float | None, int, int, int] = (None, w, h, frames)
        if key not in by_size:
            by_size[key] = Bucket(ar=round(w / h, ROUND_DIGITS), width=w, height=h, frames=frames)
        return [by_size[key]]
    frames_or_none = 1 if item.frames == 1 else frame_bucket_for(item.frames, frame_buckets)
    if frames_or_none is None:
        return []
    ar = closest_ar(item.width, item.height, ars)
    out = []
    for res in resolutions:
        w, h = bucket_size(res, ar, round_to)
        key = (ar, w, h, frames_or_none)
        if key not in by_size:
            by_size[key] = Bucket(ar=ar, width=w, height=h, frames=frames_or_none)
        out.append(by_size[key])
    return out


def _too_short(
    item: DatasetItem, framerate: float | None, frame_buckets: Sequence[int], sizes: Sequence[Any] | None
) -> str:
    if sizes is not None:
        smallest = min((s[2] for s in sizes if s[2] > 1), default=None)
    else:
        smallest = frame_buckets[1] if len(frame_buckets) > 1 else None
    rate = f" at {framerate:g} fps" if framerate else ""
    return (
        f"{item.path}: {item.frames} frames{rate} is shorter than the smallest video frame bucket "
        f"{smallest if smallest is not None else '(none: frame_buckets = [1])'}; skipped, as diffusion-pipe does"
    )


def _check_masks_and_controls(
    plan: BucketPlan, items: Sequence[DatasetItem], paths: Mapping[str, Path], directory: Path, where: str
) -> None:
    """Masks pair with images by stem (any extension); an image without one trains unmasked, or with
    default_mask_file. Every image needs a control file (same stem) when control_path is set."""
    if "control_path" not in paths and "mask_path" not in paths:
        return
    names = {(i.member or i.path.name) for i in items}
    stems = {os.path.splitext(os.path.basename(n))[0] for n in names}
    control = paths.get("control_path")
    if control is not None:
        missing = sorted(stems - _stems(control))
        if missing:
            raise DatasetConfigError(
                f"{where}: control_path: no control file for {len(missing)} image(s), e.g. {missing[0]} "
                f"(diffusion-pipe stops on the first)"
            )
    mask = paths.get("mask_path")
    if mask is not None and "default_mask_file" not in paths:
        unmasked = len(stems - _stems(mask))
        if unmasked:
            plan.warnings.append(
                f"{directory}: {unmasked} image(s) without a mask in {mask}: trained unmasked, as diffusion-pipe does"
            )
