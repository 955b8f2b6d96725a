"""One cgroup (v2) per job, where the machine lets us make them: no descendant escapes it however it detaches.

Env markers can be shed (`env -i`) and process groups left (`setsid`); cgroup membership is inherited by every
child and only a writer of cgroup.procs can move a process out. Layout: `<base>/job-<id>`, where base is
`dpdeck-<hash of the state dir>` under the daemon's own cgroup (or its parent when ours is not writable). We
only track: no limits are set. The shim joins its job's cgroup before it starts the launcher.

`DPDECK_CGROUP=off` disables it; without it (no cgroup2, no writable subtree) env markers remain the fallback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
from pathlib import Path

from statefiles import paths
from statefiles.atomic import atomic_write_text

ENV = "DPDECK_CGROUP"
RECORD = "cgroup.base"  # in the state dir: where the shims made the job cgroups, for clients in other cgroups
OFF = ("off", "0", "no", "false")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def cgroup2_mount() -> tuple[Path, str] | None:
    """(mount point, root of the hierarchy it shows) of the cgroup2 filesystem, from /proc/self/mountinfo."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and tail.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def cgroup_of(pid: int | str = "self") -> str | None:
    """The v2 cgroup path ("0::/path") of a process, or None (gone, or not in a v2 hierarchy)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].removesuffix(" (deleted)") or "/"
    return None


def _base_name() -> str:
    digest = hashlib.sha256(str(Path(paths.state_dir()).resolve()).encode()).hexdigest()[:12]
    return f"dpdeck-{digest}"


def _disabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in OFF


def _own_dir() -> Path | None:
    own = cgroup_of()
    return _fs_path(own) if own is not None else None


def _probe(parent: Path, name: str) -> str | None:
    """None when a cgroup can be made under parent (tested by mkdir/rmdir), else why not."""
    target = parent / name
    probe = target / f"probe-{os.getpid()}" if target.is_dir() else target
    try:
        probe.mkdir()
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create cgroups under {parent}: {exc.strerror}"
    with contextlib.suppress(OSError):
        probe.rmdir()
    return None


def _recorded_base(mount: Path) -> Path | None:
    try:
        recorded = Path((paths.state_dir() / RECORD).read_text().strip())
    except OSError:
        return None
    # Trust it only where it can point: our own name, inside the cgroup2 mount.
    if recorded.name != _base_name() or mount not in recorded.parents or not recorded.is_dir():
        return None
    return recorded


def status() -> tuple[Path | None, str]:
    """(base, why): the folder the job cgroups live in, or None and why tracking falls back to env markers."""
    if _disabled():
        return None, f"{ENV}={os.environ.get(ENV)} (unset it to track jobs by cgroup)"
    found = cgroup2_mount()
    if found is None:
        return None, "no cgroup2 filesystem is mounted (see /proc/self/mountinfo)"
    mount = found[0]
    recorded = _recorded_base(mount)
    if recorded is not None:
        return recorded, f"cgroup at {recorded}"
    own = _own_dir()
    if own is None:
        return None, f"this process's cgroup is not under the cgroup2 mount {mount}"
    why = ""
    for parent in (own, own.parent):
        if mount != parent and mount not in parent.parents:
            break
        why = _probe(parent, _base_name()) or ""
        if not why:
            return parent / _base_name(), f"cgroup at {parent / _base_name()}"
    return None, why or f"no writable cgroup under {own}"


def available() -> bool:
    return status()[0] is not None


def describe() -> str:
    return status()[1]


def _job_name(job_id: int) -> str:
    return f"job-{int(job_id)}"


def job_cgroup(job_id: int, create: bool = True) -> Path | None:
    """The job's cgroup folder (made, with its base, when create), or None when cgroups are not usable."""
    base, _ = status()
    if base is None:
        return None
    path = base / _job_name(job_id)
    if not create:
        return path if path.is_dir() else None
    for _ in range(3):  # a sweep may rmdir an empty base between our two mkdirs
        try:
            base.mkdir(exist_ok=True)
            path.mkdir(exist_ok=True)
            break
        except FileNotFoundError:
            continue
        except OSError:
            return None
    else:
        return None
    _enable_memory_events(base)
    with contextlib.suppress(OSError):
        record = paths.state_dir() / RECORD
        if not record.exists() or record.read_text().strip() != str(base):
            atomic_write_text(record, str(base))
    return path


def _enable_memory_events(base: Path) -> None:
    # Only for memory.events' oom_kill count; no limit is ever set. Allowed: base holds no process itself.
    with contextlib.suppress(OSError):
        if "memory" in (base / "cgroup.controllers").read_text().split() and \
                "memory" not in (base / "cgroup.subtree_control").read_text().split():
            (base / "cgroup.subtree_control").write_text("+memory")


