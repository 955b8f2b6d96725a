"""`dpdeck dataset ...`: scan a dataset, preview its buckets, find duplicates, edit captions and images, undo."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui.cli.output import error, print_json, require_paths, table, warn


def _esc(text: object) -> str:
    """One output line with control characters in it escaped: a file name may hold a newline or an escape
    sequence, and must never print as a second line or reach the terminal as a command."""
    from engine.datasets.names import printable

    return printable(str(text))


def _failed(exc: Exception) -> int:
    """Exit status and message for a failed op: 2 and the state-dir line when the undo journal under
    $DPDECK_HOME could not be written, else 1 and the error."""
    from tui.cli.output import state_write_error

    state = state_write_error(exc)
    error(state or _esc(exc))
    return 2 if state else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dataset", help="datasets: scan, bucket preview, caption batch ops, undo")
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    sp = sub.add_parser("scan", help="counts, missing captions, broken files, sizes and tags of a dataset")
    sp.add_argument("target", type=Path, help="a dataset folder or a dataset TOML")
    sp.add_argument(
        "--dupes", action="store_true", help="also find exact and near duplicates (reads all pixels)"
    )
    sp.add_argument(
        "--max-distance", type=int, default=None, metavar="N", help="near-duplicate bits (default 6)"
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_scan)

    sp = sub.add_parser("dupes", help="exact (same bytes) and near (same picture) duplicate images")
    sp.add_argument("target", type=Path, help="a dataset folder or a dataset TOML")
    sp.add_argument("--exact-only", action="store_true", help="only byte-identical files (no pixel decoding)")
    sp.add_argument(
        "--max-distance",
        type=int,
        default=None,
        metavar="N",
        help="near: max differing hash bits of 64 (default 6)",
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_dupes)

    sp = sub.add_parser("buckets", help="the aspect buckets training will use, items, drops, steps per epoch")
    sp.add_argument(
        "toml", type=Path, metavar="TARGET",
        help="a dataset TOML, or a folder (it takes the profile's resolutions and buckets, as the deck does)",
    )
    sp.add_argument(
        "--profile",
        help="profile name, template or main TOML for the batch settings (default: the default template)",
    )
    sp.add_argument("--num-gpus", type=int, default=1, help="data-parallel GPUs (default 1)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_buckets)

    sp = sub.add_parser(
        "caption", help="edit one caption, or a batch op over a folder or files (dry run = diff)"
    )
    sp.add_argument(
        "targets", type=Path, nargs="+", metavar="PATH", help="a dataset folder, or image/caption files"
    )
    ops = sp.add_mutually_exclusive_group(required=True)
    ops.add_argument("--set", metavar="TEXT", help="make the caption of the one given image exactly TEXT")
    ops.add_argument("--add-trigger", metavar="T", help="put trigger word T first (not twice)")
    ops.add_argument("--add-prefix", metavar="TEXT", help="put literal TEXT before the caption (not twice)")
    ops.add_argument("--remove-tag", metavar="T", help="remove tag T (a full-match regex with --regex)")
    ops.add_argument("--replace-tag", nargs=2, metavar=("OLD", "NEW"), help="replace tag OLD by NEW")
    ops.add_argument("--dedupe", action="store_true", help="drop repeated tags (first one kept)")
    ops.add_argument("--sort", action="store_true", help="sort tags alphabetically (see --keep)")
    ops.add_argument("--strip", action="store_true", help="strip whitespace around tags and the caption")
    ops.add_argument("--lowercase", action="store_true", help="lowercase captions")
    ops.add_argument("--create-missing", action="store_true", help="empty .txt for images without a caption")
    sp.add_argument("--regex", action="store_true", help="--remove-tag is a regular expression")
    sp.add_argument(
        "--keep", type=int, default=0, metavar="N", help="--sort leaves the first N tags in place"
    )
    sp.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_caption)

    sp = sub.add_parser("image", help="resize / convert / strip EXIF of images (new files, atomic, undoable)")
    sp.add_argument("targets", type=Path, nargs="+", metavar="PATH", help="a dataset folder, or image files")
    ops = sp.add_mutually_exclusive_group(required=True)
    ops.add_argument("--max-side", type=int, metavar="N", help="shrink images whose longer side exceeds N px")
    ops.add_argument("--convert", choices=("png", "jpeg", "webp"), help="re-encode as <stem>.png/.jpg/.webp")
    ops.add_argument("--strip-exif", action="store_true", help="drop EXIF after applying its orientation")
    sp.add_argument(
        "--quality", type=int, default=95, metavar="Q", help="JPEG/WebP quality 1-100 (default 95)"
    )
    sp.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_image)

    sp = sub.add_parser("undo", help="restore the files of the last (or the given) batch operation")
    sp.add_argument("op_id", nargs="?", help="operation id (see --list)")
    sp.add_argument("--list", action="store_true", help="list recorded operations")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_undo)


def _scan(args: argparse.Namespace) -> int:
    from engine.datasets.scan import scan

    require_paths(args.target)
    try:
        report = scan(args.target, dupes=args.dupes, max_distance=args.max_distance)
    except (ValueError, OSError) as exc:
        error(_esc(exc))
        return 1
    if args.json:
        print_json(report.to_dict())
        return _scan_status(report)
    t = report.totals
    cols = ["images", "videos", "captioned", "missing_captions", "empty_captions", "unreadable", "zero_byte"]
    rows = [[_esc(d.path), *(str(t_d) for t_d in _dir_counts(d, cols))] for d in report.directories]
    rows.append(["TOTAL", *(str(t[k]) for k in cols)])
    print(
        table(
            rows,
            ["directory", "images", "videos", "captioned", "missing", "empty", "unreadable", "zero-byte"],
        )
    )
    for d in report.directories:
        base = Path(d.path)
        for label, names in (
            ("missing caption", d.missing_captions),
            ("broken file", d.unreadable + d.zero_byte),
            ("caption not UTF-8 (training skips its image)", d.bad_encoding),
            ("symlink outside the dataset (batch ops skip it)", d.links_outside),
            ("not an image or video dpdeck knows (diffusion-pipe would try to load it)", d.other_files),
            ("no mask", d.missing_masks),
        ):
            for name in names:
                print(_esc(f"{label}: {base / name}"))
        for name in d.orphan_masks:
            print(_esc(f"mask without an image: {Path(d.mask_path or '') / name}"))
        for line in d.mask_size_mismatch:
            print(_esc(f"mask size differs: {base / line}"))
        for meta in d.video_meta:
            print(_esc(f"video: {base / meta['name']}: {_video_line(meta)}"))
        for arc in d.archives:
            print(
                _esc(
                    f"archive: {base / arc['name']}: {arc['images']} image(s), {arc['captioned']} captioned "
                    "(read in place, as diffusion-pipe does)"
                )
            )
        for w in d.warnings:
            warn(_esc(w))
        for e in d.errors:
            error(_esc(e))
    if t["videos"]:
        n_unknown = t["video_unknown_frames"]
        unknown = f" ({n_unknown} with no frame count in the header)" if n_unknown else ""
        print(f"videos: {t['videos']}, {t['video_frames']} frames, {t['video_seconds']:.1f} s in total{unknown}")
    if report.resolutions:
        print("resolutions: " + ", ".join(f"{k} x{v}" for k, v in list(report.resolutions.items())[:10]))
        print("aspects: " + ", ".join(f"{k} x{v}" for k, v in report.aspects.items()))
    if report.tags:
        print(_esc("top tags: " + ", ".join(f"{k} ({v})" for k, v in list(report.tags.items())[:20])))
    if report.caption_length:
        print("caption length: " + ", ".join(f"{k} {v}" for k, v in report.caption_length.items()))
    if report.duplicates is not None:
        _print_groups(report.duplicates)
    return _scan_status(report)


def _scan_status(report: Any) -> int:
    """1 when something could not be read (a folder, a symlink loop) and no image or video could: a scan that
    read nothing must not look like an empty, healthy dataset."""
    t = report.totals
    return 1 if report.errors and not (t["images"] or t["videos"]) else 0


def _video_line(meta: dict[str, Any]) -> str:
    size = f"{meta['width']}x{meta['height']}" if meta["width"] and meta["height"] else "size unknown"
    if meta["frames"] is None:
        return f"{size}; {meta['note'] or 'frame count unknown'}"
    frames = f"{'~' if meta['frames_estimated'] else ''}{meta['frames']} frame{'' if meta['frames'] == 1 else 's'}"
    fps = f" at {meta['fps']:.3f} fps" if meta["fps"] else ""
    seconds = f", {meta['duration']:.2f} s" if meta["duration"] is not None else ""
    return f"{size}, {frames}{fps}{seconds}"


def _dir_counts(d: Any, cols: list[str]) -> list[int]:
    return [v if isinstance(v := getattr(d, c), int) else len(v) for c in cols]


def _print_groups(groups: list[dict[str, Any]]) -> None:
    if not groups:
        print("duplicates: none")
    for g in groups:
        extra = "" if g["kind"] == "exact" else f" (distance {g['distance']})"
        print(f"{g['kind']} duplicates{extra}:")
        for p in g["paths"]:
            print(_esc(f"  {p}"))


def _dupes(args: argparse.Namespace) -> int:
    from engine.datasets.dupes import DEFAULT_MAX_DISTANCE, duplicates_in

    require_paths(args.target)
    try:
        groups = duplicates_in(
            args.target,
            near=not args.exact_only,
            max_distance=DEFAULT_MAX_DISTANCE if args.max_distance is None else args.max_distance,
        )
    except (ValueError, OSError) as exc:
        error(_esc(exc))
        return 1
    data = [g.to_dict() for g in groups]
    if args.json:
        print_json(data)
    else:
        _print_groups(data)
    return 0


def bucket_preview(toml: Path, profile: str | None, num_gpus: int) -> dict[str, Any]:
    """The trainer's own plan_buckets on the dataset TOML (or a folder, as the Datasets screen counts one) with
    the profile's global batch, as plain data; without a profile, the default template's.

    Videos are bucketed at the frame rate diffusion-pipe trains the profile's model type at (none for image
    models, whose videos it skips), sizes rounded to the pixel multiple of the backend that would train it
    (engine.datasets.framerate.bucket_rules), examples counted by that backend's rules (BACKEND_RULES).
    micro_batch_size_per_gpu and image_micro_batch_size_per_gpu are read as train.py reads them: a number or
    [[size, batch], ...].
    """
    from engine.datasets.buckets import global_batches, plan_buckets
    from engine.datasets.framerate import bucket_rules, preview_backend
    from profiles import templates
    from profiles.document import TomlFile
    from profiles.store import resolve
    from tui.widgets.dataset_model import folder_dataset, image_folders

    if profile:
        prof, label = resolve(profile), f"profile {profile}"
    else:
        default = templates.default_template().name
        prof, label = templates.load_template(default), f"template {default}"
    if toml.is_dir():
        data, base = folder_dataset(prof, label, image_folders(toml) or [toml]), toml
    else:
        data, base = TomlFile.load(toml).data(), toml.parent
    resolved = global_batches(prof.main.data(), num_gpus)
    batches, batches_image = resolved.by_size, resolved.image_by_size
    framerate, round_to = bucket_rules(prof)
    backend = preview_backend(prof)
    plan = plan_buckets(
        data,
        base,
        batches,
        framerate=framerate,
        global_batch_image=batches_image,
        round_to=round_to,
        backend=backend,
    )
    return {
        "settings_from": label,
        "backend": backend,
        "global_batch": plan.global_batch,
        "global_batch_image": plan.global_batch_image,
        "global_batch_by_size": _size_table(batches),
        "global_batch_image_by_size": None if batches_image is None else _size_table(batches_image),
        "framerate": framerate,
        "round_to": round_to,
        "buckets": [
            {
                "ar": b.ar,
                "width": b.width,
                "height": b.height,
                "frames": b.frames,
                "items": b.count,
                "dropped": b.dropped,
                "batch": plan.batch_for(b),
                "steps": b.count // plan.batch_for(b),
            }
            for b in plan.buckets
        ],
        "items": plan.num_examples,
        "dropped": sum(b.dropped for b in plan.buckets),
        "steps_per_epoch": plan.steps_per_epoch,
        "subsample_ratio": plan.subsample_ratio,
        "skipped_broken": plan.skipped_broken,
        "skipped_no_caption": plan.skipped_no_caption,
        "videos_ignored": plan.videos_ignored,
        "videos_too_short": plan.videos_too_short,
        "videos_unknown_frames": plan.videos_unknown_frames,
        "warnings": plan.warnings,
    }


def _size_table(table: dict[float | None, int]) -> list[list[float | int | None]]:
    """{size: batch} as JSON can hold it: [[size, batch], ...], size null for the one batch of every bucket."""
    return [[size, batch] for size, batch in table.items()]


def _buckets(args: argparse.Namespace) -> int:
    from engine.datasets.buckets import DatasetConfigError
    from profiles.errors import ProfileError, ProfileNotFound

    if args.num_gpus < 1:
        error("--num-gpus must be >= 1")
        return 2
    require_paths(args.toml)
    try:
        data = bucket_preview(args.toml, args.profile, args.num_gpus)
    except ProfileNotFound as exc:
        error(_esc(exc))
        return 2
    except (DatasetConfigError, ProfileError, OSError, ValueError, TypeError) as exc:
        error(_esc(exc))
        return 1
    if args.json:
        print_json(data)
        return 0
    rows = [
        [
            f"{b['ar']}",
            f"{b['width']}x{b['height']}",
            str(b["frames"]),
            str(b["items"]),
            str(b["dropped"]),
            str(b["batch"]),
        ]
        for b in data["buckets"]
    ]
    print(table(rows, ["ar", "size", "frames", "items", "dropped", "batch"]))
    image_batch = f" (images {data['global_batch_image']})" if data["global_batch_image"] else ""
    by_size = data["global_batch_by_size"]
    per_size = (
        " (by size: " + ", ".join(f"{size:g}: {batch}" for size, batch in by_size) + ")"
        if by_size[0][0] is not None
        else ""
    )
    subsample = f" (subsample_ratio {data['subsample_ratio']:g})" if data["subsample_ratio"] else ""
    print(
        f"global batch {data['global_batch']}{per_size}{image_batch}: {data['items']} items, "
        f"{data['dropped']} dropped, {data['steps_per_epoch']} steps per epoch{subsample}; sizes rounded to "
        f"multiples of {data['round_to']}; examples counted by {data['backend']}'s rules; settings from "
        f"{data['settings_from']}"
    )
    if data["framerate"]:
        videos = sum(b["items"] for b in data["buckets"] if b["frames"] > 1)
        print(
            f"videos: frames counted at {data['framerate']} fps (the model's rate); {videos} video items bucketed, "
            f"{data['videos_too_short']} too short, {data['videos_unknown_frames']} with unknown frame count"
        )
    for w in data["warnings"]:
        warn(_esc(w))
    return 0


def _caption_targets(targets: list[Path]) -> Path | list[Path]:
    """One folder, or a selection of existing files (images and/or captions)."""
    from engine.datasets.captions import CaptionError

    if len(targets) == 1 and targets[0].is_dir():
        return targets[0]
    for t in targets:
        if t.is_dir():
            raise CaptionError(f"{t}: give either one folder or files, not a folder among files")
        if not t.exists() and t.suffix.lower() != ".txt":
            raise CaptionError(f"{t}: no such file")
    return targets


def _caption_op(args: argparse.Namespace) -> tuple[Callable[[str], str], str]:
    from engine.datasets import captions as c

    if args.add_trigger is not None:
        return c.add_trigger(args.add_trigger), f"add trigger {args.add_trigger!r}"
    if args.add_prefix is not None:
        return c.add_prefix(args.add_prefix), f"add prefix {args.add_prefix!r}"
    if args.remove_tag is not None:
        return c.remove_tag(args.remove_tag, args.regex), f"remove tag {args.remove_tag!r}"
    if args.replace_tag:
        return c.replace_tag(*args.replace_tag), "replace tag {!r} -> {!r}".format(*args.replace_tag)
    if args.dedupe:
        return c.dedupe(), "dedupe tags"
    if args.sort:
        return c.sort_tags(args.keep), "sort tags" + (f" (first {args.keep} kept)" if args.keep else "")
    if args.strip:
        return c.strip(), "strip whitespace"
    return c.lowercase(), "lowercase"


def _caption(args: argparse.Namespace) -> int:
    from engine.datasets import captions as c

    # A caption file may be named before it exists (--set writes it); anything else must exist.
    require_paths(*(t for t in args.targets if t.suffix.lower() != ".txt"))
    if args.keep and not args.sort:
        error("--keep only goes with --sort")
        return 2
    if args.regex and args.remove_tag is None:
        error("--regex only goes with --remove-tag")
        return 2
    skipped: list[str] = []
    try:
        target = _caption_targets(args.targets)
        where = str(target) if isinstance(target, Path) else f"{len(target)} selected file(s)"
        if args.set is not None:
            if not isinstance(target, list) or len(target) != 1:
                raise c.CaptionError("--set edits one caption: give exactly one image or caption file")
            changes, what = c.plan_set(target[0], args.set), "set caption"
            where = str(target[0])
        elif args.create_missing:
            changes, what = c.plan_create_missing(target), "create missing captions"
        else:
            op, what = _caption_op(args)
            changes = c.plan(target, op, skipped)
        for ch in changes:
            if ch.warning:
                warn(_esc(f"{ch.path}: {ch.warning}"))
        for line in skipped:
            warn(_esc(line))
        op_id = None if args.dry_run else c.apply(changes, f"{what} in {where}")
    except (c.CaptionError, OSError) as exc:
        return _failed(exc)
    if args.json:
        print_json(
            {
                "operation": what,
                "dry_run": args.dry_run,
                "op_id": op_id,
                "changed": [str(ch.path) for ch in changes],
                "skipped": skipped,
                "diff": c.diff(changes),
            }
        )
        if op_id:
            _prune_journal()
        return 0
    if args.dry_run:
        print(c.diff(changes), end="")
        print(_esc(f"dry run: {what}: {len(changes)} file(s) would change"))
    else:
        print(
            _esc(f"{what}: {len(changes)} file(s) changed")
            + (f"; undo with `dpdeck dataset undo {op_id}`" if op_id else ""),
            flush=True,
        )
        if op_id:
            _prune_journal()
    return 0


def _image(args: argparse.Namespace) -> int:
    from engine.datasets import images as im

    if not 1 <= args.quality <= 100:
        error(f"--quality: expected 1..100, found {args.quality}")
        return 2
    targets: list[Path] = args.targets
    require_paths(*targets)
    target: Path | list[Path] = targets[0] if len(targets) == 1 and targets[0].is_dir() else targets
    try:
        if args.max_side is not None:
            plan, what = (
                im.plan_resize(target, args.max_side, args.quality),
                f"resize to max side {args.max_side}",
            )
        elif args.convert:
            plan, what = im.plan_convert(target, args.convert, args.quality), f"convert to {args.convert}"
        else:
            plan, what = im.plan_strip_exif(target, args.quality), "strip EXIF"
        where = str(target) if isinstance(target, Path) else f"{len(target)} selected file(s)"
        op_id = None if args.dry_run else im.apply(plan.changes, f"{what} in {where}")
    except (im.ImageOpError, OSError) as exc:
        return _failed(exc)
    if args.json:
        print_json(
            {
                "operation": what,
                "dry_run": args.dry_run,
                "op_id": op_id,
                "changes": [ch.to_dict() for ch in plan.changes],
                "skipped": plan.skipped,
            }
        )
        if op_id:
            _prune_journal()
        return 0
    for ch in plan.changes:
        print(_esc(ch.describe()))
    for line in plan.skipped:
        print(_esc(f"skipped: {line}"))
    verb = "would change" if args.dry_run else "changed"
    print(
        f"{'dry run: ' if args.dry_run else ''}{what}: {len(plan.changes)} image(s) {verb}, {len(plan.skipped)} skipped"
        + (f"; undo with `dpdeck dataset undo {op_id}`" if op_id else ""),
        flush=True,
    )
    if op_id:
        _prune_journal()
    return 0


def _prune_journal() -> None:
    """Drop undo records beyond `datasets.undo_keep`, after the result is on screen (it can take a second)."""
    from engine.datasets.undo import prune

    try:
        prune()
    except OSError as exc:
        warn(f"could not prune old undo records: {exc}")


def _undo(args: argparse.Namespace) -> int:
    from engine.datasets.undo import UndoError, list_ops, undo

    if args.list:
        ops = list_ops()
        if args.json:
            print_json(ops)
        else:
            print(
                table(
                    [[o["id"], str(o["files"]), _esc(o["description"])] for o in ops],
                    ["id", "files", "operation"],
                )
            )
        return 0
    if args.op_id and args.op_id not in {o["id"] for o in list_ops()}:
        error(_esc(f"no batch operation {args.op_id!r} (`dpdeck dataset undo --list` lists them)"))
        return 2  # an id that names nothing: a usage error, as an unknown job id is
    try:
        result = undo(args.op_id)
    except (UndoError, OSError) as exc:
        return _failed(exc)
    if args.json:
        print_json(result)
    else:
        print(_esc(f"undone {result['id']} ({result['description']}): {len(result['restored'])} file(s) restored"))
    return 0
