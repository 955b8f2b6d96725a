"""What the Datasets screen shows, without any widgets: which folders a target means, each image's size and
caption state, the filters, the bucket settings, and the remembered last dataset.

Everything here blocks on the disk, so the screen calls it from worker threads only. Folder and file rules come
from engine.datasets (layout, headers, captions) so the screen never disagrees with the trainer or the CLI.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from statefiles.atomic import atomic_write_text
from statefiles.paths import state_dir

LAST_FILE = "datasets-last.json"
SUBDIR_DEPTH = 2  # an opened folder also lists sub-folders this deep that hold images (e6ai/1_e6ai layouts)
PROGRESS_EVERY = 250


class OpenError(ValueError):
    """The path cannot be opened as a dataset; the message names the path and what is expected."""


@dataclass
class DatasetSource:
    """An opened dataset: a folder, a dataset TOML, or a stored profile's dataset TOML."""

    target: Path
    kind: Literal["folder", "toml", "profile"]
    directories: list[Path]
    toml_data: dict[str, Any] | None = None  # the dataset TOML's content (None for a plain folder)
    toml_base: Path | None = None  # relative [[directory]] paths resolve against this
    profile: str | None = None  # the stored profile it came from

    @property
    def label(self) -> str:
        if self.kind == "profile":
            return f"profile {self.profile} ({self.target})"
        return str(self.target)


def _has_images(folder: Path) -> bool:
    from engine.datasets.items import IMAGE_EXTENSIONS, entry_is_file

    try:
        with os.scandir(folder) as it:
            return any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in it if entry_is_file(e))
    except OSError:
        return False


def image_folders(folder: Path, depth: int = SUBDIR_DEPTH) -> list[Path]:
    """The folder (when it holds images) and its sub-folders holding images, `depth` levels down."""
    from engine.datasets.items import entry_is_dir

    found: list[Path] = [folder] if _has_images(folder) else []
    if depth > 0:
        try:
            subs = sorted(e.path for e in os.scandir(folder) if entry_is_dir(e) and not e.name.startswith("."))
        except OSError:
            subs = []
        for sub in subs:
            found.extend(image_folders(Path(sub), depth - 1))
    return found


def open_target(text: str, cwd: Path | None = None) -> DatasetSource:
    """A folder or a dataset TOML typed by the user (`~` and relative paths allowed)."""
    raw = text.strip()
    if not raw:
        raise OpenError("type a folder or a dataset .toml path")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    path = Path(os.path.normpath(path))
    if not path.exists():
        raise OpenError(f"{path}: not found")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise OpenError(f"{path}: folder is not readable")
        return DatasetSource(path, "folder", image_folders(path) or [path])
    if path.suffix.lower() != ".toml":
        raise OpenError(f"{path}: expected a folder or a dataset .toml file")
    return _from_toml(path, "toml", None)


def _from_toml(path: Path, kind: Literal["toml", "profile"], profile: str | None) -> DatasetSource:
    from engine.datasets.layout import dataset_dirs
    from profiles.document import TomlFile
    from profiles.errors import ProfileError

    try:
        data = TomlFile.load(path).data()
    except (ProfileError, OSError) as exc:
        raise OpenError(str(exc)) from exc
    dirs = [spec.path for spec in dataset_dirs(data, path.parent)]
    if not dirs:
        raise OpenError(f"{path}: no [[directory]] entry with a path (expected [[directory]] path = '...')")
    return DatasetSource(path, kind, dirs, data, path.parent, profile)


def open_profile(name: str) -> DatasetSource:
    """The dataset TOML of a stored profile (its `dataset` key)."""
    from profiles import store
    from profiles.errors import ProfileError

    try:
        profile = store.load_stored(name)
    except ProfileError as exc:
        raise OpenError(str(exc)) from exc
    if profile.dataset is None or profile.dataset.path is None:
        raise OpenError(f"profile {name}: its dataset file ({profile.dataset_ref!r}) was not found")
    return _from_toml(profile.dataset.path, "profile", name)


# Images and captions.


@dataclass
class Entry:
    """One image of a folder, as the file list shows it."""

    path: Path
    width: int | None = None
    height: int | None = None
    caption: str | None = None  # None: no caption anywhere
    source: Literal["txt", "json", "none"] = "none"
    error: str | None = None  # unreadable image or caption

    @property
    def state(self) -> Literal["ok", "empty", "missing"]:
        if self.caption is None:
            return "missing"
        return "ok" if self.caption.strip() else "empty"

    @property
    def size_text(self) -> str:
        return f"{self.width}x{self.height}" if self.width else "broken"

    def tags(self) -> list[str]:
        from engine.datasets.captions import split_tags

        return split_tags(self.caption or "")


