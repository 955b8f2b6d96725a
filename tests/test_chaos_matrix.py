"""The chaos matrix: SIGKILL each part of a job at each phase of its life; the next job must still complete.

Targets: the daemon, the per-job shim, the runner (the `deepspeed` script), launch.py
(deepspeed.launcher.launch) and one rank of a 2-rank job (CPU, gloo). Phases: the job queued, then the fake
trainer's own phases (tests/fake_diffusion_pipe/train.py, which pauses at `pause_at` and says where in
`fake-phase`): starting (before init_process_group), op_build (DeepSpeed's JIT op build under torch's real
FileBaton), cache, first_step, training, saving (a LoRA, epochN/tmp/ present), checkpoint (global_stepN/
written, `latest` not yet) and cleanup (after `TRAINING COMPLETE!`, before exit).

Which cells exist, and why:
- queued x daemon only: a queued job has no shim, runner, launch.py or rank yet. The daemon must be alive
  while the job is queued, so the queue is paused for that cell (unpaused after the daemon's restart).
- every trainer phase x all five targets: from `starting` on, all of shim, runner, launch.py and the ranks
  exist (the ranks are spawned before they reach init_process_group), so 8 x 5 cells.
- one more row: the daemon SIGSTOPped for longer than the job's hang timeout, then SIGCONT.
The rank killed is the one doing the phase's work: rank 0 for cache/saving/checkpoint, the rank holding the
op-build baton for op_build, the last rank (not the master's) for the others.

Each cell: a victim job paused at the phase, SIGKILL of the target, the victim's fate (a final state with a
reason; `completed` for the daemon target, whose death touches none of the job's processes, and never
`completed` for a kill before `TRAINING COMPLETE!`), then a next job that must complete. After each job: no
marked process left, no member of its process tree alive, its master port not listening; at the end no
torch-extension baton (`lock`) under $TORCH_EXTENSIONS_DIR, no port reservation held, no lease row left.
The table (phase x target: pass/FAIL, the killed job's final state, seconds) prints at the end of the run
(tests/conftest.py pytest_terminal_summary) even when cells fail.

Cost: every job starts three interpreters that import torch (runner, launch.py, rank), ~12 CPU-s per job, so
the cells run in DPDECK_CHAOS_LANES (default 2) parallel subprocesses, each cell with its own state dir,
daemon, TORCH_EXTENSIONS_DIR and port range. One cell: `-k op_build-shim`; in the pytest process, to debug:
DPDECK_CHAOS_LANES=0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from engine_helpers import (
    job_report,
    make_profile,
    open_holders,
    port_listeners,
    port_reservation_holders,
    process_tree,
    read_phase,
    setup_engine,
    still_alive,
    teardown_engine,
    wait_for,
    wait_step,
)

from engine.jobs import client, procs, store
from engine.jobs.job import Job
from statefiles import settings

pytestmark = pytest.mark.slow

FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")
TRAINER_PHASES = ("starting", "op_build", "cache", "first_step", "training", "saving", "checkpoint", "cleanup")
TARGETS = ("daemon", "shim", "runner", "launch.py", "rank")
CELLS = [("queued", "daemon")] + [(phase, target) for phase in TRAINER_PHASES for target in TARGETS]
SIGSTOP_ROW = "SIGSTOP>hang"
# Ports no other test uses, so a listener found on "our" port is ours (other suites use 29500+).
PORTS = (31000, 31999)
# Cells run in this many parallel lanes (subprocesses, each cell with its own state dir, daemon and ports):
# a cell is ~80% CPU-bound process start-up on one core. 0 runs them in the pytest process, one by one.
LANES = int(os.environ.get("DPDECK_CHAOS_LANES", "2"))
IN_PROCESS_LANE = 9  # the port range of cells run in the pytest process (the SIGSTOP row, or LANES=0)
PHASE_TIMEOUT_S = 150.0  # enqueue -> the victim at its phase, on 2 busy cores
END_TIMEOUT_S = 120.0  # kill -> the victim's end recorded
NEXT_TIMEOUT_S = 200.0  # enqueue -> the next job completed
HANG_S = 20.0  # the SIGSTOP row's hang timeout: above the 10-15 s from launch to the first step on 2 cores
STOP_S = HANG_S + 5.0
STALE_BATON_S = 6.0  # a baton nobody holds open for this long while the next job runs: it will wait forever

# (phase, target) -> {"ok", "state" (the killed job's final state), "seconds", "error"}; conftest's
# pytest_terminal_summary prints it through matrix_table().
RESULTS: dict[tuple[str, str], dict[str, object]] = {}


class CellFailure(AssertionError):
    """A cell's verdict: the message says what was expected, what happened, and the job's full report."""


@dataclass
class Chaos:
    root: Path
    extensions: Path


def prepare_engine(ports: tuple[int, int]) -> None:
    setup_engine(cpu_slots=1)
    settings.set_value("ports.low", str(ports[0]))
    settings.set_value("ports.high", str(ports[1]))


def lane_ports(lane: int) -> tuple[int, int]:
    # A range per lane: a port one lane's job just freed is never "still listening" because of another lane.
    return PORTS[0] + 100 * lane, PORTS[0] + 100 * lane + 99


@pytest.fixture
def chaos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chaos]:
    prepare_engine(lane_ports(IN_PROCESS_LANE))
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    # Before the first enqueue: the daemon it starts hands the client's environment to every job.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    yield Chaos(tmp_path, extensions)
    teardown_engine()


# ----- the jobs --------------------------------------------------------------------------------------------


def enqueue_victim(chaos: Chaos, phase: str, target: str) -> int:
    # Long enough pauses for a kill that ends the job; a short one where the job is meant to survive.
    pause_s = 3.0 if target == "daemon" else 90.0
    fake = {"pause_at": phase, "pause_s": pause_s} if phase in TRAINER_PHASES else {}
    main = make_profile(chaos.root, name="victim", epochs=2, steps_per_epoch=3, sleep_s=0.1, op_build_s=1.0,
                        **fake)
    return client.enqueue(str(main), name="victim", num_gpus=2 if target == "rank" else None)


def enqueue_next(chaos: Chaos) -> int:
    main = make_profile(chaos.root, name="next", epochs=1, steps_per_epoch=2, sleep_s=0.05, op_build_s=0.3)
    return client.enqueue(str(main), name="next", hang_timeout_s=90)


def wait_phase(job_id: int, phase: str) -> dict[str, str]:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        marker = read_phase(job_id)
        if marker and marker["phase"] == phase:
            return marker
        if client.get_job(job_id).state in FINAL:
            raise CellFailure(f"the victim ended before reaching phase {phase}:\n{job_report(job_id)}")
        time.sleep(0.1)
    raise CellFailure(f"the victim did not reach phase {phase} in {PHASE_TIMEOUT_S:.0f}s:\n{job_report(job_id)}")


def wait_final(job_id: int, timeout: float, what: str) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in FINAL:
            return job
        time.sleep(0.2)
    raise CellFailure(f"{what} still {client.get_job(job_id).state} after {timeout:.0f}s:\n{job_report(job_id)}")


def stale_batons(extensions: Path) -> list[Path]:
    """Baton files under TORCH_EXTENSIONS_DIR that no live process holds open (torch keeps the fd while building)."""
    return [lock for lock in extensions.rglob("lock") if not open_holders(lock)]


def wait_next(chaos: Chaos, job_id: int) -> Job:
    """The next job's end; fails early when it would wait forever on a baton a killed builder left behind."""
    deadline = time.monotonic() + NEXT_TIMEOUT_S
    stale_since: float | None = None
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in FINAL:
            return job
        stale = stale_batons(chaos.extensions) if job.state == "running" else []
        stale_since = (stale_since or time.monotonic()) if stale else None
        if stale_since is not None and time.monotonic() - stale_since > STALE_BATON_S:
            raise CellFailure(
                f"stale torch-extension baton {stale[0]}: it exists, no process has held it open for"
                f" {STALE_BATON_S:.0f}s, so the next job's op build waits for it in FileBaton.wait()"
                f" (torch.utils.cpp_extension._jit_compile) forever; nothing cleared it before the launch:\n"
                f"{job_report(job_id)}"
            )
        time.sleep(0.3)
    raise CellFailure(f"the next job did not end in {NEXT_TIMEOUT_S:.0f}s:\n{job_report(job_id)}")


