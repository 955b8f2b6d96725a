""""Use in profile": point a profile's [model] keys at a registry entry or a file on disk, and check which
model files a profile needs that are missing (and which registry entry would provide them).

Edits go through TomlFile.set, so only the changed lines differ; the caller saves (atomically).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.models.discovery import inspect_file, inspect_folder
from engine.models.errors import HeaderError, ModelsError
from engine.models.registry import Entry, component_status, load_registry
from profiles import model_types as mt
from profiles.document import Profile, TomlFile

PathKind = Literal["file", "dir", "any"]
_KIND: dict[str, PathKind] = {"file": "file", "folder": "dir", "any": "any"}


def _layouts(model_type: str) -> list[dict[str, PathKind]]:
    """The path keys of each layout a type accepts (either backend's), from profiles.model_types: one table."""
    spec = mt.get_spec(model_type)
    if spec is None:
        return []
    alternatives = dict.fromkeys((*spec.requires, *(spec.builtin_requires or ())))
    return [{k: _KIND[spec.paths[k]] for k in alt if k in spec.paths} for alt in alternatives]


def _optional_paths(model_type: str) -> dict[str, PathKind]:
    """Path keys no layout requires that, when set, must exist too (flux transformer_path, wan llm_path...)."""
    spec = mt.get_spec(model_type)
    if spec is None:
        return {}
    required = {k for alt in (*spec.requires, *(spec.builtin_requires or ())) for k in alt}
    return {k: _KIND[kind] for k, kind in spec.paths.items() if k not in required}


@dataclass
class Change:
    key: str
    old: object
    new: object


@dataclass
class ModelFileIssue:
    """One model path a profile needs that is not usable, with the entries that can provide it."""

    key: str  # model.<name>
    path: str | None
    problem: str  # unset | missing | not_a_file | not_a_dir | bad_header | wrong_family
    message: str
    provided_by: list[str] = field(default_factory=list)  # registry entry ids
    line: int | None = None


def _main(profile: Profile | TomlFile) -> TomlFile:
    return profile.main if isinstance(profile, Profile) else profile


def _set_type(main: TomlFile, model_type: str, force: bool, changes: list[Change]) -> None:
    current = main.get("model.type")
    if current == model_type:
        return
    if current and not force:
        raise ModelsError(f"the profile trains model.type = {current!r} but this is a {model_type!r} model; "
                          "pick a matching entry or file (or --force to switch the profile's type)")
    changes.append(Change("model.type", current, model_type))
    main.set("model.type", model_type)


def use_entry(profile: Profile | TomlFile, entry: Entry, *, force: bool = False) -> list[Change]:
    """Fill every [model] key the entry provides, with the path where each component is (or will be)."""
    main = _main(profile)
    changes: list[Change] = []
    _set_type(main, entry.model_type, force, changes)
    for comp in entry.components:
        status, where = component_status(comp)
        if comp.repo is None and where is None:
            continue  # a manual download: leave the user's own path alone
        path = str(where or comp.local_path())
        key = f"model.{comp.key}"
        old = main.get(key)
        if old != path:
            main.set(key, path)
            changes.append(Change(key, old, path))
    return changes


# Which [model] key a single file goes to, by what it is.
_TEXT_ENCODER_KEY = {
    "lumina_2": "llm_path", "wan": "llm_path", "hunyuan-video": "llm_path", "qwen_image": "text_encoder_path",
    "auraflow": "text_encoder_path", "cosmos": "text_encoder_path", "cosmos_predict2": "t5_path",
    "hunyuan_image": "text_encoder_path",
}


def key_for(path: Path, profile_type: str | None) -> tuple[str, str | None, str]:
    """(model key, model type it implies or None, what it is) for a file or folder on disk."""
    if path.is_dir():
        found = inspect_folder(path)
        if found is None:
            raise ModelsError(f"{path}: a folder, but not a diffusers folder (no model_index.json) nor a known "
                              "checkpoint folder; give a .safetensors file or a diffusers folder")
        key = "ckpt_path" if found.kind == "ckpt_folder" else "diffusers_path"
        return key, found.family, f"{found.kind} folder ({found.variant or found.family})"
    if not path.exists():
        raise ModelsError(f"{path}: no such file or folder")
    item = inspect_file(path)
    if item.error:
        raise HeaderError(item.error)
    what = f"{item.family or 'unknown'} {item.kind}" + (f" ({item.variant})" if item.variant else "")
    if item.kind == "lora":
        raise ModelsError(f"{path}: is a LoRA, not base weights; it cannot fill a [model] path")
    if item.kind in ("checkpoint", "unet") and item.family in ("sdxl", "sd15"):
        return "checkpoint_path", item.family, what
    if item.family == "ltx-video":
        return "single_file_path", item.family, what
    if item.kind in ("transformer", "checkpoint") and item.family:
        return "transformer_path", item.family, what
    if item.kind == "vae":
        return "vae_path", None, what
    if item.kind == "text_encoder" and profile_type in _TEXT_ENCODER_KEY:
        return _TEXT_ENCODER_KEY[profile_type], None, what
    raise ModelsError(f"{path}: identified as {what}; cannot tell which [model] key it fills here, pass --key")


def use_file(profile: Profile | TomlFile, path: Path, *, key: str | None = None,
             force: bool = False) -> tuple[list[Change], str]:
    main = _main(profile)
    path = path.expanduser().resolve()
    profile_type = main.get("model.type")
    auto_key, family, what = key_for(path, profile_type)
    changes: list[Change] = []
    # diffusion-pipe keeps look-alike families apart (a Chroma file in a flux profile fails at load time).
    if family and family != profile_type:
        if profile_type and not force:
            raise ModelsError(f"{path}: is a {what}, but the profile trains {profile_type!r} "
                              "(use --force to switch model.type)")
        _set_type(main, family, True, changes)
    target = f"model.{key or auto_key}"
    old = main.get(target)
    main.set(target, str(path))
    changes.append(Change(target, old, str(path)))
    return changes, what


def _providers(model_type: str, key: str) -> list[str]:
    return [e.id for e in load_registry().for_type(model_type)
            if any(c.key == key for c in e.components)]


def _check_path(model_type: str, key: str, kind: PathKind, value: object, main: TomlFile) -> ModelFileIssue | None:
    keypath = f"model.{key}"
    line = main.line_of(keypath)
    providers = _providers(model_type, key)
    offer = f"; `dpdeck models pull {providers[0]}` provides it" if providers else ""
    if value in (None, ""):
        return ModelFileIssue(keypath, None, "unset", f"{keypath} is not set{offer}", providers, line)
    if not isinstance(value, str):
        return ModelFileIssue(keypath, str(value), "missing", f"{keypath} must be a path string", providers, line)
    path = Path(value).expanduser()
    if not path.exists():
        return ModelFileIssue(keypath, value, "missing", f"{keypath}: {value} does not exist{offer}", providers, line)
    if kind == "file" and path.is_dir():
        return ModelFileIssue(keypath, value, "not_a_file",
                              f"{keypath}: {value} is a directory, a single model file is needed here", providers, line)
    if kind == "dir" and not path.is_dir():
        return ModelFileIssue(keypath, value, "not_a_dir",
                              f"{keypath}: {value} is a file, a folder is needed here", providers, line)
    if path.is_file() and path.suffix == ".safetensors":
        item = inspect_file(path)
        if item.error:
            return ModelFileIssue(keypath, value, "bad_header", f"{keypath}: {item.error}", providers, line)
        if key in ("transformer_path", "checkpoint_path") and item.family and item.family != model_type:
            return ModelFileIssue(keypath, value, "wrong_family",
                                  f"{keypath}: {value} is a {item.family} {item.kind}, the profile trains {model_type}",
                                  providers, line)
    if path.is_dir() and key == "diffusers_path" and not (path / "model_index.json").is_file():
        return ModelFileIssue(keypath, value, "missing",
                              f"{keypath}: {value} has no model_index.json (an incomplete diffusers folder?){offer}",
                              providers, line)
    return None


def missing_model_files(profile: Profile | TomlFile) -> list[ModelFileIssue]:
    """Problems with the model paths a profile's type needs; [] when all are usable.

    With several accepted layouts (e.g. hunyuan-video ckpt_path or four ComfyUI files), the layout the profile
    already uses most is the one checked.
    """
    main = _main(profile)
    model_type = main.get("model.type")
    options = _layouts(model_type) if isinstance(model_type, str) else []
    if not options:
        return []
    chosen = max(options, key=lambda opt: sum(1 for k in opt if main.get(f"model.{k}")))
    issues = []
    for key, kind in chosen.items():
        issue = _check_path(model_type, key, kind, main.get(f"model.{key}"), main)
        if issue is not None:
            issues.append(issue)
    for key, kind in _optional_paths(model_type).items():
        if key in chosen or not main.get(f"model.{key}"):
            continue
        issue = _check_path(model_type, key, kind, main.get(f"model.{key}"), main)
        if issue is not None:
            issues.append(issue)
    return issues
