"""User settings (`dpdeck config get/set`): a small TOML file in the state dir."""

from __future__ import annotations

from typing import Any

import tomlkit

from profiles import paths
from profiles.atomic import atomic_write_text
from profiles.document import TomlFile

KNOWN: dict[str, tuple[type, Any, str]] = {
    "diffusion_pipe.path": (str, None, "your diffusion-pipe checkout (the folder holding train.py)"),
    "diffusion_pipe.python": (str, None, "python of diffusion-pipe's environment (default: this python)"),
    "scheduler.cpu_slots": (int, 1, "jobs that may run at once on a machine without NVIDIA GPUs"),
    "scheduler.min_free_mib": (int, 2048, "free GPU memory a GPU needs before a job starts on it"),
    "scheduler.hang_timeout_s": (int, 1800, "no progress for this long marks a job hung"),
    "scheduler.stop_timeout_s": (int, 300, "graceful stop waits this long for save_quit before cancelling"),
    "ports.low": (int, 29500, "first master port dpdeck leases"),
    "ports.high": (int, 29999, "last master port dpdeck leases (kept below the ephemeral range)"),
    "models.max_downloads": (int, 3, "model downloads the daemon runs at once (the rest wait, queued)"),
    "models.download_retries": (int, 3, "automatic restarts of a download whose worker died (kill, OOM)"),
    "datasets.undo_keep": (int, 50, "dataset batch ops kept for undo (older records are deleted; 0 keeps all)"),
    "tui.image_protocol": (str, "auto", "Datasets image preview: auto, halfblock, kitty or sixel"),
}
# Settings that take one of a few words: `config set` refuses anything else.
CHOICES: dict[str, tuple[str, ...]] = {
    "tui.image_protocol": ("auto", "halfblock", "kitty", "sixel"),
}


def _load() -> TomlFile:
    path = paths.config_path()
    if path.exists():
        return TomlFile.load(path)
    return TomlFile(doc=tomlkit.document(), path=path, source=str(path))


def get(key: str) -> Any:
    if key not in KNOWN:
        raise KeyError(key)
    kind, default, _ = KNOWN[key]
    value = _load().get(key, default)
    return kind(value) if value is not None else None


def set_value(key: str, raw: str) -> Any:
    if key not in KNOWN:
        known = ", ".join(sorted(KNOWN))
        raise KeyError(f"unknown setting {key!r}; known: {known}")
    kind = KNOWN[key][0]
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ValueError(f"{key}: expected {kind.__name__}, found {raw!r}") from exc
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{key}: expected one of {', '.join(CHOICES[key])}, found {raw!r}")
    doc = _load()
    doc.set(key, value)
    atomic_write_text(paths.config_path(), doc.dumps())
    return value


def all_settings() -> dict[str, Any]:
    return {key: get(key) for key in KNOWN}