# ----- the targets -----------------------------------------------------------------------------------------


def find_in_tree(tree: list[tuple[int, float, str]], job_id: int, needle: str, unless: str | None = None) -> int:
    for pid, _ctime, cmd in tree:
        if needle in cmd and (unless is None or unless not in cmd):
            return pid
    raise CellFailure(f"no process matching {needle!r} in the job's tree {tree}:\n{job_report(job_id)}")


def target_pid(target: str, job_id: int, tree: list[tuple[int, float, str]], marker: dict[str, str]) -> int:
    if target == "daemon":
        pid = client.daemon_pid()
        if not pid:
            raise CellFailure("no daemon runs while the victim is live")
        return pid
    if target == "shim":
        return find_in_tree(tree, job_id, "dpdeck shim job")
    if target == "runner":
        return find_in_tree(tree, job_id, "bin/deepspeed", unless="deepspeed.launcher.launch")
    if target == "launch.py":
        return find_in_tree(tree, job_id, "deepspeed.launcher.launch")
    pid = int(marker.get("pid", "0"))
    if pid not in [m[0] for m in tree]:
        raise CellFailure(f"the rank in the phase marker ({marker}) is not in the job's tree {tree}")
    return pid


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError as exc:
        raise CellFailure(f"pid {pid} was gone before the SIGKILL") from exc


