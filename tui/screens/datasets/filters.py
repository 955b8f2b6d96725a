"""Filters of the file list (missing captions, duplicates, one bucket; the tag filter is typed on the input
line) and the two report panels: statistics of the folder and the trainer's bucket plan."""

from __future__ import annotations

from textual.widgets import ContentSwitcher, Static

from tui.screens.datasets import messages as msg
from tui.screens.datasets.file_list import FileList
from tui.widgets import dataset_model as dm


class FiltersAndPanels(FileList):
    # Filters.

    def action_filter_missing(self) -> None:
        self.filters.missing = not self.filters.missing
        self._fill()
        self._set_status()

    def action_clear_filters(self) -> None:
        self.filters = dm.Filters()
        self._fill()
        self._set_status()

    def action_filter_dupes(self) -> None:
        if self.filters.dupes:
            self.filters.dupes = False
            self._fill()
            self._set_status()
            return
        if self.dupe_mark is None:
            self._set_status("looking for duplicates…")
            self._find_dupes()
            return
        self.filters.dupes = True
        self._fill()
        self._set_status()

    def on_dupes_found(self, message: msg.DupesFound) -> None:
        self.dupe_mark = message.marks
        self.filters.dupes = True
        self.notify(f"{message.groups} duplicate group(s), {len(message.marks)} image(s) (= exact, ≈ near)")
        self._fill()
        self._set_status()

    def action_filter_bucket(self) -> None:
        if self.filters.bucket is not None:
            self.filters.bucket = None
            self._fill()
            self._set_status()
            return
        if self.buckets is None:
            self.notify("working out the buckets first…")
            self._plan_buckets(then_filter=True)
            return
        self._choose_bucket()

    def _choose_bucket(self) -> None:
        assert self.buckets is not None
        here = {e.path for e in self.entries.get(self.folder, [])} if self.folder else set()
        counts: dict[float, int] = {}
        for path, ar in self.buckets.ar_of.items():
            if path in here:
                counts[ar] = counts.get(ar, 0) + 1
        choices = []
        for ar in sorted(counts):
            sizes = "/".join(f"{b.width}×{b.height}" for b in self.buckets.plan.buckets if b.ar == ar)
            choices.append((repr(ar), f"ar {ar:g}  {sizes}  {counts[ar]} image(s) here"))

        def chosen(value: str) -> None:
            self.filters.bucket = float(value)
            self._fill()
            self._set_status()

        if not choices:
            self.notify("no image of this folder falls in a bucket", severity="warning")
            return
        self._choose("Show only the images of bucket:", choices, chosen)

    # Panels.

    def action_panel(self, panel: str) -> None:
        if self.query_one("#ds-right", ContentSwitcher).current == panel:
            self._switch("ds-view")
            return
        self._switch(panel)
        self.set_focus(self.query_one(f"#{panel}"))
        if panel == "ds-stats":
            self._stats()
        else:
            self._plan_buckets()

    def on_stats_panel(self, message: msg.StatsPanel) -> None:
        self.query_one("#ds-stats-body", Static).update(message.body)

    def on_buckets_panel(self, message: msg.BucketsPanel) -> None:
        self.query_one("#ds-buckets-body", Static).update(message.body)

    def on_buckets_planned(self, message: msg.BucketsPlanned) -> None:
        self.buckets = message.view
        self.query_one("#ds-buckets-body", Static).update(message.body)
        entry = self._entry(self.current)
        if entry is not None:
            self.query_one("#ds-info", Static).update(self._info(entry))
        if message.then_filter:
            self._choose_bucket()

    def action_bucket_profile(self) -> None:
        def chosen(name: str) -> None:
            self.bucket_profile = name or None
            self.buckets = None
            if self.query_one("#ds-right", ContentSwitcher).current == "ds-buckets":
                self._plan_buckets()
            else:
                self.action_panel("ds-buckets")
            if self.source is not None:
                try:
                    dm.save_last(self.source, self.bucket_profile)
                except OSError:
                    pass

        self._profile_choice(
            "Batch settings (micro batch, accumulation) from:", chosen, [("", "the default template")]
        )
