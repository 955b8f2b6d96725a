"""The engine's API for clients (the CLI and the TUI): read the store, write jobs and requests, start the daemon.

Clients never change a job's state: they insert a queued job (with its profile frozen into the job folder) or a
request, and the daemon applies it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.jobs import create, launch, store
from engine.jobs.lock import daemon_pid, log_path
from profiles import paths
from profiles.document import TomlFile

if TYPE_CHECKING:
    from engine.jobs.view import JobView

# The JobView fields, spelled out so `ls --json` over thousands of jobs never pays for importing pydantic
# (tests/test_engine_units.py checks they match the model).
JOB_FIELDS = (
    "id", "name", "state", "exit_reason", "profile", "backend", "gpus", "num_gpus", "port", "pid", "step",
    "total_steps", "epoch", "total_epochs", "loss", "lr", "samples_per_s", "eta_s", "created_at", "started_at",
    "ended_at", "run_dir", "job_dir", "priority", "after_id", "parent_id", "resume_from", "launcher_args",
    "wait_reason", "evidence",
)


def __getattr__(name: str) -> Any:
    if name == "JobView":  # `client.JobView` without importing pydantic for every client
        from engine.jobs.view import JobView

        return JobView
    raise AttributeError(name)


class RequestError(Exception):
    """A request the daemon refused (e.g. cancel on a job that already ended)."""


_conn: sqlite3.Connection | None = None
_conn_key: tuple[str, tuple[int, int] | None] | None = None


def _db() -> sqlite3.Connection:
    # One connection per state dir per process (tests switch DPDECK_HOME between cases), re-opened when the
    # store file was deleted or replaced: a long-lived client (the TUI) must not keep showing a dead file.
    global _conn, _conn_key
    key = (str(paths.state_dir()), store.file_identity())
    if _conn is None or _conn_key != key:
        if _conn is not None:
            with contextlib.suppress(sqlite3.Error):
                _conn.close()
        _conn = store.connect()
        _conn_key = (key[0], store.file_identity())
    return _conn


def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = store.row_to_dict(row)
    data["evidence"] = data.get("evidence") or []
    return {k: data.get(k) for k in JOB_FIELDS}


def _view(row: sqlite3.Row) -> JobView:
    from engine.jobs.view import JobView

    # Rows come from our own store, written through the same schema: no need to re-validate each one.
    return JobView.model_construct(**_job_dict(row))


# ----- jobs ------------------------------------------------------------------------------------------


def enqueue(
    profile: str,
    *,
    gpus: list[int] | None = None,
    num_gpus: int | None = None,
    backend: str = "auto",
    name: str | None = None,
    priority: int = 0,
    after: int | None = None,
    hang_timeout_s: float | None = None,
    launcher_args: list[str] | None = None,
) -> int:
    """Validate, freeze and queue a profile (a stored name or a path to a main TOML). Returns the job id.

    Raises launch.EnqueueError with every validation message when the profile is invalid.
    """
    if gpus and num_gpus:
        raise launch.EnqueueError("give either gpus or num_gpus, not both")
    prof = launch.resolve_profile(profile)
    chosen = launch.pick_backend(prof, backend)
    world = len(gpus) if gpus else num_gpus
    messages = launch.validate_for_queue(prof, chosen, world)
    errors = [m for m in messages if not m.startswith("warning: ")]
    if errors:
        raise launch.EnqueueError(f"profile {profile} is invalid for the {chosen} backend:\n" + "\n".join(errors))
    conn = _db()
    if after is not None and conn.execute("SELECT 1 FROM jobs WHERE id=?", (after,)).fetchone() is None:
        raise launch.EnqueueError(f"--after {after}: no such job")
    label = name or (prof.name or Path(profile).stem)
    job_id = create.insert_job(
        conn=conn, name=label, profile=str(profile), backend=chosen, gpus=gpus, num_gpus=num_gpus,
        priority=priority, after=after, profile_obj=prof, hang_timeout_s=hang_timeout_s,
        launcher_args=launcher_args, client_env=dict(os.environ),  # the job runs in the enqueuer's environment
    )
    ensure_daemon()  # a queued job needs someone to run it
    return job_id


def list_jobs(include_finished: bool = False) -> list[JobView]:
    return [_view(r) for r in _job_rows(include_finished)]


def list_job_dicts(include_finished: bool = False) -> list[dict[str, Any]]:
    """The same rows as list_jobs as plain dicts: the fast path for `ls --json` over thousands of jobs."""
    cols = ", ".join(JOB_FIELDS)
    where = "" if include_finished else f"WHERE NOT {store.FINAL_IN}"
    order = "id" if include_finished else "priority DESC, queue_pos, id"
    cur = _db().cursor()
    cur.row_factory = None  # plain tuples: several times cheaper than sqlite3.Row for 10k rows
    rows = cur.execute(
        f"SELECT {cols} FROM jobs {where} ORDER BY {order}", () if include_finished else store.FINAL_STATES
    ).fetchall()
    json_cols = [i for i, name in enumerate(JOB_FIELDS) if name in ("gpus", "evidence", "launcher_args")]
    evidence = JOB_FIELDS.index("evidence")
    out = []
    for row in rows:
        values = list(row)
        for i in json_cols:
            if values[i]:
                values[i] = json.loads(values[i])
        if values[evidence] is None:
            values[evidence] = []
        out.append(dict(zip(JOB_FIELDS, values, strict=True)))
    return out


def _job_rows(include_finished: bool) -> list[sqlite3.Row]:
    conn = _db()
    if include_finished:
        rows = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    else:
        rows = conn.execute(
            f"SELECT * FROM jobs WHERE NOT {store.FINAL_IN}"
            " ORDER BY priority DESC, queue_pos, id",
            store.FINAL_STATES,
        ).fetchall()
    return rows


def get_job(job_id: int) -> JobView:
    row = _db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id}")
    return _view(row)


def job_events(job_id: int) -> list[dict[str, Any]]:
    rows = _db().execute("SELECT t, kind, message FROM events WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
    return [dict(r) for r in rows]


def send_request(job_id: int | None, action: str, arg: str | None = None, *, wait_s: float = 30.0) -> dict[str, Any]:
    """Ask the daemon to act; waits (up to wait_s) for its answer. Raises RequestError when it refuses."""
    if job_id is not None:
        get_job(job_id)  # a clear "no job N" before anything is written
    conn = _db()
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO requests(job_id, action, arg, created_at) VALUES (?, ?, ?, ?)",
            (job_id, action, arg, time.time()),
        )
        req_id = cur.lastrowid
    ensure_daemon()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT done_at, result FROM requests WHERE id=?", (req_id,)).fetchone()
        if row and row["done_at"] is not None:
            result = json.loads(row["result"] or "{}")
            if not result.get("ok"):
                raise RequestError(result.get("message", f"{action} refused"))
            return result
        time.sleep(0.1)
    return {"ok": True, "message": f"{action} requested; the daemon has not answered yet", "pending": True}


def queue_paused() -> bool:
    return store.get_setting(_db(), "paused", "0") == "1"


def set_queue_paused(paused: bool) -> None:
    send_request(None, "pause" if paused else "unpause")


def job_metrics(job_id: int) -> list[dict[str, Any]]:
    rows = _db().execute(
        "SELECT step, epoch, loss, lr, samples_per_s, t FROM metrics WHERE job_id=? ORDER BY step", (job_id,)
    ).fetchall()
    return [dict(r) for r in rows]


def job_log_path(job_id: int, rank: int | None = None) -> Path:
    """The job's log: rank N's own file when asked (and it exists), else the launcher's combined output."""
    from engine.jobs.progress import rank_log

    job_dir = Path(get_job(job_id).job_dir)
    found = rank_log(job_dir, 0 if rank is None else rank)
    if found is None and rank is not None:
        raise KeyError(f"job {job_id} has no log for rank {rank} (yet)")
    return found or job_dir / "output.log"