# ----- the checks ------------------------------------------------------------------------------------------


def leftovers(job_id: int, tree: list[tuple[int, float, str]]) -> list[str]:
    problems = []
    marked = procs.marked_processes(job_id)
    if marked:
        problems.append(f"marked processes of job {job_id} still alive: {[(m.pid, m.name) for m in marked]}")
    alive = still_alive(tree)
    if alive:
        problems.append(f"members of job {job_id}'s process tree still alive: {alive}")
    port = client.get_job(job_id).port
    listeners = port_listeners(port) if port else []
    if listeners:
        problems.append(f"job {job_id}'s master port {port} still listening: {listeners}")
    return problems


def assert_clean(job_id: int, tree: list[tuple[int, float, str]], when: str) -> None:
    problems = leftovers(job_id, tree)
    if problems:
        raise CellFailure(f"{when}: " + "; ".join(problems) + f"\n{job_report(job_id)}")


def assert_no_stale_locks(chaos: Chaos, job_ids: list[int]) -> None:
    problems = []
    locks = list(chaos.extensions.rglob("lock"))
    if locks:
        problems.append(f"torch-extension batons left: {[(str(p), open_holders(p)) for p in locks]}")
    for job_id in job_ids:
        port = client.get_job(job_id).port
        holders = port_reservation_holders(port) if port else []
        if holders:
            problems.append(f"port {port} (job {job_id}) still reserved by pids {holders}")
    conn = store.connect()
    try:
        leases = [tuple(r) for r in conn.execute("SELECT resource, job_id FROM leases").fetchall()]
    finally:
        conn.close()
    if leases:
        problems.append(f"leases left with no live job: {leases}")
    stray = procs.marked_processes()
    if stray:
        problems.append(f"marked processes left: {[(m.pid, m.job_id, m.name) for m in stray]}")
    if problems:
        raise CellFailure("after both jobs: " + "; ".join(problems))


def trainer_said_complete(job: Job) -> bool:
    job_dir = Path(job.job_dir)
    logs = [job_dir / "output.log", *sorted((job_dir / "ranks").glob("*.log"))]
    return any(log.exists() and "TRAINING COMPLETE!" in log.read_text(errors="replace") for log in logs)


