"""The shipped registry of known base models (registry.json beside this file) and their local status."""

from __future__ import annotations

import fnmatch
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from engine.models.errors import RegistryError, UnknownEntry
from engine.models.settings import hf_cache_dir, models_dir, repo_dirname


class Component(BaseModel):
    """One profile key's worth of weights: a single file, or a folder (a set of repo files)."""

    key: str
    repo: str | None
    kind: Literal["file", "folder"]
    file: str | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    check: list[str] = Field(default_factory=list)
    revision: str = "main"
    approx_gb: float | None = None
    sha256: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> Component:
        if self.kind == "file" and not self.file:
            raise ValueError(f"component {self.key}: kind 'file' needs 'file'")
        if self.kind == "folder" and not self.include:
            raise ValueError(f"component {self.key}: kind 'folder' needs 'include' patterns")
        return self

    def wants(self, path: str) -> bool:
        """Is this repo file part of the component?"""
        if self.kind == "file":
            return path == self.file
        if any(fnmatch.fnmatch(path, p) for p in self.exclude):
            return False
        return any(fnmatch.fnmatch(path, p) for p in self.include)

    def local_path(self, root: Path | None = None) -> Path:
        """Where dpdeck puts (and first looks for) this component."""
        root = root or models_dir()
        base = root / repo_dirname(self.repo or "local")
        return base / self.file if self.kind == "file" and self.file else base


class Entry(BaseModel):
    id: str
    title: str
    model_type: str
    licence: str
    gated: bool | None = None
    notes: str = ""
    components: list[Component]

    @property
    def approx_gb(self) -> float:
        return round(sum(c.approx_gb or 0 for c in self.components), 1)


class Registry(BaseModel):
    version: int
    entries: list[Entry]

    def get(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        close = [e.id for e in self.entries if entry_id.lower() in e.id.lower()]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `dpdeck models list` shows them"
        raise UnknownEntry(f"no registry entry named {entry_id!r}{hint}")

    def for_type(self, model_type: str) -> list[Entry]:
        return [e for e in self.entries if e.model_type == model_type]


def parse_registry(text: str, source: str = "registry.json") -> Registry:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    try:
        reg = Registry.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RegistryError(f"{source}: {where}: {first['msg']}") from exc
    ids = [e.id for e in reg.entries]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RegistryError(f"{source}: duplicate entry ids: {', '.join(sorted(dupes))}")
    return reg


@lru_cache(maxsize=1)
def load_registry() -> Registry:
    text = resources.files("engine.models").joinpath("registry.json").read_text(encoding="utf-8")
    return parse_registry(text)


# ---- local status --------------------------------------------------------------------------------

Status = Literal["present", "partial", "missing", "manual"]


def _hf_cache_snapshots(repo: str) -> list[Path]:
    snaps = hf_cache_dir() / f"models--{repo_dirname(repo)}" / "snapshots"
    try:
        return sorted(p for p in snaps.iterdir() if p.is_dir())
    except OSError:
        return []


def component_candidates(comp: Component) -> list[Path]:
    """Places this component may already be: dpdeck's folder, then any Hub-cache snapshot of the repo."""
    out = [comp.local_path()]
    if comp.repo:
        for snap in _hf_cache_snapshots(comp.repo):
            out.append(snap / comp.file if comp.kind == "file" and comp.file else snap)
    return out


def _part_exists(path: Path) -> bool:
    folder = path if path.is_dir() else path.parent
    try:
        return any(p.name.endswith(".dpdeck-part") for p in folder.rglob(".*.dpdeck-part"))
    except OSError:
        return False


def component_status(comp: Component) -> tuple[Status, Path | None]:
    """present (with where), partial (some files or an unfinished download), or missing."""
    partial_at: Path | None = None
    for cand in component_candidates(comp):
        if comp.kind == "file":
            if cand.is_file():
                return "present", cand
            if cand.parent.is_dir() and (cand.parent / f".{cand.name}.dpdeck-part").exists():
                partial_at = cand
        else:
            if not cand.is_dir():
                continue
            checks = comp.check or ["model_index.json"]
            have = [c for c in checks if (cand / c).exists()]
            if len(have) == len(checks) and not _part_exists(cand):
                return "present", cand
            if have or _part_exists(cand):
                partial_at = cand
    if partial_at is not None:
        return "partial", partial_at
    return ("manual" if comp.repo is None else "missing"), None


def entry_status(entry: Entry) -> Status:
    states = [component_status(c)[0] for c in entry.components]
    if all(s == "present" for s in states):
        return "present"
    if any(s in ("present", "partial") for s in states):
        return "partial"
    if any(s == "manual" for s in states):
        return "manual"
    return "missing"
