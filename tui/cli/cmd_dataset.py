"""`dpdeck dataset ...`: scan a dataset, preview its buckets, batch-edit captions, undo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tui.cli.output import error, print_json, table, warn


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dataset", help="datasets: scan, bucket preview, caption batch ops, undo")
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    sp = sub.add_parser("scan", help="counts, missing captions, broken files, sizes and tags of a dataset")
    sp.add_argument("target", type=Path, help="a dataset folder or a dataset TOML")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_scan)

    sp = sub.add_parser("buckets", help="the aspect buckets training will use, items, drops, steps per epoch")
    sp.add_argument("toml", type=Path, help="dataset TOML")
    sp.add_argument("--profile", required=True, help="profile name or main TOML (for the batch settings)")
    sp.add_argument("--num-gpus", type=int, default=1, help="data-parallel GPUs (default 1)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_buckets)

    sp = sub.add_parser("caption", help="batch caption operation over a folder (dry run shows the diff)")
    sp.add_argument("directory", type=Path, help="dataset folder")
    ops = sp.add_mutually_exclusive_group(required=True)
    ops.add_argument("--add-trigger", metavar="T", help="put trigger word T first (not twice)")
    ops.add_argument("--remove-tag", metavar="T", help="remove tag T (a full-match regex with --regex)")
    ops.add_argument("--replace-tag", nargs=2, metavar=("OLD", "NEW"), help="replace tag OLD by NEW")
    ops.add_argument("--dedupe", action="store_true", help="drop repeated tags (first one kept)")
    ops.add_argument("--sort", action="store_true", help="sort tags alphabetically")
    ops.add_argument("--strip", action="store_true", help="strip whitespace around tags and the caption")
    ops.add_argument("--lowercase", action="store_true", help="lowercase captions")
    ops.add_argument("--create-missing", action="store_true", help="empty .txt for images without a caption")
    sp.add_argument("--regex", action="store_true", help="--remove-tag is a regular expression")
    sp.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_caption)

    sp = sub.add_parser("undo", help="restore the files of the last (or the given) batch operation")
    sp.add_argument("op_id", nargs="?", help="operation id (see --list)")
    sp.add_argument("--list", action="store_true", help="list recorded operations")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_undo)


def _scan(args: argparse.Namespace) -> int:
    from engine.datasets.scan import scan

    try:
        report = scan(args.target)
    except (ValueError, OSError) as exc:
        error(str(exc))
        return 1
    if args.json:
        print_json(report.to_dict())
        return 0
    rows = [
        [
            d.path,
            str(d.images),
            str(d.captioned),
            str(len(d.missing_captions)),
            str(len(d.empty_captions)),
            str(len(d.unreadable)),
            str(len(d.zero_byte)),
        ]
        for d in report.directories
    ]
    t = report.totals
    rows.append(
        [
            "TOTAL",
            *(
                str(t[k])
                for k in (
                    "images",
                    "captioned",
                    "missing_captions",
                    "empty_captions",
                    "unreadable",
                    "zero_byte",
                )
            ),
        ]
    )
    print(table(rows, ["directory", "images", "captioned", "missing", "empty", "unreadable", "zero-byte"]))
    for d in report.directories:
        for name in d.missing_captions:
            print(f"missing caption: {Path(d.path) / name}")
        for name in d.unreadable + d.zero_byte:
            print(f"broken image: {Path(d.path) / name}")
        for name in d.bad_encoding:
            print(f"caption not UTF-8 (training skips its image): {Path(d.path) / name}")
        for w in d.warnings:
            warn(w)
    if report.resolutions:
        print("resolutions: " + ", ".join(f"{k} x{v}" for k, v in list(report.resolutions.items())[:10]))
        print("aspects: " + ", ".join(f"{k} x{v}" for k, v in report.aspects.items()))
    if report.tags:
        print("top tags: " + ", ".join(f"{k} ({v})" for k, v in list(report.tags.items())[:20]))
    if report.caption_length:
        print("caption length: " + ", ".join(f"{k} {v}" for k, v in report.caption_length.items()))
    return 0


def bucket_preview(toml: Path, profile: str, num_gpus: int) -> dict[str, Any]:
    """The trainer's own plan_buckets on the dataset TOML with the profile's global batch, as plain data."""
    from engine.datasets.buckets import plan_buckets
    from profiles.document import TomlFile
    from profiles.store import resolve

    main = resolve(profile).main.data()
    micro = int(main.get("micro_batch_size_per_gpu", 1))
    accum = int(main.get("gradient_accumulation_steps", 1))
    global_batch = micro * accum * num_gpus
    plan = plan_buckets(TomlFile.load(toml).data(), toml.parent, global_batch)
    return {
        "global_batch": global_batch,
        "buckets": [
            {
                "ar": b.ar,
                "width": b.width,
                "height": b.height,
                "frames": b.frames,
                "items": b.count,
                "dropped": b.dropped,
            }
            for b in plan.buckets
        ],
        "items": plan.num_examples,
        "dropped": sum(b.dropped for b in plan.buckets),
        "steps_per_epoch": plan.steps_per_epoch,
        "skipped_broken": plan.skipped_broken,
        "skipped_no_caption": plan.skipped_no_caption,
        "warnings": plan.warnings,
    }


def _buckets(args: argparse.Namespace) -> int:
    from engine.datasets.buckets import DatasetConfigError
    from profiles.errors import ProfileError

    if args.num_gpus < 1:
        error("--num-gpus must be >= 1")
        return 2
    try:
        data = bucket_preview(args.toml, args.profile, args.num_gpus)
    except (DatasetConfigError, ProfileError, OSError, ValueError, TypeError) as exc:
        error(str(exc))
        return 1
    if args.json:
        print_json(data)
        return 0
    rows = [
        [f"{b['ar']}", f"{b['width']}x{b['height']}", str(b["frames"]), str(b["items"]), str(b["dropped"])]
        for b in data["buckets"]
    ]
    print(table(rows, ["ar", "size", "frames", "items", "dropped"]))
    print(
        f"global batch {data['global_batch']}: {data['items']} items, {data['dropped']} dropped, "
        f"{data['steps_per_epoch']} steps per epoch"
    )
    for w in data["warnings"]:
        warn(w)
    return 0


def _caption(args: argparse.Namespace) -> int:
    from engine.datasets import captions as c

    if not args.directory.is_dir():
        error(f"{args.directory}: not a folder")
        return 1
    try:
        if args.create_missing:
            changes, what = c.plan_create_missing(args.directory), "create missing captions"
        else:
            if args.add_trigger is not None:
                op, what = c.add_trigger(args.add_trigger), f"add trigger {args.add_trigger!r}"
            elif args.remove_tag is not None:
                op, what = c.remove_tag(args.remove_tag, args.regex), f"remove tag {args.remove_tag!r}"
            elif args.replace_tag:
                op, what = (
                    c.replace_tag(*args.replace_tag),
                    "replace tag {!r} -> {!r}".format(*args.replace_tag),
                )
            elif args.dedupe:
                op, what = c.dedupe(), "dedupe tags"
            elif args.sort:
                op, what = c.sort_tags(), "sort tags"
            elif args.strip:
                op, what = c.strip(), "strip whitespace"
            else:
                op, what = c.lowercase(), "lowercase"
            changes = c.plan(args.directory, op)
        for ch in changes:
            if ch.warning:
                warn(f"{ch.path}: {ch.warning}")
        op_id = None if args.dry_run else c.apply(changes, f"{what} in {args.directory}")
    except (c.CaptionError, OSError) as exc:
        error(str(exc))
        return 1
    if args.json:
        print_json(
            {
                "operation": what,
                "dry_run": args.dry_run,
                "op_id": op_id,
                "changed": [str(ch.path) for ch in changes],
                "diff": c.diff(changes),
            }
        )
        return 0
    if args.dry_run:
        print(c.diff(changes), end="")
        print(f"dry run: {what}: {len(changes)} file(s) would change")
    else:
        print(
            f"{what}: {len(changes)} file(s) changed"
            + (f"; undo with `dpdeck dataset undo {op_id}`" if op_id else "")
        )
    return 0


def _undo(args: argparse.Namespace) -> int:
    from engine.datasets.undo import UndoError, list_ops, undo

    if args.list:
        ops = list_ops()
        if args.json:
            print_json(ops)
        else:
            print(
                table(
                    [[o["id"], str(o["files"]), o["description"]] for o in ops], ["id", "files", "operation"]
                )
            )
        return 0
    try:
        result = undo(args.op_id)
    except (UndoError, OSError) as exc:
        error(str(exc))
        return 1
    if args.json:
        print_json(result)
    else:
        print(f"undone {result['id']} ({result['description']}): {len(result['restored'])} file(s) restored")
    return 0