def check_fate(job: Job, phase: str, target: str) -> None:
    said_complete = trainer_said_complete(job)
    if not job.exit_reason:
        raise CellFailure(f"the victim ended {job.state} with no exit_reason:\n{job_report(job.id)}")
    if target == "daemon":
        if job.state != "completed" or not said_complete:
            raise CellFailure(
                f"killing the daemon at {phase} left the job's processes untouched, so it must re-attach and"
                f" record `completed`; recorded {job.state} ({job.exit_reason}), trainer said complete:"
                f" {said_complete}:\n{job_report(job.id)}"
            )
        return
    if job.state == "completed" and not said_complete:
        raise CellFailure(f"the {target} was killed at {phase} but the job is recorded completed:\n{job_report(job.id)}")
    if job.state == "completed" and phase != "cleanup":
        raise CellFailure(f"the {target} was killed at {phase}, before the end, yet the job is recorded completed")
    if phase == "cleanup" and job.state != "completed":
        raise CellFailure(
            f"the {target} was killed in the cleanup after `TRAINING COMPLETE!` (training done, saves on disk);"
            f" the job must be recorded completed, not {job.state} ({job.exit_reason}):\n{job_report(job.id)}"
        )


def assert_next_completed(chaos: Chaos, next_id: int) -> Job:
    job = wait_next(chaos, next_id)
    if job.state != "completed" or job.exit_reason != "completed":
        raise CellFailure(f"the next job ended {job.state} ({job.exit_reason}):\n{job_report(next_id)}")
    return job


# ----- the cells -------------------------------------------------------------------------------------------


def run_queued_cell(chaos: Chaos, result: dict[str, object]) -> None:
    client.ensure_daemon()
    client.set_queue_paused(True)
    victim = enqueue_victim(chaos, "queued", "daemon")
    time.sleep(2 * 0.5 + 0.2)  # two daemon ticks: a paused queue must not start it
    if client.get_job(victim).state != "queued":
        raise CellFailure(f"the victim left the paused queue:\n{job_report(victim)}")
    daemon = client.daemon_pid()
    kill(daemon)
    wait_for(lambda: client.daemon_pid() is None, 30, what="the killed daemon's lock released")
    next_id = enqueue_next(chaos)  # restarts the daemon
    client.set_queue_paused(False)
    job = wait_final(victim, NEXT_TIMEOUT_S, "the queued victim")
    result["state"] = job.state
    check_fate(job, "queued", "daemon")
    assert_clean(victim, [], "after the victim")
    nxt = assert_next_completed(chaos, next_id)
    assert_clean(next_id, [], "after the next job")
    assert_no_stale_locks(chaos, [victim, nxt.id])


def run_cell(chaos: Chaos, phase: str, target: str, result: dict[str, object]) -> None:
    if phase == "queued":
        run_queued_cell(chaos, result)
        return
    if phase == SIGSTOP_ROW:
        run_sigstop_cell(chaos, result)
        return
    victim = enqueue_victim(chaos, phase, target)
    marker = wait_phase(victim, phase)
    tree = process_tree(client.get_job(victim).pid)
    pid = target_pid(target, victim, tree, marker)
    kill(pid)
    next_id = None
    if target == "daemon":
        wait_for(lambda: client.daemon_pid() is None, 30, what="the killed daemon's lock released")
        next_id = enqueue_next(chaos)  # restarts the daemon, which must re-attach to the victim
    job = wait_final(victim, END_TIMEOUT_S if target != "daemon" else NEXT_TIMEOUT_S, "the victim")
    result["state"] = job.state
    check_fate(job, phase, target)
    assert_clean(victim, tree, f"the victim ended {job.state} but")
    if next_id is None:
        next_id = enqueue_next(chaos)
    nxt = assert_next_completed(chaos, next_id)
    assert_clean(next_id, [], "after the next job")
    assert_no_stale_locks(chaos, [victim, nxt.id])


