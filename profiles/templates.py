"""Built-in profile templates shipped inside the package, their metadata and per-key help text.

The metadata lives in `templates/index.toml` (data, not code); each template is a folder holding
`main.toml` + `dataset.toml`. Keys of the dataset file are written `dataset:<key path>` in `essential`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from profiles.document import Profile, TomlFile
from profiles.errors import ProfileError, ProfileNotFound
from statefiles import toml

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
INDEX = TEMPLATES_DIR / "index.toml"
DATASET_PREFIX = "dataset:"
_INDEX_RE = re.compile(r"\[\d+\]")


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    description: str
    model_type: str
    backend: str  # "diffusion-pipe" or "builtin"
    essential: list[str]  # key paths Easy mode shows; `dataset:<key>` for dataset-file keys
    default: bool = False

    @property
    def folder(self) -> Path:
        return TEMPLATES_DIR / self.name

    def essential_for(self, file: str) -> list[str]:
        """Essential key paths of one file: "main" or "dataset" (without the `dataset:` prefix)."""
        if file == "dataset":
            return [k[len(DATASET_PREFIX) :] for k in self.essential if k.startswith(DATASET_PREFIX)]
        return [k for k in self.essential if not k.startswith(DATASET_PREFIX)]

    def is_essential(self, keypath: str, file: str = "main") -> bool:
        return keypath in self.essential_for(file)


@lru_cache(maxsize=1)
def _index() -> dict[str, Any]:
    # Read-only data: the fast parser keeps `dpdeck profile templates` quick.
    try:
        return toml.load_file(INDEX)
    except (OSError, ValueError) as exc:
        raise ProfileError(
            f"{INDEX}: the built-in template index is unreadable ({exc}); reinstall dpdeck"
        ) from exc


def list_templates() -> list[TemplateInfo]:
    """All built-in templates, in the index's order (the default one first in the file)."""
    infos = []
    for entry in _index().get("template", []):
        infos.append(
            TemplateInfo(
                name=str(entry["name"]),
                description=str(entry.get("description", "")),
                model_type=str(entry["model_type"]),
                backend=str(entry.get("backend", "diffusion-pipe")),
                essential=[str(k) for k in entry.get("essential", [])],
                default=bool(entry.get("default", False)),
            )
        )
    return infos


def default_template() -> TemplateInfo:
    infos = list_templates()
    return next((i for i in infos if i.default), infos[0])


def get_template(name: str) -> TemplateInfo:
    for info in list_templates():
        if info.name == name:
            return info
    import difflib

    known = [i.name for i in list_templates()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"did you mean: {', '.join(close)}?" if close else f"templates: {', '.join(known)}"
    raise ProfileNotFound(f"no built-in template named {name!r}; {hint}")


def load_template(name: str) -> Profile:
    """A fresh copy of a template (main + dataset TOML, comments kept); edit it freely."""
    info = get_template(name)
    main_path = info.folder / "main.toml"
    dataset_path = info.folder / "dataset.toml"
    main = TomlFile.load(main_path)
    dataset = TomlFile.load(dataset_path) if dataset_path.is_file() else None
    return Profile(main=main, dataset=dataset, name=name)


def template_texts(name: str) -> dict[str, str]:
    """The template's files as text: {"main.toml": ..., "dataset.toml": ...}."""
    info = get_template(name)
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(info.folder.glob("*.toml"))}


def normalize_keypath(keypath: str) -> str:
    """`dataset:directory[0].path` -> `directory.path`: the form help texts are stored under."""
    if keypath.startswith(DATASET_PREFIX):
        keypath = keypath[len(DATASET_PREFIX) :]
    return _INDEX_RE.sub("", keypath)


def field_help(keypath: str) -> str:
    """One plain-language line about a key, or "" when there is none.

    Accepts `model.transformer_path`, `directory[0].path`, `dataset:resolutions`, `optimizer.betas[1]`.
    """
    helps: dict[str, str] = _index().get("help", {})
    key = normalize_keypath(keypath)
    if key in helps:
        return helps[key]
    # A per-directory override falls back to the top-level key's help (directory.shuffle_tags -> shuffle_tags).
    if key.startswith("directory."):
        return helps.get(key[len("directory.") :], "")
    return ""


def help_table() -> dict[str, str]:
    """Every help line, keyed by normalized key path."""
    return dict(_index().get("help", {}))