def join(job_id: int, pid: int | None = None) -> bool:
    """Move pid (default: this process) into the job's cgroup; False when that cannot be done here."""
    path = job_cgroup(job_id)
    if path is None:
        return False
    try:
        (path / "cgroup.procs").write_text(str(pid or os.getpid()))
    except OSError:
        return False
    return True


def _fs_path(cg_path: str) -> Path | None:
    """The folder of a cgroup path as /proc/<pid>/cgroup names it ("/a/b"), under the cgroup2 mount."""
    found = cgroup2_mount()
    if found is None:
        return None
    mount, root = found
    root = root.rstrip("/")
    if root and not (cg_path == root or cg_path.startswith(root + "/")):
        return None
    return mount / cg_path[len(root):].lstrip("/")


def _cg_path(folder: Path) -> str | None:
    """The inverse of _fs_path: the cgroup path /proc/<pid>/cgroup shows for a process in folder."""
    found = cgroup2_mount()
    if found is None:
        return None
    mount, root = found
    try:
        rel = folder.relative_to(mount)
    except ValueError:
        return None
    return "/" + "/".join(p for p in (*root.strip("/").split("/"), *rel.parts) if p)


def leave(origin: str) -> bool:
    """Move this process back to the cgroup it came from (its /proc/self/cgroup path before join)."""
    folder = _fs_path(origin)
    if folder is None:
        return False
    try:
        (folder / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def _tree(path: Path) -> list[Path]:
    """path and every cgroup below it, deepest first (the order rmdir needs)."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                found += _tree(child)
    return [*found, path]


def _procs_in(path: Path) -> list[int]:
    pids: list[int] = []
    for cg in _tree(path):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in (cg / "cgroup.procs").read_text().split()]
    return pids


def members(job_id: int) -> list[int]:
    """Live processes in the job's cgroup (zombies are not listed by the kernel)."""
    path = job_cgroup(job_id, create=False)
    return _procs_in(path) if path is not None else []


def job_ids() -> list[int]:
    """Jobs that have a cgroup now."""
    base, _ = status()
    ids: list[int] = []
    with contextlib.suppress(OSError):
        for entry in base.iterdir() if base is not None else []:
            name = entry.name
            if name.startswith("job-") and name[4:].isdigit() and entry.is_dir():
                ids.append(int(name[4:]))
    return sorted(ids)


def all_members() -> dict[int, int]:
    """pid -> job id for every process in one of our job cgroups."""
    out: dict[int, int] = {}
    for job_id in job_ids():
        for pid in members(job_id):
            out[pid] = job_id
    return out


def job_of(pid: int) -> int | None:
    """The job whose cgroup holds pid, or None."""
    base, _ = status()
    where = cgroup_of(pid)
    prefix = _cg_path(base) if base is not None else None
    if prefix is None or where is None or not where.startswith(prefix + "/job-"):
        return None
    head = where[len(prefix) + 5:].split("/", 1)[0]
    return int(head) if head.isdigit() else None


def kill(job_id: int, timeout: float = 5.0) -> list[int]:
    """SIGKILL everything in the job's cgroup (cgroup.kill when the kernel has it); returns what is left.

    Never kills the calling process: when it is inside (the shim), each other member is killed instead.
    """
    path = job_cgroup(job_id, create=False)
    if path is None:
        return []
    me = os.getpid()
    use_kill_file = (path / "cgroup.kill").exists() and me not in _procs_in(path)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in _procs_in(path) if p != me]
        if not left or time.monotonic() > deadline:
            return left
        if use_kill_file:
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1")
        else:
            for pid in left:  # a member may fork between our read and its kill: loop until empty
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def remove(job_id: int) -> bool:
    """rmdir the job's (empty) cgroup and any below it, then the base when no job is left; True when gone."""
    path = job_cgroup(job_id, create=False)
    if path is None:
        return True
    for cg in _tree(path):
        for _ in range(50):  # the kernel needs a moment after the last member exits
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return False
                time.sleep(0.02)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # fails (not empty) while another job has a cgroup: fine
    return not path.exists()


def oom_kills(job_id: int, job_dir: Path | None = None) -> int | None:
    """Processes of the job killed by an OOM killer (memory.events), or None where that is not counted.

    Read from the live cgroup, else from `cgroup.json` the shim leaves in the job folder when it removes it.
    """
    path = job_cgroup(job_id, create=False)
    if path is not None:
        count = _read_oom_kills(path)
        if count is not None:
            return count
    if job_dir is not None:
        import json

        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads((job_dir / "cgroup.json").read_text()).get("oom_kills")
            return int(value) if value is not None else None
    return None


def _read_oom_kills(path: Path) -> int | None:
    try:
        text = (path / "memory.events").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None