def job_saves(job_id: int) -> list[dict[str, Any]]:
    """Saves (epochN/stepN) and DeepSpeed checkpoints (global_stepN) in the job's run folder."""
    job = get_job(job_id)
    if not job.run_dir or not Path(job.run_dir).is_dir():
        return []
    out: list[dict[str, Any]] = []
    for child in sorted(Path(job.run_dir).iterdir(), key=lambda p: p.stat().st_mtime):
        if not child.is_dir():
            continue
        for prefix, kind in (("epoch", "epoch"), ("step", "step"), ("global_step", "checkpoint")):
            if child.name.startswith(prefix) and child.name[len(prefix):].isdigit():
                out.append(
                    {
                        "kind": kind,
                        "path": str(child),
                        "number": int(child.name[len(prefix):]),
                        "complete": not (child / "tmp").exists(),
                    }
                )
                break
    return out


def wait(job_id: int, timeout: float | None = None, poll_s: float = 0.5) -> JobView:
    """Block until the job ends (or timeout: TimeoutError)."""
    ensure_daemon()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get_job(job_id)
        if job.finished:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f}s")
        time.sleep(poll_s)


# ----- system ----------------------------------------------------------------------------------------


def gpu_report() -> list[dict[str, Any]]:
    from engine import gpus

    return gpus.gpu_report()


