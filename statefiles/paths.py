"""Where dpdeck keeps its state: one folder, `$DPDECK_HOME` or the platform's user data dir.

The folder is private (0700, its files 0600: it holds the job store, logs and secrets) and always spelled one
way: absolute, with `~` expanded and symlinks resolved. Job processes are recognised by the state dir in their
environment, so two spellings of one folder would make a job invisible to cancel and reclaim.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

ENV_HOME = "DPDECK_HOME"
DIR_MODE = 0o700
FILE_MODE = 0o600


def canonical(path: str | os.PathLike[str]) -> Path:
    """One spelling per folder: `~` expanded, absolute (against the current directory), symlinks resolved."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def state_root() -> Path:
    """The state dir's canonical path, without creating it."""
    env = os.environ.get(ENV_HOME)
    if env:
        root = canonical(env)
        if env != str(root):
            # Pin the canonical spelling for this process and everything it starts (the daemon runs in the
            # state dir, where a relative path would resolve again one level deeper; markers compare paths).
            os.environ[ENV_HOME] = str(root)
        return root
    import platformdirs

    return canonical(platformdirs.user_data_dir("dpdeck", appauthor=False))


def state_dir() -> Path:
    """The root of all dpdeck state; created (0700) on first use, tightened when an older dpdeck left it open.

    Read on every call (not cached) so tests and parallel users that set DPDECK_HOME never collide.
    """
    root = state_root()
    _private_dir(root)
    return root


def _private_dir(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
        # A read-only file system or a folder owned by someone else keeps its mode: reading still works.
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(st.st_mode) & DIR_MODE)


def is_state_path(path: str | os.PathLike[str]) -> bool:
    """True for a path inside the state dir (which need not exist yet)."""
    try:
        target = canonical(path)
        root = state_root()
    except (OSError, RuntimeError):
        return False
    return target == root or root in target.parents


def subdir(name: str) -> Path:
    """A named folder under the state dir (profiles, jobs, cache, ...), created (0700) on demand."""
    path = state_dir() / name
    _private_dir(path)
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