def _json_captions(folder: Path) -> dict[str, str]:
    from engine.datasets.items import load_captions_json

    loaded = load_captions_json(folder, []) or {}  # the scan reports its problems; the list shows captions
    # The trainer makes one example per string; the first stands for them.
    return {name: captions[0] for name, captions in loaded.items() if captions}


def read_caption(image: Path) -> tuple[str | None, str | None]:
    """(caption text of `<stem>.txt` or None when there is none, warning)."""
    from engine.datasets.captions import decode_caption

    txt = image.with_suffix(".txt")
    try:
        data = txt.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{txt.name}: {exc}"
    return decode_caption(data)


def list_entries(folder: Path, progress: Callable[[int, int], None] | None = None) -> list[Entry]:
    """Every image of `folder` (non-recursive, the trainer's rules) with its header size and caption."""
    from engine.datasets.headers import read_image_size
    from engine.datasets.layout import list_dir

    try:
        listing = list_dir(folder)
    except OSError as exc:
        raise OpenError(f"{folder}: cannot list the folder ({exc})") from exc
    from_json = _json_captions(folder) if listing.has_captions_json else {}
    out: list[Entry] = []
    total = len(listing.images)
    for i, name in enumerate(listing.images):
        path = folder / name
        entry = Entry(path)
        try:
            entry.width, entry.height = read_image_size(path)
        except Exception as exc:  # any broken file is a row saying so, never a failed listing
            entry.error = f"unreadable image ({exc.__class__.__name__})"
        stem_txt = os.path.splitext(name)[0] + ".txt"
        if stem_txt in listing.captions:
            entry.caption, warning = read_caption(path)
            entry.source = "txt" if entry.caption is not None else "none"
            entry.error = entry.error or warning
        elif name in from_json:
            entry.caption, entry.source = from_json[name], "json"
        out.append(entry)
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0:
            progress(i + 1, total)
    return out


# Filters.


@dataclass
class Filters:
    missing: bool = False  # missing or empty caption
    tag: str = ""  # a tag containing this text (case-insensitive)
    bucket: float | None = None  # the aspect-ratio bucket (its ar)
    dupes: bool = False  # in an exact or near duplicate group

    def active(self) -> bool:
        return self.missing or bool(self.tag) or self.bucket is not None or self.dupes

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing/empty caption")
        if self.tag:
            parts.append(f"tag ~ {self.tag!r}")
        if self.bucket is not None:
            parts.append(f"bucket ar {self.bucket:g}")
        if self.dupes:
            parts.append("duplicates")
        return ", ".join(parts) or "none"


def filter_entries(
    entries: list[Entry], filters: Filters, ar_of: Mapping[Path, float], dupe_mark: Mapping[Path, str]
) -> list[Entry]:
    needle = filters.tag.strip().lower()
    out = []
    for e in entries:
        if filters.missing and e.state == "ok":
            continue
        if needle and not (
            needle in (e.caption or "").lower()  # a tag holds it: without a comma it cannot span two tags
            if "," not in needle
            else any(needle in t.lower() for t in e.tags())
        ):
            continue
        if filters.bucket is not None and ar_of.get(e.path) != filters.bucket:
            continue
        if filters.dupes and e.path not in dupe_mark:
            continue
        out.append(e)
    return out


def dupe_marks(groups: list[Any]) -> dict[Path, str]:
    """`=` for an exact copy, `≈` for a near one (exact wins when a file is both)."""
    marks: dict[Path, str] = {}
    for g in groups:
        for p in g.paths:
            if marks.get(Path(p)) != "=":
                marks[Path(p)] = "=" if g.kind == "exact" else "≈"
    return marks


# Batch operations.

OPS: list[tuple[str, str]] = [
    ("trigger", "add trigger word (first tag, not twice)"),
    ("prefix", "add a literal prefix"),
    ("remove", "remove a tag (exact, or a full-match regex)"),
    ("replace", "replace a tag"),
    ("dedupe", "remove repeated tags"),
    ("sort", "sort tags (optionally keep the first N)"),
    ("strip", "strip whitespace"),
    ("lowercase", "lowercase"),
    ("create", "create empty captions for images without one"),
]
# op -> the labels of the text fields it needs
OP_FIELDS: dict[str, list[str]] = {
    "trigger": ["trigger word"],
    "prefix": ["prefix (written as is, e.g. 'by e6ai, ')"],
    "remove": ["tag (or regex)"],
    "replace": ["old tag", "new tag"],
    "sort": ["keep the first N tags in place (empty = 0)"],
}


