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
import threading
import time
from pathlib import Path
from typing import Any

from engine.jobs import create, launch, store
from engine.jobs.job import FINAL_IN, JSON_COLUMNS, LIVE, LIVE_IN, PUBLIC_FIELDS, Job, JobState
from engine.jobs.lock import daemon_pid, log_path
from engine.jobs.protocol import Action, Request, Result, read_result, write_request
from profiles.document import TomlFile
from statefiles import paths


class _ThreadConn(threading.local):
    conn: sqlite3.Connection | None = None
    key: tuple[str, tuple[int, int] | None] | None = None


_local = _ThreadConn()


def _db() -> sqlite3.Connection:
    # One connection per thread and state dir: the TUI reads from several worker threads at once, and a
    # connection shared between them was closed by one thread while another used it (CI died of SIGBUS).
    # Re-opened when DPDECK_HOME changes (tests switch it between cases) or the store file was deleted or
    # replaced: a long-lived client (the TUI) must not keep showing a dead file.
    key = (str(paths.state_dir()), store.file_identity())
    if _local.conn is None or _local.key != key:
        if _local.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                _local.conn.close()
        _local.conn = store.connect()
        _local.key = (key[0], store.file_identity())
    return _local.conn


def close_db() -> None:
    """Close this thread's store connection (its WAL is then no longer kept alive by this process)."""
    if _local.conn is not None:
        with contextlib.suppress(sqlite3.Error):
            _local.conn.close()
    _local.conn = _local.key = None


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
    launch.check_backend_python(chosen)  # diffusion_pipe.python without deepspeed: refused now, not at launch
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


# The one order every client shows jobs in (`dpdeck ls`, the deck's Queue): jobs not yet ended in the order the
# daemon starts them (engine/jobs/daemon.py picks by priority, then queue_pos, then id), then ended ones by id.
QUEUE_ORDER = "priority DESC, queue_pos, id"
LIST_ORDER = (
    f"{FINAL_IN}, CASE WHEN {FINAL_IN} THEN 0 ELSE -priority END, "
    f"CASE WHEN {FINAL_IN} THEN 0 ELSE queue_pos END, id"
)


def list_jobs(include_finished: bool = False) -> list[Job]:
    """Jobs in LIST_ORDER; ended ones too when include_finished."""
    return [Job.from_row(r) for r in _job_rows(include_finished)]


def queue_positions(jobs: list[Job]) -> dict[int, int]:
    """{job id: its place in line (1 = starts next)} for the queued jobs of `jobs`, a list in LIST_ORDER."""
    queued = [job.id for job in jobs if job.state == JobState.QUEUED]
    return {job_id: place for place, job_id in enumerate(queued, start=1)}


def list_job_dicts(include_finished: bool = False) -> list[dict[str, Any]]:
    """The public rows of list_jobs as plain dicts: the fast path for `ls --json` over thousands of jobs."""
    cols = ", ".join(PUBLIC_FIELDS)
    where = "" if include_finished else f"WHERE NOT {FINAL_IN}"
    order = LIST_ORDER if include_finished else QUEUE_ORDER
    cur = _db().cursor()
    cur.row_factory = None  # plain tuples: several times cheaper than sqlite3.Row for 10k rows
    rows = cur.execute(f"SELECT {cols} FROM jobs {where} ORDER BY {order}").fetchall()
    json_cols = [i for i, name in enumerate(PUBLIC_FIELDS) if name in JSON_COLUMNS]
    evidence = PUBLIC_FIELDS.index("evidence")
    out = []
    for row in rows:
        values = list(row)
        for i in json_cols:
            if values[i]:
                values[i] = json.loads(values[i])
        if values[evidence] is None:
            values[evidence] = []
        out.append(dict(zip(PUBLIC_FIELDS, values, strict=True)))
    return out


def _job_rows(include_finished: bool) -> list[sqlite3.Row]:
    conn = _db()
    if include_finished:
        return conn.execute(f"SELECT * FROM jobs ORDER BY {LIST_ORDER}").fetchall()
    return conn.execute(f"SELECT * FROM jobs WHERE NOT {FINAL_IN} ORDER BY {QUEUE_ORDER}").fetchall()


def get_job(job_id: int) -> Job:
    row = _db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id}")
    return Job.from_row(row)


