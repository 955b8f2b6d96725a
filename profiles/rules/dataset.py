"""Dataset TOML files (the training set and every eval set): schema, known keys, resolutions, buckets,
directory paths."""

from __future__ import annotations

from typing import Any

from profiles import model_types as mt
from profiles.document import TomlFile
from profiles.rules import placeholders, unknown_keys
from profiles.rules.base import Ctx, num
from profiles.rules.paths import check_path
from profiles.rules.schema_errors import schema_problems
from profiles.schema import DatasetConfig

MAX_RESOLUTIONS = 3


def check(ctx: Ctx, toml: TomlFile, model_type: str | None) -> None:
    data = toml.data()
    schema_problems(ctx, toml, data, DatasetConfig)
    unknown_keys.check_table(ctx, toml, data, "dataset", [])
    placeholders.check(ctx, toml, data)
    top_sizes = data.get("size_buckets")
    listed = data.get("directory")
    # diffusion-pipe (8f83dbf) reads the top-level resolutions for every directory without size_buckets.
    all_sized = (
        isinstance(listed, list)
        and bool(listed)
        and all(isinstance(e, dict) and e.get("size_buckets") is not None for e in listed)
    )
    if "resolutions" not in data and top_sizes is None and not all_sized:
        ctx.add(
            "error",
            toml,
            "resolutions",
            "required at the top of the dataset file (diffusion-pipe reads it even when directories set their own)",
            expected="e.g. resolutions = [512]",
            code="required",
        )
    _check_resolutions(ctx, toml, data.get("resolutions"), "resolutions")
    spec = mt.get_spec(model_type) if model_type else None
    frames = data.get("frame_buckets")
    if spec is not None and not spec.video and isinstance(frames, list) and any(f != 1 for f in frames):
        ctx.add(
            "warning",
            toml,
            "frame_buckets",
            f"{model_type!r} trains on images only: frame buckets above 1 are not used",
            found=frames,
            expected="[1] (or leave it out)",
            code="value",
        )
    directories = data.get("directory")
    entries = directories if isinstance(directories, list) else []
    _check_buckets(ctx, toml, data, {}, None)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        prefix = f"directory[{i}]"
        unknown_keys.check_table(ctx, toml, entry, "directory", ["directory", i])
        _check_resolutions(ctx, toml, entry.get("resolutions"), f"{prefix}.resolutions")
        _check_buckets(ctx, toml, data, entry, prefix)
        for key in ("path", "mask_path", "control_path"):
            if key in entry:
                check_path(ctx, toml, f"{prefix}.{key}", entry[key], "folder", toml.path)
        if "default_mask_file" in entry:
            check_path(
                ctx, toml, f"{prefix}.default_mask_file", entry["default_mask_file"], "file", toml.path
            )


def _check_resolutions(ctx: Ctx, toml: TomlFile, value: Any, key: str) -> None:
    if isinstance(value, list) and len(value) > MAX_RESOLUTIONS:
        ctx.add(
            "error",
            toml,
            key,
            f"{len(value)} resolutions: diffusion-pipe quits (with exit status 0) above {MAX_RESOLUTIONS}, "
            "since each one duplicates the dataset",
            found=value,
            expected=f"at most {MAX_RESOLUTIONS} entries",
            code="resolutions",
        )
    if isinstance(value, list) and not value:
        ctx.add(
            "error",
            toml,
            key,
            "empty list",
            found=value,
            expected="at least one resolution, e.g. [512]",
            code="resolutions",
        )


def _check_buckets(
    ctx: Ctx, toml: TomlFile, top: dict[str, Any], entry: dict[str, Any], prefix: str | None
) -> None:
    """Aspect-ratio bucketing by range needs min_ar, max_ar and num_ar_buckets (here or at the top)."""

    def effective(key: str, default: Any = None) -> Any:
        return entry[key] if key in entry else top.get(key, default)

    if effective("enable_ar_bucket", False) is not True:
        return
    if effective("ar_buckets") is not None or effective("size_buckets") is not None:
        return
    if prefix is not None and not any(
        k in entry for k in ("enable_ar_bucket", "min_ar", "max_ar", "num_ar_buckets")
    ):
        return  # inherits everything from the top level, which is checked (and reported) once
    if prefix is not None:
        # diffusion-pipe (8f83dbf) evaluates dataset_config[key] as the default of the directory's .get even
        # when the directory sets the key: without a top-level value it stops with a KeyError.
        for key in ("min_ar", "max_ar", "num_ar_buckets"):
            if key in entry and key not in top:
                ctx.add(
                    "error",
                    toml,
                    f"{prefix}.{key}",
                    f"needs {key} at the top of the dataset file too: diffusion-pipe reads the top-level value "
                    "even when a directory sets its own",
                    expected=f"{key} = ... at the top level (the directory's own value still wins)",
                    code="buckets",
                )
    for key in ("min_ar", "max_ar", "num_ar_buckets"):
        if effective(key) is None:
            where = f"{prefix}.{key}" if prefix is not None and "enable_ar_bucket" in entry else key
            ctx.add(
                "error",
                toml,
                where,
                "required when enable_ar_bucket = true and no ar_buckets are listed",
                expected="min_ar, max_ar and num_ar_buckets (e.g. 0.5, 2.0, 7), or ar_buckets = [...]",
                code="buckets",
                at=f"{prefix}.enable_ar_bucket"
                if prefix is not None and "enable_ar_bucket" in entry
                else "enable_ar_bucket",
            )
    lo, hi = effective("min_ar"), effective("max_ar")
    if num(lo) and num(hi) and lo > hi:
        key = f"{prefix}.min_ar" if prefix is not None and "min_ar" in entry else "min_ar"
        ctx.add(
            "error",
            toml,
            key,
            f"min_ar is above max_ar ({hi})",
            found=lo,
            expected=f"a ratio <= {hi}",
            code="buckets",
        )
