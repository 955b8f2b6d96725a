"""Which folders a dataset target means and which files in a folder count, by diffusion-pipe's rules.

A target is a folder, or a dataset TOML whose `[[directory]]` entries name folders (relative paths resolve
against the TOML's folder, as everywhere in dpdeck). Folders are read non-recursively. Scan, duplicate search,
caption ops and image ops all list folders through here so they can never disagree about what an image is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.datasets.items import (
    CAPTIONS_JSON,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    entry_is_file,
    symlink_problem,
)

# Files diffusion-pipe itself skips in a dataset folder (besides sub-folders).
SIDECAR_EXTENSIONS = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})


@dataclass(frozen=True)
class DirSpec:
    """One dataset folder and its optional mask folder (diffusion-pipe's per-directory `mask_path`)."""

    path: Path
    mask_path: Path | None = None


@dataclass
class Listing:
    """The plain files of one folder, sorted by name and split by role."""

    directory: Path
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    # Every *.txt name (a caption when an image shares its stem).
    captions: set[str] = field(default_factory=set)
    # Files diffusion-pipe would try to load as media but dpdeck does not know.
    others: list[str] = field(default_factory=list)
    links_outside: list[str] = field(default_factory=list)  # symlinks whose target lies outside the folder
    # Symlinks leading to no file or folder (a loop, a missing target): name -> why; training skips them.
    broken_links: dict[str, str] = field(default_factory=dict)
    has_captions_json: bool = False


class DatasetTargetError(ValueError):
    """The target is neither a folder nor a dataset TOML with folders; the message says which."""


def _resolve(raw: str, base_dir: Path) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base_dir / p


def dataset_dirs(toml_data: Mapping[str, Any], base_dir: Path) -> list[DirSpec]:
    out = []
    for entry in toml_data.get("directory") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str):
            mask = entry.get("mask_path")
            out.append(
                DirSpec(
                    _resolve(entry["path"], base_dir),
                    _resolve(mask, base_dir) if isinstance(mask, str) else None,
                )
            )
    return out


def target_dirs(target: Path | str) -> list[DirSpec]:
    """The folders of a dataset target (a folder, or a dataset TOML's `[[directory]]` entries)."""
    target = Path(target)
    if target.is_dir():
        return [DirSpec(target)]
    if target.is_file() and target.suffix.lower() == ".toml":
        from profiles.document import TomlFile

        dirs = dataset_dirs(TomlFile.load(target).data(), target.parent)
        if not dirs:
            raise DatasetTargetError(f"{target}: no [[directory]] entry with a path")
        return dirs
    problem = symlink_problem(str(target)) if target.is_symlink() else None
    why = f"{problem}; " if problem else ""
    raise DatasetTargetError(f"{target}: {why}not a folder or a dataset .toml file")


def folder_problem(path: Path) -> str:
    """Why `path` is not a folder that can be scanned: a symlink loop, missing, or something else."""
    if path.is_symlink():
        problem = symlink_problem(str(path))
        if problem:
            return problem
    return "does not exist" if not os.path.lexists(path) else "not a directory"


def is_outside(directory: Path, name: str) -> bool:
    """True when `directory/name` is a symlink whose final target is not inside `directory`."""
    path = directory / name
    if not path.is_symlink():
        return False
    try:
        real = path.resolve(strict=False)
        return not real.is_relative_to(directory.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return True


def list_dir(directory: Path) -> Listing:
    """Non-recursive listing; raises OSError when the folder cannot be read."""
    out = Listing(directory)
    names = []
    links = []
    with os.scandir(directory) as it:  # d_type answers is_file/is_symlink: no stat per entry
        for entry in it:
            if entry_is_file(entry):
                names.append(entry.name)
                if entry.is_symlink():
                    links.append(entry.name)
            elif entry.is_symlink():
                problem = symlink_problem(entry.path)
                if problem:
                    out.broken_links[entry.name] = problem
    names.sort()
    out.links_outside = sorted(n for n in links if is_outside(directory, n))
    for name in names:
        ext = _extension(name)
        if ext in IMAGE_EXTENSIONS:
            out.images.append(name)
        elif ext in VIDEO_EXTENSIONS:
            out.videos.append(name)
        elif ext == ".txt":
            out.captions.add(name)
        elif name == CAPTIONS_JSON:
            out.has_captions_json = True
        elif ext not in SIDECAR_EXTENSIONS and not name.startswith("."):
            out.others.append(name)
    return out


def _extension(name: str) -> str:
    """os.path.splitext(name)[1].lower() (leading dots are not an extension), at a third of its cost."""
    dot = name.rfind(".")
    if dot <= 0 or (name[0] == "." and not name[:dot].strip(".")):
        return ""
    return name[dot:].lower()


def image_paths(target: Path | str) -> list[Path]:
    """Every image file of a dataset target, folder by folder."""
    return [spec.path / n for spec in target_dirs(target) for n in list_dir(spec.path).images]