def job_events(job_id: int) -> list[dict[str, Any]]:
    rows = _db().execute("SELECT t, kind, message FROM events WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
    return [dict(r) for r in rows]


def send(request: Request, *, wait_s: float = 30.0) -> Result:
    """Ask the daemon (engine/jobs/protocol.py); waits up to wait_s for its answer. A refusal is a Result with
    ok=False and the daemon's reason (`.check()` turns it into RequestError); KeyError for an unknown job."""
    if request.job_id is not None:
        get_job(request.job_id)  # a clear "no job N" before anything is written
    from engine.jobs.wake import poke

    conn = _db()
    req_id = write_request(conn, request)
    ensure_daemon()
    poke()  # only a latency nudge: the daemon reads the requests table every tick anyway
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        result = read_result(conn, req_id)
        if result is not None:
            return result
        time.sleep(0.05)
    return Result(True, f"{request.action} requested; the daemon has not answered yet", pending=True)


DISMISSED = "dismissed_jobs"  # settings key: the ended jobs removed from the deck's Queue list (JSON ids)


def dismissed_jobs() -> set[int]:
    """Ended jobs the user removed from the Queue list; the store keeps them (`ls --all`, `show` list them)."""
    raw = store.get_setting(_db(), DISMISSED, "[]") or "[]"
    try:
        ids = json.loads(raw)
    except ValueError:
        return set()  # a damaged list hides nothing rather than failing the Queue
    return {i for i in ids if isinstance(i, int)} if isinstance(ids, list) else set()


def dismiss_jobs(job_ids: list[int]) -> list[int]:
    """Remove ended jobs from the Queue list (their rows, folders, logs and saves stay). Returns the ids removed.

    Raises ValueError naming a job that has not ended (it must be cancelled first) or does not exist.
    """
    conn = _db()
    for job_id in job_ids:
        job = get_job(job_id)  # KeyError "no job N"
        if not job.finished:
            raise ValueError(f"job {job_id} is {job.state}: only ended jobs leave the list (cancel it first)")
    with store.transaction(conn):
        row = conn.execute("SELECT value FROM settings WHERE key=?", (DISMISSED,)).fetchone()
        try:
            known = set(json.loads(row[0])) if row else set()
        except ValueError:
            known = set()
        conn.execute(
            "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
            (DISMISSED, json.dumps(sorted(known | set(job_ids)))),
        )
    return sorted(set(job_ids))


def queue_paused() -> bool:
    return store.get_setting(_db(), "paused", "0") == "1"


def set_queue_paused(paused: bool) -> None:
    send(Request(Action.PAUSE if paused else Action.UNPAUSE)).check()


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


def job_samples(job_id: int) -> list[dict[str, Any]]:
    """Sample images the built-in trainer rendered in the job's run folder (engine/jobs/samples.py)."""
    from engine.jobs.samples import list_samples

    return [s.as_dict() for s in list_samples(get_job(job_id).run_dir)]


def job_tb_metrics(job_id: int) -> dict[str, Any]:
    """Epoch loss and each eval set's loss from the TensorBoard events in the job's run folder
    (engine/jobs/tb_events.py); empty lists before the run folder is known or the first event is flushed."""
    from engine.jobs.tb_events import RunMetrics, read_run

    job = get_job(job_id)
    return (read_run(Path(job.run_dir)) if job.run_dir else RunMetrics()).as_dict()


def wait(job_id: int, timeout: float | None = None, poll_s: float = 0.5) -> Job:
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
    from engine.jobs import gpus

    return gpus.gpu_report()


def system_stats() -> dict[str, Any]:
    from engine.jobs import gpus

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
    live = {r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {LIVE_IN}")}
    orphans = [m for m in procs.marked_processes() if m.job_id not in live]
    listed = [{"pid": m.pid, "job": m.job_id, "name": m.name} for m in orphans]
    if dry_run or not orphans:
        return {"dry_run": dry_run, "orphans": listed, "killed": []}
    if daemon_pid() is not None:
        send(Request(Action.RECLAIM)).check()
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
            [sys.executable, "-m", "engine.service", str(paths.state_dir())],
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
    waiting = _db().execute(f"SELECT COUNT(*) FROM jobs WHERE state='queued' OR {LIVE_IN}").fetchone()[0]
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
        if job.live or job.state == JobState.QUEUED:
            send(Request(Action.CANCEL, job.id))  # a refusal (it ended meanwhile) is fine here
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(j.state in LIVE for j in list_jobs()):
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