def run_unit(chaos: Chaos, phase: str, target: str) -> dict[str, object]:
    """One cell, never raising: {"ok", "state" (the killed job's final state), "seconds", "error"}."""
    result: dict[str, object] = {"ok": False, "state": "-", "seconds": 0.0, "error": ""}
    started = time.monotonic()
    try:
        run_cell(chaos, phase, target, result)
        result["ok"] = True
    except Exception as exc:  # the cell's verdict, carried to the pytest process as text
        result["error"] = str(exc) if isinstance(exc, CellFailure) else traceback.format_exc()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def cell_id(phase: str, target: str) -> str:
    return f"{phase}-{target}"


@pytest.mark.timeout(1200)  # in lanes, a cell's test also waits for the cell before it in its lane
@pytest.mark.parametrize(("phase", "target"), CELLS, ids=[cell_id(p, t) for p, t in CELLS])
def test_chaos_cell(request: pytest.FixtureRequest, phase: str, target: str) -> None:
    if LANES > 0:
        result = request.getfixturevalue("lanes").result(cell_id(phase, target))
    else:
        result = run_unit(request.getfixturevalue("chaos"), phase, target)
    RESULTS[(phase, target)] = result
    if not result["ok"]:
        pytest.fail(f"cell {cell_id(phase, target)}: {result['error']}", pytrace=False)


def run_sigstop_cell(chaos: Chaos, result: dict[str, object]) -> None:
    # 0.3 s steps that run on well past the stop, so the job is still training when the daemon wakes.
    main = make_profile(chaos.root, name="frozen", epochs=1, steps_per_epoch=110, sleep_s=0.3)
    job_id = client.enqueue(str(main), name="frozen", hang_timeout_s=HANG_S)
    wait_step(job_id, 2, timeout=PHASE_TIMEOUT_S)
    if client.get_job(job_id).state != "running":
        raise CellFailure(f"the job was not running at step 2 (start-up over {HANG_S:.0f}s?):\n{job_report(job_id)}")
    tree = process_tree(client.get_job(job_id).pid)
    daemon = psutil.Process(client.daemon_pid())
    daemon.send_signal(signal.SIGSTOP)
    try:
        time.sleep(STOP_S)
    finally:
        daemon.send_signal(signal.SIGCONT)
    job = wait_final(job_id, NEXT_TIMEOUT_S, "the job")
    result["state"] = job.state
    hung = [e["message"] for e in client.job_events(job_id) if e["kind"] == "hung"]
    if job.state != "completed" or hung:
        raise CellFailure(
            f"the daemon was stopped {STOP_S:.0f}s (hang timeout {HANG_S:.0f}s) while the job made progress, and"
            f" the job must complete: time nobody watched is no evidence of a hang. Recorded {job.state}"
            f" ({job.exit_reason}), hung events {hung}:\n{job_report(job_id)}"
        )
    assert_clean(job_id, tree, "after the job")
    assert_no_stale_locks(chaos, [job_id])


def test_daemon_sigstop_longer_than_hang_timeout(chaos: Chaos) -> None:
    """A daemon frozen past the hang timeout (SIGSTOP, a suspended VM) must not call a progressing job hung.

    Runs in the pytest process after the lanes are done: it is the one cell whose verdict depends on timing.
    """
    result = run_unit(chaos, SIGSTOP_ROW, "daemon")
    RESULTS[(SIGSTOP_ROW, "daemon")] = result
    if not result["ok"]:
        pytest.fail(f"cell {SIGSTOP_ROW}: {result['error']}", pytrace=False)


# ----- lanes: cells in parallel subprocesses ---------------------------------------------------------------


