"""The Datasets screen's two report panels as Rich renderables: folder statistics and the bucket plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tui.widgets.dataset_model import BucketView

TOP_TAGS = 15
TOP_SIZES = 8
LIST_NAMES = 6


def _bar(count: int, most: int, width: int = 16) -> str:
    return "█" * max(1, round(width * count / most)) if most else ""


def _names(title: str, names: list[str]) -> str:
    more = f" (+{len(names) - LIST_NAMES} more)" if len(names) > LIST_NAMES else ""
    return f"[b]{title}[/b]: " + escape(", ".join(names[:LIST_NAMES])) + more


def _video_summary(t: dict[str, Any]) -> str:
    """A second head line with the videos' frames and seconds (from their headers), when there are videos."""
    if not t.get("videos"):
        return ""
    unknown = f" · {t['video_unknown_frames']} frame count unknown" if t.get("video_unknown_frames") else ""
    return f"\n{t['videos']} videos · {t['video_frames']} frames · {t['video_seconds']:.1f} s{unknown}"


def stats_renderable(report: Any, folder: Path) -> Group:
    """Counts, caption problems, top tags and the resolution / aspect histograms of one scanned folder."""
    t = report.totals
    head = Text.from_markup(
        f"[b]{escape(str(folder))}[/b]\n"
        f"{t['images']} images · {t['captioned']} captioned · [b]{t['missing_captions']}[/b] missing · "
        f"[b]{t['empty_captions']}[/b] empty · {t['unreadable'] + t['zero_byte']} broken"
        + (f" · {t['bad_encoding']} not UTF-8" if t.get("bad_encoding") else "")
        + _video_summary(t)
    )
    parts: list[Any] = [head]
    for d in report.directories:
        for title, names in (
            ("missing", d.missing_captions),
            ("empty", d.empty_captions),
            ("broken", d.unreadable + d.zero_byte),
        ):
            if names:
                parts.append(Text.from_markup(_names(title, names)))
    if report.caption_length:
        cl = report.caption_length
        parts.append(Text(f"caption length: min {cl['min']} · median {cl['median']} · max {cl['max']} chars"))
    for title, counts, limit in (
        ("top tags", report.tags, TOP_TAGS),
        ("resolutions", report.resolutions, TOP_SIZES),
        ("aspect ratios (w/h)", report.aspects, TOP_SIZES),
    ):
        if not counts:
            continue
        items = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        most = items[0][1]
        table = Table(box=None, show_header=False, padding=(0, 1), title=title, title_justify="left")
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=28)
        table.add_column(justify="right")
        table.add_column(no_wrap=True)
        for key, count in items:
            table.add_row(key, str(count), _bar(count, most))
        parts.append(table)
    return Group(*parts)


def buckets_renderable(view: BucketView) -> Group:
    """The trainer's buckets with items after repeats, drops and the resulting steps per epoch."""
    plan, s = view.plan, view.settings
    head = Text.from_markup(
        f"[b]{plan.steps_per_epoch}[/b] steps per epoch · {plan.num_examples} examples after repeats · "
        f"{sum(b.dropped for b in plan.buckets)} dropped\n"
        f"{escape(s.batch_text())} · from {escape(s.label)} · sizes in multiples of {plan.round_to}"
    )
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for name, justify in (
        ("ar", "right"),
        ("w×h", "left"),
        ("frames", "right"),
        ("items", "right"),
        ("dropped", "right"),
        ("steps", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for b in plan.buckets:
        table.add_row(
            f"{b.ar:g}",
            f"{b.width}×{b.height}",
            str(b.frames),
            str(b.count),
            str(b.dropped),
            str(b.count // plan.batch_for(b)),
        )
    parts: list[Any] = [head, table]
    skipped = []
    if plan.skipped_no_caption:
        skipped.append(f"{plan.skipped_no_caption} image(s) without a caption are skipped by the trainer")
    if plan.skipped_broken:
        skipped.append(f"{plan.skipped_broken} unreadable image(s) skipped")
    if skipped:
        parts.append(Text("\n".join(skipped), style="bold"))
    if plan.warnings:
        parts.append(Text(f"{len(plan.warnings)} warning(s), e.g. {plan.warnings[0]}", style="dim"))
    parts.append(
        Text("f: show only the images of one bucket · P: batch settings of another profile", style="dim")
    )
    return Group(*parts)
