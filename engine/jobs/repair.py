"""`dpdeck doctor --repair`: rebuild the job store from the job folders.

A damaged store is moved aside (`dpdeck.db.corrupt-<time>`, never deleted) and a fresh one made; then every
job folder the store does not know comes back from its own record: a job whose shim still runs (found by its
marker, pid + create_time) comes back live so the daemon re-attaches to it; an ended one from `state.json`
(the daemon's record) or `exit.json` (the shim's); one with neither is `interrupted`. Rows in the store stay.

Runs only while no daemon does, holding the daemon lock so none starts halfway.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import proctitle
from engine.jobs import classify, procs, record, store
from engine.jobs.job import JSON_COLUMNS, LIVE
from engine.jobs.lock import acquire_lock, daemon_pid
from engine.jobs.progress import log_tail
from statefiles import paths

NO_RECORD = "recovered by dpdeck doctor --repair: no record of how this job ended (rerun: dpdeck retry {id})"


class RepairError(RuntimeError):
    """The repair cannot run (a daemon is running); the message says what to do."""


@dataclass
class RepairReport:
    moved_aside: Path | None = None
    recovered: dict[int, str] = field(default_factory=dict)  # job id -> state it came back in
    kept: int = 0  # jobs the store already had
    skipped: list[str] = field(default_factory=list)  # folders that hold no job

    def lines(self) -> list[str]:
        out = []
        if self.moved_aside is not None:
            out.append(f"moved the damaged store aside: {self.moved_aside}")
        counts: dict[str, int] = {}
        for state in self.recovered.values():
            counts[state] = counts.get(state, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        found = f"recovered {len(self.recovered)} job(s) from their folders"
        out.append(f"{found}: {detail}" if detail else found)
        out.append(f"kept {self.kept} job(s) the store already had")
        out += [f"skipped {s}" for s in self.skipped]
        if any(s in LIVE for s in self.recovered.values()):
            out.append("running jobs are watched again once the daemon starts (any dpdeck command starts it)")
        return out


def repair() -> RepairReport:
    refusal = _refusal()
    if refusal:
        raise RepairError(refusal)
    fd = acquire_lock()
    if fd is None:
        raise RepairError(_refusal() or "a daemon started meanwhile: stop it first: dpdeck daemon stop")
    try:
        report = RepairReport(moved_aside=_set_aside_if_damaged(paths.store_path()))
        conn = store.connect()
        try:
            recover_folders(conn, report)
        finally:
            conn.close()
        return report
    finally:
        os.close(fd)


def _refusal() -> str | None:
    pid = daemon_pid()
    if pid is None:
        return None
    return (f"a daemon (pid {pid}) runs for {paths.state_dir()}: stop it first (its jobs keep running): "
            "dpdeck daemon stop")


# ----- the store file ----------------------------------------------------------------------------------


def _set_aside_if_damaged(db: Path) -> Path | None:
    if not db.exists() or _healthy(db):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = db.with_name(f"{db.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = db.with_name(f"{db.name}.corrupt-{stamp}.{n}")
    # The -wal and -shm files belong to the damaged file: they move with it, so the new store starts clean.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    os.replace(db, target)
    return target


def _healthy(db: Path) -> bool:
    try:
        conn = store.connect(db)
    except sqlite3.DatabaseError:
        return False
    try:
        return bool(conn.execute("PRAGMA quick_check").fetchone()[0] == "ok")
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


# ----- the folders ----------------------------------------------------------------------------------------


def recover_folders(conn: sqlite3.Connection, report: RepairReport) -> None:
    known = {r[0] for r in conn.execute("SELECT id FROM jobs")}
    shims = _live_shims()
    folders = sorted((p for p in paths.jobs_dir().iterdir() if p.name.isdigit() and p.is_dir()),
                     key=lambda p: int(p.name))
    with store.transaction(conn):
        for folder in folders:
            job_id = int(folder.name)
            if job_id in known:
                report.kept += 1
                continue
            row = recover_row(folder, job_id, shims.get(job_id))
            if row is None:
                report.skipped.append(f"{folder}: no job.json and no frozen main.toml, not a job")
                continue
            _insert(conn, row)
            report.recovered[job_id] = row["state"]


def _live_shims() -> dict[int, procs.Marked]:
    """Job id -> its live shim: a process with our marker whose command line is a shim's (titled or not)."""
    import psutil

    found: dict[int, procs.Marked] = {}
    for m in procs.marked_processes():
        with contextlib.suppress(psutil.Error):
            if proctitle.is_kind(psutil.Process(m.pid).cmdline(), "shim"):
                found[m.job_id] = m
    return found


