"""What the Datasets screen's worker threads tell it: one typed message per result, posted with `post_message`
(safe from any thread) and handled on the screen's own loop by the matching `on_...` method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from textual.message import Message

from tui.widgets import dataset_model as dm


class DatasetsMessage(Message):
    """Every message a Datasets worker posts. None bubbles: the screen that started the worker handles it,
    the app has nothing to do with it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        kwargs.setdefault("bubble", False)  # Message sets it again for every subclass
        super().__init_subclass__(**kwargs)


class Opened(DatasetsMessage):
    """A folder, dataset TOML or profile's dataset was resolved; its folders are listed next."""

    def __init__(self, source: dm.DatasetSource, bucket_profile: str | None) -> None:
        super().__init__()
        self.source = source
        self.bucket_profile = bucket_profile


class OpenFailed(DatasetsMessage):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class DirListed(DatasetsMessage):
    """One folder's images with their caption state (after an open, a write or a rescan)."""

    def __init__(self, folder: Path, entries: list[dm.Entry]) -> None:
        super().__init__()
        self.folder = folder
        self.entries = entries


class Relisted(DatasetsMessage):
    """Every folder of a re-read after a write is listed again."""


class Status(DatasetsMessage):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ProfilesListed(DatasetsMessage):
    """Stored profiles to choose from; `then` gets the chosen name."""

    def __init__(self, title: str, choices: list[tuple[str, str]], then: Callable[[str], None]) -> None:
        super().__init__()
        self.title = title
        self.choices = choices
        self.then = then


class DupesFound(DatasetsMessage):
    def __init__(self, marks: dict[Path, str], groups: int) -> None:
        super().__init__()
        self.marks = marks
        self.groups = groups


class StatsPanel(DatasetsMessage):
    """What the statistics panel shows: a progress line, the report, or why there is none."""

    def __init__(self, body: RenderableType) -> None:
        super().__init__()
        self.body = body


class BucketsPanel(DatasetsMessage):
    """A progress line or an error for the buckets panel (a plan comes as BucketsPlanned)."""

    def __init__(self, body: RenderableType) -> None:
        super().__init__()
        self.body = body


class BucketsPlanned(DatasetsMessage):
    def __init__(self, view: dm.BucketView, body: RenderableType, then_filter: bool) -> None:
        super().__init__()
        self.view = view
        self.body = body
        self.then_filter = then_filter  # the plan was made for the bucket filter: offer its choice next


class DryRunReady(DatasetsMessage):
    """A batch operation's planned changes, shown for confirmation before anything is written."""

    def __init__(self, spec: dm.BatchSpec, changes: list[Any], summary: str, diff: str) -> None:
        super().__init__()
        self.spec = spec
        self.changes = changes
        self.summary = summary
        self.diff = diff


class Applied(DatasetsMessage):
    def __init__(self, op_id: str | None, count: int, folders: set[Path]) -> None:
        super().__init__()
        self.op_id = op_id
        self.count = count
        self.folders = folders


class Saved(DatasetsMessage):
    """Edited captions written as one undoable operation (`op_id` is None when nothing changed on disk)."""

    def __init__(self, drafts: dict[Path, str], op_id: str | None) -> None:
        super().__init__()
        self.drafts = drafts
        self.op_id = op_id


class OpsListed(DatasetsMessage):
    """The undo journal, newest first, as (op id, label) choices."""

    def __init__(self, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.choices = choices


class Undone(DatasetsMessage):
    def __init__(self, result: dict[str, Any], folders: set[Path]) -> None:
        super().__init__()
        self.result = result
        self.folders = folders