class Lanes:
    """Runs the selected cells in LANES subprocesses (`python tests/test_chaos_matrix.py --lane ...`).

    Each lane takes every LANES-th selected cell in test order, so the tests, which wait in that order, each
    wait about one cell. A lane writes one JSON result per cell; a lane that died is reported with its log.
    """

    def __init__(self, out: Path, cells: list[str]) -> None:
        self.out = out
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        env = {k: v for k, v in os.environ.items() if k not in ("DPDECK_HOME", "DPDECK_JOB", *SECRET_VARS)}
        for lane in range(min(LANES, len(cells))):
            log = out / f"lane-{lane}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--lane", str(out), str(lane), *cells[lane::LANES]],
                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
            self.procs.append((proc, log))
        self.lane_of = {cell: i % LANES for i, cell in enumerate(cells)}

    def result(self, cell: str) -> dict[str, object]:
        path = self.out / f"{cell}.json"
        proc, log = self.procs[self.lane_of[cell]]
        while not path.exists():
            if proc.poll() is not None and not path.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                error = f"lane {self.lane_of[cell]} exited ({proc.returncode}) before cell {cell} ended:\n{tail}"
                return {"ok": False, "state": "?", "seconds": 0.0, "error": error}
            time.sleep(0.5)
        return json.loads(path.read_text())

    def close(self) -> None:
        for proc, _log in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the lane tears its cell's engine down, then exits
        for proc, _log in self.procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


SECRET_VARS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@pytest.fixture(scope="module")
def lanes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lanes]:
    selected = [
        item.name[len("test_chaos_cell["):-1]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_chaos_cell" and item.module is sys.modules[__name__]
    ]
    runner = Lanes(tmp_path_factory.mktemp("chaos_lanes"), selected)
    yield runner
    runner.close()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def lane_main(out: Path, lane: int, cells: list[str]) -> int:
    """One lane: each cell in a fresh state dir, extensions dir and daemon, torn down before the next."""
    signal.signal(signal.SIGTERM, _interrupt)
    by_id = {cell_id(p, t): (p, t) for p, t in CELLS}
    for cell in cells:
        phase, target = by_id[cell]
        base = out / cell
        (base / "home").mkdir(parents=True)
        (base / "torch_extensions").mkdir()
        os.environ["DPDECK_HOME"] = str(base / "home")
        os.environ["TORCH_EXTENSIONS_DIR"] = str(base / "torch_extensions")
        print(f"lane {lane}: {cell} in {base}", flush=True)
        try:
            prepare_engine(lane_ports(lane))
            result = run_unit(Chaos(base, base / "torch_extensions"), phase, target)
        finally:
            try:
                teardown_engine()
            except Exception:  # the cell's verdict is written anyway; the next cell has its own state dir
                print(f"lane {lane}: teardown of {cell} failed:\n{traceback.format_exc()}", flush=True)
        print(f"lane {lane}: {cell} {'pass' if result['ok'] else 'FAIL'} {result['seconds']}s", flush=True)
        tmp = out / f"{cell}.json.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, out / f"{cell}.json")
    return 0


# ----- the table -------------------------------------------------------------------------------------------


def matrix_table() -> list[str]:
    """Phase x target: `pass`/`FAIL`, the killed job's final state and the cell's seconds; [] before any cell."""
    if not RESULTS:
        return []
    rows = ["queued", *TRAINER_PHASES, SIGSTOP_ROW]
    width = 22

    def cell(key: tuple[str, str]) -> str:
        res = RESULTS.get(key)
        if res is None:  # not a cell (no such process in that phase), or not run this time
            return "n/a" if key not in CELLS and key[0] != SIGSTOP_ROW else ""
        return f"{'pass' if res['ok'] else 'FAIL'} {res['state']} {float(res['seconds']):.0f}s"

    lines = ["phase".ljust(14) + "".join(t.ljust(width) for t in TARGETS)]
    for row in rows:
        if any(key[0] == row for key in RESULTS):
            lines.append(row.ljust(14) + "".join(cell((row, t)).ljust(width) for t in TARGETS).rstrip())
    total = sum(float(r["seconds"]) for r in RESULTS.values())
    failed = sum(1 for r in RESULTS.values() if not r["ok"])
    lines.append(f"{len(RESULTS)} cells, {failed} failed, {total:.0f}s in all")
    return lines


if __name__ == "__main__" and sys.argv[1:2] == ["--lane"]:
    sys.exit(lane_main(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
