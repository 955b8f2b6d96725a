"""Every thread of the Datasets screen. A worker reads or writes the disk and posts what it found as a typed
message (tui.screens.datasets.messages); it never touches a widget. `notify` is safe here too: it posts a
message to the app."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work

from tui.screens.datasets import messages as msg
from tui.screens.datasets.state import DatasetsState
from tui.widgets import dataset_model as dm


class DatasetsWorkers(DatasetsState):
    @work(thread=True, exclusive=True, group="ds-open")
    def _open(self, how: str, value: str) -> None:
        """`how`: "last" (the dataset open last time), "profile" (a stored profile's) or "path"."""
        try:
            if how == "last":
                source, bucket_profile = dm.reopen_last()
            elif how == "profile":
                source, bucket_profile = dm.open_profile(value), self.bucket_profile
            else:
                source, bucket_profile = dm.open_target(value), self.bucket_profile
        except dm.OpenError as exc:
            self.post_message(msg.OpenFailed(str(exc)))
            return
        self.post_message(msg.Opened(source, bucket_profile))
        for i, folder in enumerate(source.directories):

            def progress(done: int, total: int, i: int = i) -> None:
                self.post_message(
                    msg.Status(f"reading folder {i + 1}/{len(source.directories)}: {done}/{total} images…")
                )

            try:
                entries = dm.list_entries(folder, progress)
            except dm.OpenError as exc:
                self.notify(str(exc), severity="error", timeout=8)
                entries = []
            self.post_message(msg.DirListed(folder, entries))
        try:
            dm.save_last(source, bucket_profile)
        except OSError as exc:
            self.notify(f"cannot remember the dataset: {exc}", severity="warning")

    @work(thread=True, group="ds-relist")
    def _relist(self, folders: list[Path]) -> None:
        for folder in folders:
            try:
                entries = dm.list_entries(folder)
            except dm.OpenError as exc:
                self.notify(str(exc), severity="error")
                continue
            self.post_message(msg.DirListed(folder, entries))
        self.post_message(msg.Relisted())

    @work(thread=True, group="ds-profiles")
    def _profile_choice(
        self, title: str, then: Callable[[str], None], extra: list[tuple[str, str]] | None = None
    ) -> None:
        from profiles import store

        choices = (extra or []) + [
            (p.name, f"{p.name}  [{p.model_type or '?'}]") for p in store.list_profiles()
        ]
        self.post_message(msg.ProfilesListed(title, choices, then))

    @work(thread=True, exclusive=True, group="ds-dupes")
    def _find_dupes(self) -> None:
        from engine.datasets.dupes import find_duplicates

        paths = [e.path for entries in list(self.entries.values()) for e in entries]
        try:
            groups = find_duplicates(paths)
        except (OSError, ValueError) as exc:
            self.notify(f"duplicate search failed: {exc}", severity="error")
            return
        self.post_message(msg.DupesFound(dm.dupe_marks(groups), len(groups)))

    @work(thread=True, exclusive=True, group="ds-stats")
    def _stats(self) -> None:
        from engine.datasets.scan import scan
        from tui.widgets.dataset_panels import stats_renderable

        folder = self.folder
        if folder is None:
            return
        self.post_message(msg.StatsPanel(f"scanning {folder}…"))
        try:
            body: Any = stats_renderable(scan(folder), folder)
        except (OSError, ValueError) as exc:
            body = Text(f"cannot scan {folder}: {exc}")
        self.post_message(msg.StatsPanel(body))

    @work(thread=True, exclusive=True, group="ds-buckets")
    def _plan_buckets(self, then_filter: bool = False) -> None:
        from engine.datasets.buckets import DatasetConfigError
        from tui.widgets.dataset_panels import buckets_renderable

        source = self.source
        if source is None:
            return
        self.post_message(msg.BucketsPanel("planning buckets…"))
        try:
            settings = dm.bucket_settings(source, self.bucket_profile)
            view = dm.bucket_view(settings, dict(self.entries))
        except (dm.OpenError, DatasetConfigError, OSError, ValueError, TypeError) as exc:
            self.post_message(msg.BucketsPanel(Text(f"cannot plan buckets: {exc}")))
            return
        self.post_message(msg.BucketsPlanned(view, buckets_renderable(view), then_filter))

    @work(thread=True, exclusive=True, group="ds-write")
    def _save(self, drafts: dict[Path, str]) -> None:
        from engine.datasets import captions as c

        try:
            changes = [ch for image, text in drafts.items() for ch in c.plan_set(image, text)]
            names = ", ".join(p.name for p in list(drafts)[:3]) + ("…" if len(drafts) > 3 else "")
            op_id = c.apply(changes, f"edit caption of {names}")
        except (c.CaptionError, OSError) as exc:
            self.notify(f"not saved: {exc}", severity="error", timeout=10)
            return
        self.post_message(msg.Saved(drafts, op_id))
        if op_id:
            _prune_journal()

    @work(thread=True, exclusive=True, group="ds-write")
    def _dry_run(self, spec: dm.BatchSpec, scope: list[Path]) -> None:
        from engine.datasets import captions as c
        from engine.datasets.names import printable

        try:
            changes, skipped = dm.plan_batch(spec, scope)
        except (c.CaptionError, OSError) as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        # A name may hold a newline or an escape sequence: printed raw it could forge lines of this summary.
        warnings = [printable(f"{ch.path.name}: {ch.warning}") for ch in changes if ch.warning] + [
            printable(s) for s in skipped
        ]
        summary = f"{len(changes)} of {len(scope)} caption(s) would change (dry run; nothing written yet)."
        if warnings:
            summary += (
                "\n"
                + "\n".join(warnings[:5])
                + (f"\n… {len(warnings) - 5} more" if len(warnings) > 5 else "")
            )
        self.post_message(msg.DryRunReady(spec, changes, summary, c.diff(changes)))

    @work(thread=True, exclusive=True, group="ds-write")
    def _apply(self, changes: list[Any], description: str) -> None:
        from engine.datasets import captions as c

        try:
            op_id = c.apply(changes, description)
        except (c.CaptionError, OSError) as exc:
            self.notify(f"not applied: {exc}", severity="error", timeout=10)
            return
        self.post_message(msg.Applied(op_id, len(changes), {ch.path.parent for ch in changes}))
        _prune_journal()

    @work(thread=True, group="ds-undo")
    def _list_ops(self) -> None:
        from engine.datasets.undo import list_ops

        ops = list_ops()[:30]
        choices = [(o["id"], f"{o['id']}  {o['description']}  ({o['files']} file(s))") for o in ops]
        self.post_message(msg.OpsListed(choices))

    @work(thread=True, exclusive=True, group="ds-write")
    def _undo(self, op_id: str) -> None:
        from engine.datasets.undo import UndoError, undo

        try:
            result = undo(op_id)
        except (UndoError, OSError) as exc:
            self.notify(f"undo failed: {exc}", severity="error", timeout=10)
            return
        restored = [Path(p) for p in result["restored"]]
        self.post_message(msg.Undone(result, {p.parent for p in restored}))


def _prune_journal() -> None:
    """Drop undo records beyond `datasets.undo_keep` (on the worker thread, after the result is shown)."""
    from engine.datasets.undo import prune

    with contextlib.suppress(OSError):
        prune()
