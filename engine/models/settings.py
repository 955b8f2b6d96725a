"""Where models live: the download folder, the folders to scan, and the Hugging Face cache.

The `[models]` settings (dir, folders, min_free_gb, max_downloads, download_retries) and their env overrides
are defined once in statefiles/settings.py (docs/config.md); this module turns them into paths. The Hugging
Face cache follows the Hub's own HF_HUB_CACHE / HF_HOME.
"""

from __future__ import annotations

import os
from pathlib import Path

from statefiles import settings
from statefiles.paths import state_dir


def models_dir() -> Path:
    raw = settings.load().models.dir  # DPDECK_MODELS_DIR wins over config.toml (the settings model says so)
    # Not created here: listing and status checks must not leave folders behind; the worker makes them.
    return Path(raw).expanduser() if raw else state_dir() / "models"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def scan_folders() -> list[Path]:
    """Folders discovery looks in, in order, without duplicates."""
    folders: list[Path] = [models_dir()]
    folders += [Path(p).expanduser() for p in settings.load().models.folders]
    folders.append(hf_cache_dir())
    out: list[Path] = []
    for f in folders:
        if f not in out:
            out.append(f)
    return out


def min_free_bytes() -> int:
    return round(settings.load().models.min_free_gb * 1024**3)


def repo_dirname(repo: str) -> str:
    """`owner/name` -> `owner--name` (the Hub cache's own convention, readable and collision-free)."""
    return repo.replace("/", "--")


def hub_endpoint() -> str:
    """HF_ENDPOINT read at call time (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
