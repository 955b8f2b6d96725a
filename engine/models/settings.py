"""Where models live: the download folder, the folders to scan, and the Hugging Face cache.

Config (`$DPDECK_HOME/config.toml`):
    [models]
    dir = "/data/models"               # where `dpdeck models pull` puts files (default $DPDECK_HOME/models)
    folders = ["/data/comfy/models"]   # extra folders `scan` looks in
    min_free_gb = 2                    # space that must stay free after a download
    max_downloads = 3                  # downloads the daemon runs at once (the rest wait, queued)
    download_retries = 3               # automatic restarts of a download whose worker died
Environment overrides (scripts, tests): DPDECK_MODELS_DIR, HF_HUB_CACHE / HF_HOME, DPDECK_MAX_DOWNLOADS,
DPDECK_DOWNLOAD_RETRIES.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from profiles.paths import config_path, state_dir


def _config() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        import tomlkit

        data = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    except Exception:  # a broken config must not make `models list` unusable; the config command reports it
        return {}
    section = data.get("models")
    return section if isinstance(section, dict) else {}


def models_dir() -> Path:
    env = os.environ.get("DPDECK_MODELS_DIR")
    raw = env or _config().get("dir")
    # Not created here: listing and status checks must not leave folders behind; the worker makes them.
    return Path(str(raw)).expanduser() if raw else state_dir() / "models"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def scan_folders() -> list[Path]:
    """Folders discovery looks in, in order, without duplicates."""
    folders: list[Path] = [models_dir()]
    extra = _config().get("folders") or []
    if isinstance(extra, list):
        folders += [Path(str(p)).expanduser() for p in extra]
    folders.append(hf_cache_dir())
    out: list[Path] = []
    for f in folders:
        if f not in out:
            out.append(f)
    return out


def min_free_bytes() -> int:
    env = os.environ.get("DPDECK_MIN_FREE_BYTES")
    if env is not None:
        return int(env)
    gb = _config().get("min_free_gb", 2)
    try:
        return int(float(gb) * 1024**3)
    except (TypeError, ValueError):
        return 2 * 1024**3


def _int_setting(env: str, key: str, default: int, low: int) -> int:
    raw = os.environ.get(env)
    if raw is None:
        raw = _config().get(key, default)
    try:
        return max(low, int(raw))
    except (TypeError, ValueError):
        return default  # a typo in config.toml must not stop downloads; `dpdeck config` reports it


def max_downloads() -> int:
    return _int_setting("DPDECK_MAX_DOWNLOADS", "max_downloads", 3, 1)


def download_retries() -> int:
    return _int_setting("DPDECK_DOWNLOAD_RETRIES", "download_retries", 3, 0)


def repo_dirname(repo: str) -> str:
    """`owner/name` -> `owner--name` (the Hub cache's own convention, readable and collision-free)."""
    return repo.replace("/", "--")


def hub_endpoint() -> str:
    """HF_ENDPOINT read at call time (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