def recover_row(folder: Path, job_id: int, shim: procs.Marked | None) -> dict[str, Any] | None:
    """The store row for a job folder, from its own files; None when the folder holds no job."""
    identity = record.read_job(folder) or _guess_identity(folder, job_id)
    if identity is None:
        return None
    row: dict[str, Any] = {k: identity.get(k) for k in record.IDENTITY_KEYS if k != "secrets"}
    row.update(id=job_id, job_dir=str(folder), queue_pos=float(job_id))
    row["name"] = row.get("name") or f"job-{job_id}"
    row["profile"] = row.get("profile") or "?"
    row["backend"] = row.get("backend") or _backend_of(folder)
    row["priority"] = row.get("priority") or 0
    row["created_at"] = row.get("created_at") or folder.stat().st_mtime
    launched = _launch_facts(folder)
    if shim is not None:
        row.update(launched)
        row.update(state="running" if (folder / "child.json").exists() else "starting", pid=shim.pid,
                   pid_ctime=shim.create_time, pgid=shim.pgid or shim.pid, last_progress_at=time.time())
        return row
    ended = record.read_state(folder) or _from_exit(folder)
    if ended is not None:
        row.update({k: v for k, v in launched.items() if k != "port"})
        row.update(ended)
        return row
    row.update(state="interrupted", exit_reason="interrupted", ended_at=time.time(),
               evidence=[NO_RECORD.format(id=job_id)])
    return row


def _guess_identity(folder: Path, job_id: int) -> dict[str, Any] | None:
    # A folder made before job.json existed: what its files still say.
    if not (folder / "main.toml").exists():
        return None
    return {"id": job_id, "name": f"job-{job_id}", "profile": "?", "backend": _backend_of(folder),
            "created_at": folder.stat().st_mtime}


def _launch_spec(folder: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        spec = json.loads((folder / "launch.json").read_text())
        if isinstance(spec, dict):
            return spec
    return {}


def _backend_of(folder: Path) -> str:
    argv = _launch_spec(folder).get("argv") or []
    return "builtin" if "engine.trainer" in argv else "diffusion-pipe"


def _launch_facts(folder: Path) -> dict[str, Any]:
    """Port, GPUs and start time of a job that was launched, from launch.json / child.json."""
    spec = _launch_spec(folder)
    if not spec:
        return {}
    argv = [str(a) for a in spec.get("argv") or []]
    facts: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError):
        facts["port"] = int(argv[argv.index("--master_port") + 1])
    with contextlib.suppress(ValueError, IndexError):
        include = argv[argv.index("--include") + 1]
        if include.startswith("localhost:"):
            facts["gpus"] = [int(g) for g in include.split(":", 1)[1].split(",")]
    started = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        started = json.loads((folder / "child.json").read_text()).get("started_at")
    with contextlib.suppress(OSError):
        started = started or (folder / "launch.json").stat().st_mtime
    facts["started_at"] = started
    return facts


def _from_exit(folder: Path) -> dict[str, Any] | None:
    """How a job ended, from the shim's exit.json and its log tail (the daemon never recorded it)."""
    try:
        exit_info = json.loads((folder / "exit.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(exit_info, dict):
        return None
    returncode = exit_info.get("returncode")
    tail = log_tail(folder)
    complete = any("TRAINING COMPLETE" in line for line in tail)
    reason = classify.classify(returncode, tail, complete_seen=complete)
    return {
        "state": classify.state_for(reason), "exit_reason": reason,
        "ended_at": exit_info.get("ended_at") or folder.stat().st_mtime,
        "started_at": exit_info.get("started_at"),
        "evidence": classify.evidence(tail) if reason != "completed" else [],
    }


_COLUMNS = (
    "id", "name", "state", "exit_reason", "profile", "backend", "gpus", "num_gpus", "priority", "after_id",
    "queue_pos", "resume_from", "launcher_args", "parent_id", "port", "pid", "pid_ctime", "pgid", "job_dir",
    "run_dir", "evidence", "step", "total_steps", "epoch", "total_epochs", "loss", "lr", "hang_timeout_s",
    "last_progress_at", "created_at", "started_at", "ended_at",
)


def _insert(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    values = []
    for col in _COLUMNS:
        value = row.get(col)
        if col in JSON_COLUMNS and value is not None and not isinstance(value, str):
            value = json.dumps(value)
        values.append(value)
    conn.execute(f"INSERT INTO jobs({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values)
    now = time.time()
    if row["state"] in LIVE:
        # The scheduler must not hand this job's port or GPUs to another job before the daemon re-attaches.
        resources = [f"port:{row['port']}"] if row.get("port") else []
        resources += [f"gpu:{g}" for g in row.get("gpus") or []]
        for resource in resources:
            conn.execute("INSERT OR REPLACE INTO leases(resource, job_id, t) VALUES (?, ?, ?)",
                         (resource, row["id"], now))
    store.add_event(conn, row["id"], "repair", f"recovered by doctor --repair (folder): {row['state']}")
