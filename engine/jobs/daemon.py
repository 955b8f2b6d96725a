"""The daemon: one per state dir (flock), the only writer of job state.

Run as a process by engine/service.py (`python -m engine.service`), which plugs in the download supervisor.
Each tick it answers client requests (engine/jobs/protocol.py), supervises live jobs (progress, exits, hang
watchdog, graceful-stop deadlines) and starts queued jobs whose resources are free. Before every
launch, after every job and at start it sweeps orphans that carry our marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine import proctitle
from engine.jobs import (
    cgroup,
    classify,
    create,
    gpus,
    launch,
    lock,
    oomlog,
    oplock,
    ports,
    procs,
    protocol,
    record,
    store,
    verbs,
)
from engine.jobs.health import Health
from engine.jobs.job import LIVE_IN, Job, JobState
from engine.jobs.lock import acquire_lock
from engine.jobs.progress import Progress, eta_seconds, feed_line, log_tail, rank_log, seeded
from engine.jobs.protocol import Action, Request, Result
from engine.jobs.wake import Wake
from profiles.document import TomlFile
from statefiles import paths, settings
from statefiles.atomic import atomic_write_text
from statefiles.logtail import LogFollower, read_regular

TICK_S = 0.5
UNWATCHED_GAP_S = 5.0  # a tick gap beyond this was the daemon not watching (stopped, down, swapped out)
LAUNCH_S = 60.0  # a claimed job gets this long to show its shim's pid
PID_SCAN_S = 5.0
LOCK_CHECK_S = 10.0  # a job silent this long before its first step is checked for stale build locks  # how often each job's process list is refreshed (for OOM records after it ends)


class Refused(Exception):
    """A request handler's refusal; the client gets `Result(ok=False, message)` and shows the message."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Watch:
    """What the daemon knows about one live job between ticks."""

    followers: list[LogFollower]
    progress: Progress = field(default_factory=Progress)
    first_step_at: float | None = None
    global_batch: int | None = None
    tail: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    # Seconds without progress, counted only while this daemon watched (a daemon that was down or stopped
    # never counts against a job); reset by each new step.
    silent_s: float = 0.0
    seen_at: float = field(default_factory=time.monotonic)
    # Every pid seen in the job, so the kernel's OOM records can be matched to it after the job is gone.
    pids: set[int] = field(default_factory=set)
    error: str | None = None  # the last supervision error reported for this job (each reported once)
    locks_at: float = 0.0  # when this job's start-up was last checked for stale build locks


class Downloads(Protocol):
    """What the daemon asks of the model downloads it also runs (engine/models/supervisor.py
    DownloadSupervisor); handed in by engine/service.py so this package never imports engine.models."""

    def tick(self) -> None: ...
    def cancel(self, dl_id: str) -> Result: ...
    def resume(self, dl_id: str) -> Result: ...


# Builds the downloads side, given the daemon's event logger.
DownloadsFactory = Callable[[Callable[[str], None]], Downloads]


