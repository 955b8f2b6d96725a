"""Where dpdeck keeps its state: one folder, `$DPDECK_HOME` or the platform's user data dir."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "DPDECK_HOME"


def state_dir() -> Path:
    """The root of all dpdeck state; created on first use.

    Read on every call (not cached) so tests and parallel users that set DPDECK_HOME never collide.
    """
    env = os.environ.get(ENV_HOME)
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_data_dir("dpdeck", appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A named folder under the state dir (profiles, jobs, cache, ...), created on demand."""
    path = state_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def profiles_dir() -> Path:
    return subdir("profiles")


def jobs_dir() -> Path:
    return subdir("jobs")


def cache_dir() -> Path:
    return subdir("cache")


def store_path() -> Path:
    return state_dir() / "dpdeck.db"


def secrets_path() -> Path:
    return state_dir() / "secrets.toml"


def config_path() -> Path:
    return state_dir() / "config.toml"