@dataclass
class BatchSpec:
    op: str
    args: list[str] = field(default_factory=list)
    regex: bool = False

    def describe(self) -> str:
        a = self.args
        return {
            "trigger": lambda: f"add trigger {a[0]!r}",
            "prefix": lambda: f"add prefix {a[0]!r}",
            "remove": lambda: f"remove tag {a[0]!r}" + (" (regex)" if self.regex else ""),
            "replace": lambda: f"replace tag {a[0]!r} -> {a[1]!r}",
            "dedupe": lambda: "dedupe tags",
            "sort": lambda: "sort tags" + (f" (keep {a[0]})" if a and a[0].strip() else ""),
            "strip": lambda: "strip whitespace",
            "lowercase": lambda: "lowercase",
            "create": lambda: "create missing captions",
        }[self.op]()


def caption_op(spec: BatchSpec) -> Callable[[str], str] | None:
    """The engine op for `spec` (None for `create`); raises CaptionError for bad arguments (bad regex, ...)."""
    from engine.datasets import captions as c

    a = spec.args
    if spec.op == "trigger":
        return c.add_trigger(a[0])
    if spec.op == "prefix":
        return c.add_prefix(a[0])
    if spec.op == "remove":
        if not a[0].strip():
            raise c.CaptionError("tag: empty; type the tag (or regex) to remove")
        return c.remove_tag(a[0], spec.regex)
    if spec.op == "replace":
        if not a[0].strip() or not a[1].strip():
            raise c.CaptionError("old and new tag: both are required")
        return c.replace_tag(a[0], a[1])
    if spec.op == "sort":
        keep = a[0].strip() if a else ""
        if keep and not keep.isdigit():
            raise c.CaptionError(f"keep: expected a whole number >= 0, found {keep!r}")
        return c.sort_tags(int(keep or 0))
    if spec.op == "create":
        return None
    return {"dedupe": c.dedupe, "strip": c.strip, "lowercase": c.lowercase}[spec.op]()


def check_spec(spec: BatchSpec) -> str | None:
    """Why `spec` cannot run (shown in the dialog), or None."""
    from engine.datasets.captions import CaptionError

    try:
        caption_op(spec)
    except CaptionError as exc:
        return str(exc)
    if spec.regex and spec.op == "remove":
        try:
            re.compile(spec.args[0])
        except re.error as exc:  # the engine says so too; kept for a message naming the field
            return f"bad regex {spec.args[0]!r}: {exc}"
    return None


def plan_batch(spec: BatchSpec, scope: list[Path] | Path) -> tuple[list[Any], list[str]]:
    """(changes, skipped notes) for `spec` over a folder or a selection of images."""
    from engine.datasets import captions as c

    skipped: list[str] = []
    if spec.op == "create":
        return c.plan_create_missing(scope), skipped
    op = caption_op(spec)
    assert op is not None
    return c.plan(scope, op, skipped), skipped


# Buckets.


@dataclass
class BucketSettings:
    """Where the bucket panel's numbers come from: dataset settings + the batch of a profile or template."""

    label: str
    toml_data: dict[str, Any]
    base_dir: Path
    batches: Any  # engine.datasets.buckets.GlobalBatches, as `dpdeck dataset buckets` resolves it
    # From the same profile, as `dpdeck dataset buckets` resolves them (engine.datasets.framerate.bucket_rules).
    framerate: int | None = None
    round_to: int = 16
    backend: str = "builtin"  # whose example rules count (engine.datasets.buckets.BACKEND_RULES)

    def batch_text(self) -> str:
        """`4 = micro 4 × accumulation 1 × 1 GPU`, or the per-size table train.py reads."""
        b = self.batches
        factor = f"accumulation {b.accumulation} × {b.data_parallel} GPU"
        if list(b.by_size) == [None]:
            total = b.by_size[None]
            return f"global batch {total} = micro {total // (b.accumulation * b.data_parallel)} × {factor}"
        sizes = ", ".join(f"{size:g}: {batch}" for size, batch in b.by_size.items())
        return f"global batch by size {{{sizes}}} (micro × {factor})"