class Daemon:
    def __init__(self, lock_fd: int | None = None, downloads: DownloadsFactory | None = None) -> None:
        self.lock_fd = lock_fd
        self.health = Health()
        self.conn = store.connect()
        self.store_id = store.file_identity()
        self.pids_at = 0.0  # when the live jobs' processes were last noted (one process scan for all jobs)
        self.watches: dict[int, Watch] = {}
        self.running = True
        self.has_nvidia = bool(gpus.gpu_report())
        self.need_sweep = True
        self.port_reservations: dict[int, int | None] = {}  # job id -> fd holding the machine-wide port reservation
        self.downloads = downloads(lambda message: self.event(None, "download", message)) if downloads else None
        self._download_error: str | None = None

    # ----- lifecycle -------------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.event(None, "daemon", f"daemon started (pid {os.getpid()})")
        wake = Wake()  # clients poke it so a new download or request is handled now, not a tick later
        self.guarded(self.reattach)
        while self.running:
            started = time.monotonic()
            if self.lock_fd is not None and not lock.still_holds(self.lock_fd):
                # Someone deleted or replaced daemon.lock and another daemon may own this state dir now: two
                # daemons would launch the same jobs, so this one leaves (jobs keep running, the other adopts them).
                self.log(f"lost the daemon lock {lock.lock_path()} (deleted or replaced): leaving")
                self.event(None, "daemon", f"daemon {os.getpid()} lost its lock file and left")
                break
            delay = self.guarded(self.tick)
            procs._reap_children()
            wake.wait(max(0.05, TICK_S - (time.monotonic() - started)) + delay)
        wake.close()
        self.event(None, "daemon", "daemon stopped (jobs left running)")

    def guarded(self, step: Callable[[], None]) -> float:
        """Run one step; an error (a locked, full or broken store) is logged and retried with backoff, never
        allowed to end the daemon. Returns the extra wait before the next tick."""
        try:
            step()
        except Exception as exc:  # one bad tick must not stop supervision of every job for good
            delay = self.health.failed(exc)
            if self.health.should_log():
                self.log(f"{self.health.summary()}; retrying in {delay:.0f}s")
            self.health.save()
            return delay
        if self.health.failures:
            self.log(f"recovered after {self.health.failures} failed tick(s)")
            self.health.recovered()
            self.health.save()
            self.event(None, "daemon", "store writes work again")
        return 0.0

    def log(self, message: str) -> None:
        # stderr is daemon.log: the one place that still works when the store does not.
        with contextlib.suppress(OSError, ValueError):
            print(time.strftime("%Y-%m-%d %H:%M:%S"), message, file=sys.stderr, flush=True)

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.running = False

    def check_store(self) -> None:
        """Re-open the store when its file was deleted or replaced under us, and bring back (from their folders)
        the jobs the new file lacks: otherwise this daemon would supervise a dead file while clients queue into
        the new one, and its sweep would take the running jobs for orphans."""
        if store.file_identity() == self.store_id:
            return
        from engine.jobs import repair

        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self.conn = store.connect()
        self.store_id = store.file_identity()
        report = repair.RepairReport()
        repair.recover_folders(self.conn, report)
        self.log(f"the store {paths.store_path()} was deleted or replaced: re-opened it; " + "; ".join(report.lines()))
        self.event(None, "daemon", f"store file replaced under the daemon: re-opened, {len(report.recovered)} job(s)"
                   " recovered from their folders")

    def tick(self) -> None:
        self.check_store()
        self.tick_downloads()  # first: a worker that died since the last tick is still unreaped, so its exit is known
        self.apply_requests()
        self.supervise()
        if self.need_sweep:  # a job ended: reclaim now, not only at the next launch
            self.sweep()
        self.schedule()

    def tick_downloads(self) -> None:
        if self.downloads is None:
            return
        try:
            self.downloads.tick()
            self._download_error = None
        except Exception as exc:  # downloads must never stop job supervision; say so once, not every tick
            if repr(exc) != self._download_error:
                self._download_error = repr(exc)
                self.event(None, "error", f"download supervision failed: {exc!r}")

    def event(self, job_id: int | None, kind: str, message: str) -> None:
        """Record an event; best effort (an event that cannot be written goes to daemon.log instead)."""
        try:
            with store.transaction(self.conn):
                store.add_event(self.conn, job_id, kind, message)
        except sqlite3.Error as exc:
            self.log(f"could not record event ({exc}): job {job_id} {kind}: {message}")

    def set_job(self, job_id: int, **fields: Any) -> None:
        with store.transaction(self.conn):
            store.update_job(self.conn, job_id, **fields)

    def job(self, job_id: int) -> Job | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def live_jobs(self) -> list[Job]:
        return [Job.from_row(r) for r in self.conn.execute(f"SELECT * FROM jobs WHERE {LIVE_IN}").fetchall()]

    # ----- start-up: find jobs that ran while no daemon watched ------------------------------------
    def reattach(self) -> None:
        for job in self.live_jobs():
            if job.port:
                # Take the reservation back for jobs that ran on while no daemon held it.
                fd = ports.reserve(job.port)
                if fd is not None:
                    self.port_reservations[job.id] = fd
            self.watches[job.id] = self._new_watch(job)
            if procs.is_same_process(job.pid, job.pid_ctime) or (Path(job.job_dir) / "exit.json").exists():
                self.event(job.id, "reattach", "daemon re-attached to the running job")
            else:
                self.event(job.id, "reattach", "the job's shim is gone: reclaiming and marking interrupted")
                self.finish(job.id, forced_reason="interrupted")
        self.sweep()

    # ----- requests (engine/jobs/protocol.py): one handler per Action, looked up in HANDLERS ----------
    def apply_requests(self) -> None:
        for req_id, request in protocol.pending_requests(self.conn):
            result = request if isinstance(request, Result) else self.handle_request(request)
            protocol.write_result(self.conn, req_id, result)

    def handle_request(self, request: Request) -> Result:
        """The daemon's answer to one request: its handler's Result, or the refusal (the client shows it)."""
        try:
            return HANDLERS[request.action](self, request)
        except Refused as exc:
            return Result(False, str(exc), code=exc.code)
        except Exception as exc:  # answered, never retried: a handler may have acted before it failed
            return Result(False, f"{request.action} failed: {exc}")

    def requested_job(self, request: Request) -> Job:
        job = self.job(request.job_id) if request.job_id is not None else None
        if job is None:
            raise Refused(f"no job {request.job_id}")
        return job

    def on_pause(self, request: Request) -> Result:
        store.set_setting(self.conn, "paused", "1")
        return Result(True, "queue paused")

    def on_unpause(self, request: Request) -> Result:
        store.set_setting(self.conn, "paused", "0")
        return Result(True, "queue unpaused")

    def on_reclaim(self, request: Request) -> Result:
        killed = self.sweep()
        return Result(True, f"reclaimed {len(killed)} orphan process(es)", killed=[m.pid for m in killed])

    def on_cancel(self, request: Request) -> Result:
        job = self.allowed_job(request)
        if job.state == JobState.QUEUED:
            self.set_job(job.id, state=JobState.CANCELLED, exit_reason="cancelled", ended_at=time.time())
            self.record_end(job.id)
            self.event(job.id, "cancel", "cancelled while queued")
            return Result(True, f"job {job.id} cancelled")
        if job.live:
            self.watches.setdefault(job.id, self._new_watch(job)).cancel_requested = True
            self.set_job(job.id, state=JobState.STOPPING)
            self.kill_job(job)
            return Result(True, f"job {job.id} cancelling")
        raise Refused(f"job {job.id} cannot be cancelled ({job.state})")  # a state verbs.REFUSALS missed

    def on_stop(self, request: Request) -> Result:
        job = self.allowed_job(request)
        if job.state == JobState.QUEUED:
            return self.on_cancel(request)
        return self.graceful_stop(job)

    def on_retry(self, request: Request) -> Result:
        job = self.allowed_job(request)
        new_id = self.clone_job(job, None)
        return Result(True, f"job {new_id} queued (retry of {job.id})", new_job=new_id)

    def on_resume(self, request: Request) -> Result:
        job = self.allowed_job(request)
        assert job.run_dir  # verbs.REFUSALS checked it
        new_id = self.clone_job(job, Path(job.run_dir).name)
        return Result(True, f"job {new_id} queued (resume of {job.id})", new_job=new_id)

    def allowed_job(self, request: Request) -> Job:
        """The request's job, when engine/jobs/verbs.py allows the action on it (the deck asks the same)."""
        job = self.requested_job(request)
        reason = verbs.refusal(request.action, job)
        if reason:
            raise Refused(reason)
        return job

    def on_move(self, request: Request) -> Result:
        job = self.allowed_job(request)
        return self.move(job, request.arg or "")

    def on_cancel_download(self, request: Request) -> Result:
        assert request.arg is not None  # Request checks it
        return self.running_downloads().cancel(request.arg)

    def on_resume_download(self, request: Request) -> Result:
        assert request.arg is not None
        return self.running_downloads().resume(request.arg)

    def running_downloads(self) -> Downloads:
        if self.downloads is None:
            raise Refused("this daemon runs no downloads (started without engine/service.py)")
        return self.downloads

    def move(self, job: Job, where: str) -> Result:
        queued = [
            dict(r)
            for r in self.conn.execute("SELECT id, queue_pos FROM jobs WHERE state='queued' ORDER BY queue_pos, id")
        ]
        ids = [r["id"] for r in queued]
        i = ids.index(job.id)
        if where == "up" and i > 0:
            ids[i - 1], ids[i] = ids[i], ids[i - 1]
        elif where == "down" and i < len(ids) - 1:
            ids[i + 1], ids[i] = ids[i], ids[i + 1]
        elif where == "top":
            ids.insert(0, ids.pop(i))
        elif where == "bottom":
            ids.append(ids.pop(i))
        elif where not in ("up", "down"):
            raise Refused(f"move where? expected {', '.join(protocol.MOVES)}, found {where!r}")
        with store.transaction(self.conn):
            for pos, jid in enumerate(ids):
                self.conn.execute("UPDATE jobs SET queue_pos=? WHERE id=?", (float(pos), jid))
        return Result(True, f"job {job.id} moved {where}")

    def clone_job(self, job: Job, resume_from: str | None) -> int:
        src = Path(job.job_dir)
        return create.insert_job(
            conn=self.conn,
            name=job.name,
            profile=job.profile,
            backend=job.backend,
            gpus=job.gpus,
            num_gpus=job.num_gpus,
            priority=job.priority,
            after=None,
            frozen_from=src,
            resume_from=resume_from,
            parent_id=job.id,
            hang_timeout_s=job.hang_timeout_s,
            launcher_args=job.launcher_args,
        )

    def graceful_stop(self, job: Job) -> Result:
        run_dir = job.run_dir or self._guess_run_dir(job)
        if not run_dir:
            # Not yet training: nothing to checkpoint, so a stop is a cancel.
            return self.on_cancel(Request(Action.CANCEL, job.id))
        Path(run_dir, "save_quit").touch()
        timeout = float(settings.load().scheduler.stop_timeout_s)
        self.watches.setdefault(job.id, self._new_watch(job)).cancel_requested = True
        self.set_job(job.id, state=JobState.STOPPING, stop_deadline=time.time() + timeout)
        self.event(job.id, "stop", f"asked the trainer to checkpoint and quit (save_quit in {run_dir})")
        return Result(True, f"job {job.id} stopping after a checkpoint (timeout {timeout:.0f}s)")

    def _guess_run_dir(self, job: Job) -> str | None:
        """diffusion-pipe prints no run folder: take the newest timestamped folder made since the job started."""
        try:
            out = Path(TomlFile.load(Path(job.job_dir) / "main.toml").get("output_dir") or "")
        except Exception:
            return None
        if not out.is_dir() or not job.started_at:
            return None
        newest = None
        for child in out.iterdir():
            if child.is_dir() and child.stat().st_mtime >= job.started_at - 2:
                if newest is None or child.stat().st_mtime > newest.stat().st_mtime:
                    newest = child
        return str(newest) if newest else None

    # ----- supervision -----------------------------------------------------------------------------
    def _new_watch(self, job: Job) -> Watch:
        job_dir = Path(job.job_dir)
        followers = [LogFollower(job_dir / "output.log")]
        watch = Watch(followers=followers, progress=seeded(_frozen_config(job_dir / "main.toml")))
        parent = self.job(job.parent_id) if job.parent_id else None
        if parent is not None and parent.total_steps and watch.progress.total_steps is None:
            # A resume runs the parent's frozen profile on the same data: its total holds, while the console
            # would need two epoch lines to tell it again.
            watch.progress.total_steps = parent.total_steps
        watch.global_batch = _global_batch(job_dir / "main.toml", job)
        return watch

    def supervise(self) -> None:
        live = self.live_jobs()
        self.note_pids()
        for job in live:
            watch = self.watches.get(job.id) or self.watches.setdefault(job.id, self._new_watch(job))
            try:
                self.supervise_job(job, watch)
            except sqlite3.Error:
                raise  # the store itself failed: the whole tick backs off
            except Exception as exc:  # one job's bad data must not stall the others' supervision
                if repr(exc) != watch.error:
                    watch.error = repr(exc)
                    self.event(job.id, "error", f"supervising job {job.id} failed: {exc!r}")

    def note_pids(self) -> None:
        """Every few seconds, one scan of the processes notes each watched job's pids (for OOM records)."""
        now_mono = time.monotonic()
        if not self.watches or now_mono - self.pids_at < PID_SCAN_S:
            return
        self.pids_at = now_mono
        for m in procs.marked_processes():
            if m.job_id in self.watches:
                self.watches[m.job_id].pids.add(m.pid)

    def supervise_job(self, job: Job, watch: Watch) -> None:
        now_mono = time.monotonic()
        # A gap far longer than a tick is time this daemon did not watch (stopped, suspended, a long sweep):
        # it never counts toward the hang timeout.
        watch.silent_s += min(now_mono - watch.seen_at, UNWATCHED_GAP_S)
        watch.seen_at = now_mono
        if self.follow_logs(job, watch):
            watch.silent_s = 0.0
        if watch.progress.step is None and watch.silent_s > LOCK_CHECK_S and now_mono - watch.locks_at > LOCK_CHECK_S:
            # Quiet before its first step: it may wait on a build lock a killed builder left behind.
            watch.locks_at = now_mono
            for baton in oplock.clear_stale():
                self.event(job.id, "reclaim", f"cleared a stale torch extension build lock {baton} this job was"
                           " waiting on (no process was building)")
        job_dir = Path(job.job_dir)
        if (job_dir / "exit.json").exists():
            self.finish(job.id)
            return
        if job.pid is None and job.state == JobState.STARTING and time.time() - (job.started_at or 0) < LAUNCH_S:
            return  # claimed and being launched (by this daemon in this tick, or by one that lost its lock)
        if not procs.is_same_process(job.pid, job.pid_ctime):
            # The shim died without recording an exit (SIGKILL, OOM killer).
            self.finish(job.id, forced_reason="cancelled" if watch.cancel_requested else "interrupted")
            return
        now = time.time()
        if job.state == JobState.STARTING and (job_dir / "child.json").exists():
            self.set_job(job.id, state=JobState.RUNNING)
        if job.state == JobState.STOPPING and job.stop_deadline and now > job.stop_deadline:
            self.event(job.id, "stop", "graceful stop timed out: cancelling")
            self.kill_job(job)
        hang = job.hang_timeout_s or float(settings.load().scheduler.hang_timeout_s)
        if job.state in (JobState.STARTING, JobState.RUNNING) and watch.silent_s > hang:
            self.event(job.id, "hung", f"no progress for {watch.silent_s:.0f}s while watched (timeout {hang:.0f}s)")
            self.dump_stacks(job)
            self.set_job(job.id, state=JobState.STOPPING, exit_reason="hung")
            self.kill_job(job)

    def follow_logs(self, job: Job, watch: Watch, *, to_end: bool = False) -> bool:
        """Read what the job's logs gained since the last tick into the store; True when the job progressed."""
        job_dir = Path(job.job_dir)
        rank0 = rank_log(job_dir, 0)
        if rank0 and all(f.path != rank0 for f in watch.followers):
            watch.followers.append(LogFollower(rank0))
        lines: list[str] = []
        for follower in watch.followers:
            lines.extend(follower.read_to_end() if to_end else follower.read_lines())
        if not lines:
            return False
        watch.tail = (watch.tail + lines)[-200:]
        prog = watch.progress
        before = prog.step
        for line in lines:
            feed_line(prog, line)
        metrics = prog.take_metrics()
        now = time.time()
        fields: dict[str, Any] = {}
        if prog.step is not None and prog.step != before:
            if watch.first_step_at is None:
                watch.first_step_at = now
            fields["last_progress_at"] = now
            total = prog.total_steps or job.total_steps
            fields["eta_s"] = eta_seconds(
                prog.step, total, job.started_at, watch.first_step_at, prog.samples_per_s, watch.global_batch
            )
        for key in ("step", "total_steps", "epoch", "total_epochs", "loss", "lr", "samples_per_s"):
            value = getattr(prog, key)
            if value is not None and value != getattr(job, key):
                fields[key] = value
        if not prog.run_dir and not job.run_dir and prog.step is not None:
            # diffusion-pipe never prints its run folder: find the timestamped folder it made.
            saved = next((s["path"] for s in prog.saves if Path(s.get("path") or "").is_absolute()), None)
            prog.run_dir = str(Path(saved).parent) if saved else self._guess_run_dir(job)
        if prog.run_dir and prog.run_dir != job.run_dir:
            fields["run_dir"] = prog.run_dir
        if job.state == JobState.STARTING:
            fields["state"] = "running"
        with store.transaction(self.conn):
            if fields:
                store.update_job(self.conn, job.id, **fields)
            for m in metrics:
                self.conn.execute(
                    "INSERT OR REPLACE INTO metrics(job_id, step, epoch, loss, lr, samples_per_s, t)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job.id, m["step"], m["epoch"], m["loss"], m["lr"], m["samples_per_s"], m["t"]),
                )
        # Before the first step any output is progress (loading weights, caching latents print bars for
        # minutes); after it, only a new step is.
        return prog.step is None or prog.step != before

    def dump_stacks(self, job: Job) -> None:
        import shutil

        spy = shutil.which("py-spy")
        if not spy:
            return
        out = Path(job.job_dir) / "hang-stacks.txt"
        with open(out, "w") as fh:
            for m in procs.marked_processes(job.id):
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run([spy, "dump", "--pid", str(m.pid)], stdout=fh, stderr=fh, timeout=20)

    def kill_job(self, job: Job) -> None:
        victims = procs.marked_processes(job.id)
        procs.kill_marked(victims, grace_s=5.0)

    def finish(self, job_id: int, forced_reason: str | None = None) -> None:
        """Clean up after a job's end: sweep its processes, verify, release leases, record why it ended."""
        job = self.job(job_id)
        if job is None:
            return
        watch = self.watches.pop(job_id, None) or self._new_watch(job)
        self.follow_logs(job, watch, to_end=True)  # the end of the run decides how it is classified
        self.set_job(job_id, state=JobState.CLEANUP)
        survivors = procs.kill_marked(procs.marked_processes(job_id), grace_s=5.0)
        port_busy = bool(job.port) and job.port in ports.listening_ports()
        if port_busy:
            deadline = time.time() + 10
            while time.time() < deadline and job.port in ports.listening_ports():
                time.sleep(0.2)
            port_busy = job.port in ports.listening_ports()
        exit_info: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            exit_info = json.loads(read_regular(Path(job.job_dir) / "exit.json") or b"{}")
        returncode = exit_info.get("returncode")
        tail = watch.tail or log_tail(Path(job.job_dir))
        oom: list[str] = []
        if returncode in classify.SIGKILL_CODES:
            oom = oomlog.oom_kills(watch.pids | _pids_of(Path(job.job_dir), job), job.started_at or 0.0)
            kills = cgroup.oom_kills(job_id, Path(job.job_dir))
            if kills:
                oom.append(f"the job's cgroup counted {kills} OOM kill(s) (memory.events oom_kill)")
        if watch.progress.complete:
            # `TRAINING COMPLETE!` came after the last save: whatever died in the cleanup after it (the shim, the
            # launcher, a rank, a watchdog's kill), the training itself is done.
            reason = "completed"
        elif watch.progress.manual_quit:
            # diffusion-pipe saved its checkpoint on save_quit and exited: resumable, whoever touched the file.
            reason = "save_quit"
        elif job.exit_reason == "hung":
            reason = "hung"
        elif forced_reason == "interrupted" and returncode is None:
            reason = "interrupted"
        elif watch.cancel_requested or forced_reason == "cancelled":
            reason = "cancelled"
        else:
            reason = classify.classify(returncode, tail, complete_seen=watch.progress.complete, oom_evidence=oom,
                                       manual_quit=watch.progress.manual_quit)
        state = classify.state_for(reason)
        fields: dict[str, Any] = {
            "state": state,
            "exit_reason": reason,
            "ended_at": exit_info.get("ended_at") or time.time(),
            "evidence": [] if reason in classify.CLEAN_ENDS
            else classify.evidence(tail) + classify.kill_note(returncode, oom),
        }
        if reason == "completed" and job.total_steps:
            fields["eta_s"] = 0.0
        if reason == "completed" and returncode != 0:
            how = "the shim vanished" if returncode is None else f"the launcher exited with {returncode}"
            self.event(job_id, "end", f"training completed; {how} during the cleanup after it")
        with store.transaction(self.conn):
            store.update_job(self.conn, job_id, **fields)
            if not survivors and not port_busy:
                self.conn.execute("DELETE FROM leases WHERE job_id=?", (job_id,))
                ports.release(self.port_reservations.pop(job_id, None))
            store.add_event(
                self.conn, job_id, "end",
                f"{state} ({reason}); returncode {returncode}"
                + (f"; {len(survivors)} process(es) survived the sweep" if survivors else "")
                + ("; master port still listening" if port_busy else ""),
            )
        ended = self.job(job_id) or dataclasses.replace(job, **fields)
        record.write_state(Path(job.job_dir), ended.as_dict())  # the folder's truth
        self.need_sweep = True

    def sweep(self) -> list[procs.Marked]:
        """Kill every marked process whose job is not live; returns what was killed."""
        live = {r[0] for r in self.conn.execute(f"SELECT id FROM jobs WHERE {LIVE_IN}")}
        orphans = [m for m in procs.marked_processes() if m.job_id not in live]
        if orphans:
            procs.kill_marked(orphans)
            self.event(None, "reclaim", f"killed {len(orphans)} orphan process(es): {[m.pid for m in orphans]}")
        procs.drop_job_cgroups(live)
        # After the orphans: a builder killed above leaves its baton, which every later job would wait on.
        for baton in oplock.clear_stale():
            self.event(None, "reclaim", f"cleared a stale torch extension build lock {baton} (no process was building)")
        # Leases of jobs that are no longer live and whose processes are gone are released.
        for job_id in [j for j in self.port_reservations if j not in live]:
            ports.release(self.port_reservations.pop(job_id))
        with store.transaction(self.conn):
            self.conn.execute(f"DELETE FROM leases WHERE job_id NOT IN (SELECT id FROM jobs WHERE {LIVE_IN})")
        self.need_sweep = False
        return orphans

    # ----- scheduling ------------------------------------------------------------------------------
    def schedule(self) -> None:
        if store.get_setting(self.conn, "paused", "0") == "1":
            return
        queued = [
            Job.from_row(r)
            for r in self.conn.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY priority DESC, queue_pos, id")
        ]
        if not queued:
            return
        for job in queued:
            reason = self.blocked_by(job)
            if reason:
                if reason != job.wait_reason:
                    self.set_job(job.id, wait_reason=reason)
                continue
            if self.need_sweep:
                self.sweep()
            try:
                self.start(job)
            except ports.NoFreePort as exc:
                # Someone else holds every port right now: wait and try again next tick, never fail for it.
                ports.release(self.port_reservations.pop(job.id, None))
                if str(exc) != job.wait_reason:
                    self.set_job(job.id, wait_reason=str(exc))
            except Exception as exc:
                ports.release(self.port_reservations.pop(job.id, None))
                self.fail_fast(job, "crashed", f"could not start: {exc}")

    def blocked_by(self, job: Job) -> str | None:
        if job.after_id:
            dep = self.job(job.after_id)
            if dep and not dep.finished:
                return f"waiting for job {job.after_id} to end"
        live = self.conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {LIVE_IN}").fetchone()[0]
        if not self.has_nvidia:
            slots = settings.load().scheduler.cpu_slots
            if live >= slots:
                return f"waiting for a CPU slot ({live}/{slots} busy)"
            return None
        chosen, why = self.choose_gpus(job)
        return why if chosen is None else None

    def choose_gpus(self, job: Job) -> tuple[list[int] | None, str | None]:
        report = gpus.gpu_report()
        leased = {
            int(r[0].split(":")[1]) for r in self.conn.execute("SELECT resource FROM leases WHERE resource LIKE 'gpu:%'")
        }
        min_free = settings.load().scheduler.min_free_mib * 1024 * 1024

        def usable(g: dict[str, Any]) -> str | None:
            if g["index"] in leased:
                return f"GPU {g['index']} is in use by another dpdeck job"
            foreign = [p for p in g["processes"] if not p["ours"]]
            if foreign:
                return f"GPU {g['index']} has a foreign compute process (pid {foreign[0]['pid']} {foreign[0]['name']})"
            if g["mem_free"] < min_free:
                return f"GPU {g['index']} has only {g['mem_free'] // 2**20} MiB free"
            return None

        if job.gpus:
            for idx in job.gpus:
                if idx >= len(report):
                    return None, f"GPU {idx} does not exist (this machine has {len(report)})"
                why = usable(report[idx])
                if why:
                    return None, why
            return list(job.gpus), None
        want = job.num_gpus or 1
        if want > len(report):
            return None, f"{want} GPUs requested, this machine has {len(report)}"
        free = [g["index"] for g in report if usable(g) is None]
        if len(free) < want:
            return None, f"waiting for {want} free GPU(s) ({len(free)} free)"
        return free[:want], None

    def fail_fast(self, job: Job, reason: str, message: str) -> None:
        now = time.time()
        self.set_job(
            job.id, state=classify.state_for(reason), exit_reason=reason, ended_at=now, started_at=now,
            evidence=[message], wait_reason=None,
        )
        self.record_end(job.id)
        self.event(job.id, "end", message)

    def record_end(self, job_id: int) -> None:
        """The job folder's own record of how it ended (and its unused secrets dropped): see record.py."""
        job = self.job(job_id)
        if job is not None:
            record.write_state(Path(job.job_dir), job.as_dict())

    def claim(self, job_id: int) -> bool:
        """Take a queued job for launching, atomically: a second daemon (its lock file deleted under the first)
        must never launch the same job. False when the job is no longer queued or this daemon lost its lock."""
        if self.lock_fd is not None and not lock.still_holds(self.lock_fd):
            self.running = False
            return False
        with store.transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE jobs SET state='starting', started_at=? WHERE id=? AND state='queued'", (time.time(), job_id)
            )
        return cur.rowcount == 1

    def start(self, job: Job) -> None:
        job_dir = Path(job.job_dir)
        problem = _preflight(job_dir)
        if problem:
            self.fail_fast(job, problem[0], problem[1])
            return
        if job.gpus and not self.has_nvidia:
            self.fail_fast(job, "config_error", f"GPUs {job.gpus} requested but this machine has no NVIDIA GPU")
            return
        chosen: list[int] | None = None
        if self.has_nvidia:
            chosen, why = self.choose_gpus(job)
            if chosen is None:
                self.set_job(job.id, wait_reason=why)
                return
        taken = {int(r[0].split(":")[1]) for r in self.conn.execute("SELECT resource FROM leases WHERE resource LIKE 'port:%'")}
        configured = settings.load().ports
        low, high = configured.low, configured.high
        port, reservation = ports.pick_and_reserve(taken, (low, high))
        self.port_reservations[job.id] = reservation
        try:
            argv, cwd = launch.build_command(
                job.backend, job_dir / "main.toml", port,
                gpus=chosen, num_gpus=job.num_gpus if not chosen else None, has_nvidia=self.has_nvidia,
                rank_log_dir=job_dir / "ranks", resume_from=job.resume_from,
                extra_launcher_args=job.launcher_args,
            )
        except launch.EnqueueError as exc:  # the backend's set-up changed since the enqueue
            ports.release(self.port_reservations.pop(job.id, None))
            self.fail_fast(job, "config_error", str(exc))
            return
        if job.resume_from:
            # A save_quit left from the stop that preceded this resume would end the new run at once.
            out_dir = TomlFile.load(job_dir / "main.toml").get("output_dir")
            if isinstance(out_dir, str):
                with contextlib.suppress(OSError):
                    (Path(out_dir) / job.resume_from / "save_quit").unlink(missing_ok=True)
        base_env = launch.captured_env(job_dir)  # the enqueuing client's environment, never the daemon's
        env = launch.job_env(job.id, self.has_nvidia, base_env)
        for stale in ("exit.json", "child.json"):
            with contextlib.suppress(FileNotFoundError):
                (job_dir / stale).unlink()
        launch.write_launch_spec(job_dir, job_dir, argv, cwd, env, job_dir / "output.log")
        shim_env = launch.shim_env(base_env, env)
        if not self.claim(job.id):
            return
        with open(job_dir / "shim.log", "ab") as shim_log:
            shim = subprocess.Popen(
                [sys.executable, "-m", "engine.jobs.shim", str(job_dir)],
                cwd=cwd, env=shim_env, stdin=subprocess.DEVNULL, stdout=shim_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import psutil

        ctime = psutil.Process(shim.pid).create_time()
        now = time.time()
        with store.transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO leases(resource, job_id, t) VALUES (?, ?, ?)", (f"port:{port}", job.id, now))
            for g in chosen or []:
                self.conn.execute("INSERT OR REPLACE INTO leases(resource, job_id, t) VALUES (?, ?, ?)", (f"gpu:{g}", job.id, now))
            store.update_job(
                self.conn, job.id, state=JobState.STARTING, port=port, pid=shim.pid, pid_ctime=ctime, pgid=shim.pid,
                started_at=now, wait_reason=None, gpus=chosen if chosen else job.gpus, last_progress_at=now,
            )
            store.add_event(self.conn, job.id, "start", f"started on port {port}: {' '.join(argv)}")
        self.watches[job.id] = self._new_watch(self.job(job.id) or job)


# The daemon's one handler per client request (engine/jobs/protocol.py); tests check every Action has one.
HANDLERS: dict[Action, Callable[[Daemon, Request], Result]] = {
    Action.PAUSE: Daemon.on_pause,
    Action.UNPAUSE: Daemon.on_unpause,
    Action.RECLAIM: Daemon.on_reclaim,
    Action.CANCEL: Daemon.on_cancel,
    Action.STOP: Daemon.on_stop,
    Action.RETRY: Daemon.on_retry,
    Action.RESUME: Daemon.on_resume,
    Action.MOVE: Daemon.on_move,
    Action.CANCEL_DOWNLOAD: Daemon.on_cancel_download,
    Action.RESUME_DOWNLOAD: Daemon.on_resume_download,
}


def _frozen_config(main_toml: Path) -> dict[str, Any] | None:
    try:
        return TomlFile.load(main_toml).data()
    except Exception:
        return None


def _global_batch(main_toml: Path, job: Job) -> int | None:
    try:
        doc = TomlFile.load(main_toml)
    except Exception:
        return None
    mbs = doc.get("micro_batch_size_per_gpu") or 1
    gas = doc.get("gradient_accumulation_steps") or 1
    stages = doc.get("pipeline_stages") or 1
    world = len(job.gpus) if job.gpus else (job.num_gpus or 1)
    try:
        return int(mbs) * int(gas) * max(1, int(world) // int(stages))
    except (TypeError, ValueError):
        return None


def _pids_of(job_dir: Path, job: Job) -> set[int]:
    """The pids a job's own files name (the shim, the launcher), for matching kernel OOM records."""
    pids = {job.pid} if job.pid else set()
    with contextlib.suppress(ValueError, TypeError, KeyError):
        pids.add(int(json.loads(read_regular(job_dir / "child.json") or b"{}")["pid"]))
    return pids


def _preflight(job_dir: Path) -> tuple[str, str] | None:
    """Fail fast on what would only fail minutes later inside the launcher."""
    try:
        main = TomlFile.load(job_dir / "main.toml")
    except Exception as exc:
        return "config_error", f"frozen profile unreadable: {exc}"
    out = main.get("output_dir")
    if isinstance(out, str):
        out_path = Path(out).expanduser()
        try:
            out_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return "config_error", f"output_dir {out_path} cannot be created: {exc.strerror}"
        if not os.access(out_path, os.W_OK):
            return "config_error", f"output_dir {out_path} is not writable"
    ds = main.get("dataset")
    if isinstance(ds, str) and not Path(ds).exists():
        return "missing_file", f"dataset file {ds} is missing"
    if isinstance(ds, str):
        try:
            data = TomlFile.load(Path(ds)).data()
        except Exception as exc:
            return "config_error", f"dataset file {ds}: {exc}"
        for i, d in enumerate(data.get("directory") or []):
            p = d.get("path") if isinstance(d, dict) else None
            if isinstance(p, str) and not Path(p).expanduser().is_dir():
                return "missing_file", f"dataset directory[{i}].path {p} does not exist"
    return None


def main(downloads: DownloadsFactory | None = None) -> int:
    """Run the daemon for this state dir in this process, until SIGTERM; 1 when another one already runs."""
    fd = acquire_lock()
    if fd is None:
        print(f"dpdeck: a daemon already runs for {paths.state_dir()}", file=sys.stderr)
        return 1
    atomic_write_text(paths.state_dir() / "daemon.pid", str(os.getpid()))
    proctitle.set_title("daemon", home=paths.state_dir())
    Daemon(lock_fd=fd, downloads=downloads).run()
    return 0