def system_stats() -> dict[str, Any]:
    from engine import gpus

    dirs = {str(paths.state_dir())}
    for job in list_jobs(include_finished=False):
        with contextlib.suppress(Exception):
            out = TomlFile.load(Path(job.job_dir) / "main.toml").get("output_dir")
            if isinstance(out, str) and Path(out).exists():
                dirs.add(out)
    return gpus.system_stats(sorted(dirs))


def reclaim(dry_run: bool = False) -> dict[str, Any]:
    """Marked processes whose job is not live: listed (dry run) or killed (by the daemon when one runs)."""
    from engine.jobs import procs

    conn = _db()
    live = {
        r[0]
        for r in conn.execute(
            f"SELECT id FROM jobs WHERE {store.LIVE_IN}", store.LIVE_STATES
        )
    }
    orphans = [m for m in procs.marked_processes() if m.job_id not in live]
    listed = [{"pid": m.pid, "job": m.job_id, "name": m.name} for m in orphans]
    if dry_run or not orphans:
        return {"dry_run": dry_run, "orphans": listed, "killed": []}
    if daemon_pid() is not None:
        send_request(None, "reclaim")
        survivors = [m for m in orphans if procs.is_same_process(m.pid, m.create_time)]
    else:
        survivors = procs.kill_marked(orphans)
    return {
        "dry_run": False,
        "orphans": listed,
        "killed": [o for o, m in zip(listed, orphans, strict=True) if m not in survivors],
        "survivors": [{"pid": m.pid, "job": m.job_id} for m in survivors],
    }


# ----- daemon ----------------------------------------------------------------------------------------


def ensure_daemon(timeout: float = 20.0) -> int:
    """Start the daemon (detached: new session, stdio to daemon.log) unless one runs; returns its pid."""
    pid = daemon_pid()
    if pid:
        return pid
    from profiles.secrets import scrub_env

    # Jobs run with their own client's environment; the daemon needs no credentials of whoever started it.
    env = scrub_env(os.environ)
    env.pop("DPDECK_JOB", None)
    root = str(Path(__file__).resolve().parents[2])  # the tree holding this engine, so the daemon runs this code
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    fd = os.open(log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "engine.jobs.daemon"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            cwd=str(paths.state_dir()),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = daemon_pid()
        if pid:
            return pid
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not start within {timeout:.0f}s; see {log_path()}")


def daemon_status() -> dict[str, Any]:
    from engine.jobs import health

    pid = daemon_pid()
    conn = _db()
    counts = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
    return {
        "running": pid is not None,
        "pid": pid,
        "state_dir": str(paths.state_dir()),
        "paused": queue_paused(),
        "jobs": counts,
        "problems": health.problems() if pid is not None else [],
    }


def check_daemon() -> str | None:
    """Start the daemon when jobs wait on it and none runs; a sentence saying so (or why it failed), else None.

    A daemon that died (killed, out of memory, a bug) leaves live and queued jobs that nobody supervises; every
    client that looks at the queue notices it and brings one back, so the truth shown is never frozen.
    """
    if daemon_pid() is not None:
        return None
    waiting = _db().execute(
        f"SELECT COUNT(*) FROM jobs WHERE state='queued' OR {store.LIVE_IN}", store.LIVE_STATES
    ).fetchone()[0]
    if not waiting:
        return None
    try:
        pid = ensure_daemon()
    except RuntimeError as exc:
        return f"the daemon was not running and could not be started: {exc}"
    return f"the daemon was not running ({waiting} job(s) waiting on it): started it (pid {pid})"


def stop_daemon(kill_jobs: bool = False, timeout: float = 30.0) -> bool:
    """Stop the daemon; running jobs keep running unless kill_jobs. True when it was running.

    Needs only the daemon lock; with kill_jobs and an unreadable store, the jobs are found by their markers.
    """
    pid = daemon_pid()
    if pid is None:
        return False
    if kill_jobs:
        try:
            _cancel_all(timeout)
        except sqlite3.DatabaseError:  # StoreCorrupt included: stop the daemon first, then kill by marker
            _terminate_daemon(pid, timeout)
            _kill_marked_jobs()
            return True
    _terminate_daemon(pid, timeout)
    return True


def _cancel_all(timeout: float) -> None:
    for job in list_jobs():
        if job.state in store.LIVE_STATES or job.state == "queued":
            with contextlib.suppress(RequestError):
                send_request(job.id, "cancel")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(j.state in store.LIVE_STATES for j in list_jobs()):
        time.sleep(0.2)


def _terminate_daemon(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon_pid() is not None:
        time.sleep(0.05)


def _kill_marked_jobs() -> None:
    from engine.jobs import procs

    procs.kill_marked(procs.marked_processes(), grace_s=5.0)