def bucket_settings(source: DatasetSource, profile: str | None) -> BucketSettings:
    """A stored profile's (or else the default template's) batch settings applied to the open dataset.

    A dataset TOML keeps its own resolutions and buckets; a plain folder borrows them from the profile's dataset
    TOML, with the folder(s) in place of its [[directory]] entries (keeping the first entry's repeats etc.).
    """
    from engine.datasets.buckets import DatasetConfigError, global_batches
    from engine.datasets.framerate import bucket_rules, preview_backend
    from profiles import store, templates
    from profiles.errors import ProfileError

    name = profile or source.profile
    try:
        if name:
            prof, label = store.load_stored(name), f"profile {name}"
        else:
            default = templates.default_template().name
            prof, label = templates.load_template(default), f"template {default} (P: pick a profile)"
    except ProfileError as exc:
        raise OpenError(str(exc)) from exc
    try:
        batches = global_batches(prof.main.data())
    except DatasetConfigError as exc:
        raise OpenError(f"{label}: {exc}") from exc
    framerate, round_to = bucket_rules(prof)
    backend = preview_backend(prof)
    if source.toml_data is not None and source.toml_base is not None:
        return BucketSettings(
            label, source.toml_data, source.toml_base, batches, framerate=framerate, round_to=round_to,
            backend=backend,
        )
    data = folder_dataset(prof, label, source.directories)
    return BucketSettings(
        label, data, source.target, batches, framerate=framerate, round_to=round_to, backend=backend
    )


def folder_dataset(prof: Any, label: str, directories: list[Path]) -> dict[str, Any]:
    """A plain folder as a dataset TOML: the profile's resolutions and buckets, the folder(s) in place of its
    [[directory]] entries (keeping the first entry's repeats etc.). `prof` is a profiles Profile; the Datasets
    screen and `dpdeck dataset buckets FOLDER` both count this way."""
    if prof.dataset is None:
        raise OpenError(f"{label}: has no dataset TOML to take resolutions and buckets from")
    data = dict(prof.dataset.data())
    first = (data.get("directory") or [{}])[0]
    keep = {k: v for k, v in first.items() if k != "path"} if isinstance(first, Mapping) else {}
    data["directory"] = [{**keep, "path": str(d)} for d in directories]
    return data


@dataclass
class BucketView:
    plan: Any  # engine.datasets.buckets.BucketPlan
    settings: BucketSettings
    ar_of: dict[Path, float]  # each image's aspect bucket (the filter uses it)


def bucket_view(settings: BucketSettings, entries: Mapping[Path, list[Entry]]) -> BucketView:
    """plan_buckets (the trainer's own) plus each listed image's aspect bucket, from the same settings."""
    from engine.datasets import buckets as b
    from engine.datasets.layout import dataset_dirs

    plan = b.plan_buckets(
        settings.toml_data,
        settings.base_dir,
        settings.batches.by_size,
        global_batch_image=settings.batches.image_by_size,
        framerate=settings.framerate,
        round_to=settings.round_to,
        backend=settings.backend,
    )
    ar_of: dict[Path, float] = {}
    for index, (spec, raw) in enumerate(
        zip(
            dataset_dirs(settings.toml_data, settings.base_dir), settings.toml_data["directory"], strict=False
        )
    ):
        cfg = {k: settings.toml_data[k] for k in b.DIRECTORY_KEYS if k in settings.toml_data}
        cfg.update({k: raw[k] for k in b.DIRECTORY_KEYS if k in raw})
        ars = b.ar_bucket_list(cfg, f"dataset: directory[{index}]")
        for e in entries.get(spec.path, []):
            if e.width and e.height:
                ar_of[e.path] = b.closest_ar(e.width, e.height, ars)
    return BucketView(plan, settings, ar_of)


# The remembered dataset.


def load_last() -> dict[str, Any]:
    try:
        data = json.loads((state_dir() / LAST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_last(source: DatasetSource, bucket_profile: str | None) -> None:
    data = {"kind": source.kind, "target": str(source.target), "profile": source.profile}
    if bucket_profile:
        data["bucket_profile"] = bucket_profile
    atomic_write_text(state_dir() / LAST_FILE, json.dumps(data, indent=1))


def reopen_last(cwd: Path | None = None) -> tuple[DatasetSource, str | None]:
    """The dataset open last time (and the profile chosen for buckets), else the current folder."""
    last = load_last()
    bucket_profile = last.get("bucket_profile") if isinstance(last.get("bucket_profile"), str) else None
    try:
        if last.get("kind") == "profile" and isinstance(last.get("profile"), str):
            return open_profile(last["profile"]), bucket_profile
        if isinstance(last.get("target"), str):
            return open_target(last["target"], cwd), bucket_profile
    except OpenError:
        pass  # moved or deleted since: fall back to where the deck was started
    return open_target(str(cwd or Path.cwd())), None
