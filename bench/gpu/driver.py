"""Runs a table of checks, each in a forked child with its own time limit, so one that raises, hangs or kills
its own process loses nothing else; prints each result as it lands and rewrites results.json after each.

A check is a function of a Ctx that returns its figures (a dict) or raises Skip(reason); any other exception,
a timeout or a child that dies without a result is `failed` with the reason. torch is never imported here:
the children import what their check needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from statefiles.atomic import atomic_write_text  # noqa: E402

LOG_TAIL_LINES = 40
MIN_SLICE_S = 20.0  # a check given less than this would only fail for want of time: it is skipped instead


class Skip(Exception):
    """The check cannot run here (no GPU, card too small, ...): the message says why."""


@dataclass
class Ctx:
    """What a check gets: where to work, which device its jobs run on, and the GPU as NVML saw it."""

    name: str
    device: str  # "cuda" or "cpu"
    dry_run: bool
    out: Path
    work: Path  # this check's own folder
    shared: Path  # built once, used by several checks (the tiny demo models)
    gpu: dict[str, Any]  # probe_gpu()'s answer
    deadline: float  # time.time() by which the check must be done

    @property
    def home(self) -> Path:
        return self.work / "home"

    def left(self) -> float:
        return self.deadline - time.time()


@dataclass(frozen=True)
class Check:
    name: str
    proves: str
    func: Callable[[Ctx], dict[str, Any]]
    timeout_s: dict[str, float]  # device -> seconds
    needs_gpu: str | None = None  # why it cannot run without one (None: it has a CPU analogue)
    min_gpu_gib: float = 0.0


@dataclass
class Result:
    name: str
    status: str  # passed / failed / skipped
    reason: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    proves: str = ""
    log: str | None = None
    log_tail: list[str] = field(default_factory=list)

    def line(self) -> str:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[self.status]
        scalars = [(k, v) for k, v in self.figures.items() if not isinstance(v, (dict, list))]
        brief = self.reason or ", ".join(f"{k}={_short(v)}" for k, v in scalars[:6])
        return f"{mark}  {self.name:<16} {self.seconds:6.1f}s  {brief}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def probe_gpu() -> dict[str, Any]:
    """{ok, reason, name, mem_total_gib, count} from NVML directly, so a failing NVML says how it failed."""
    try:
        import pynvml
    except ImportError as exc:
        return {"ok": False, "reason": f"nvidia-ml-py is not installed ({exc})"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError has a subclass per cause; its text names it
        return {"ok": False, "reason": f"NVML failed to initialise: {exc}"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return {"ok": False, "reason": "NVML works but reports no GPU"}
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {
            "ok": True,
            "reason": "",
            "count": count,
            "name": pynvml.nvmlDeviceGetName(handle),
            "mem_total_gib": mem.total / 2**30,
            "driver": pynvml.nvmlSystemGetDriverVersion(),
        }
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "reason": f"NVML failed: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def skip_reason(check: Check, device: str, dry_run: bool, gpu: dict[str, Any]) -> str | None:
    if check.needs_gpu and device != "cuda":
        why = f"no usable GPU ({gpu.get('reason')})"
        if dry_run:
            why = "CPU dry run" + ("" if gpu.get("ok") else f" (NVML here: {gpu.get('reason')})")
        return f"{why}: {check.needs_gpu}"
    if device == "cuda" and check.min_gpu_gib and gpu.get("mem_total_gib", 0.0) < check.min_gpu_gib:
        return (
            f"card too small: needs {check.min_gpu_gib:.0f} GiB of GPU memory, "
            f"{gpu.get('name')} has {gpu.get('mem_total_gib', 0.0):.1f} GiB"
        )
    return None


def _child(check: Check, ctx: Ctx, result_file: Path, log_file: Path) -> None:
    """In the forked child: own process group (so a timeout kills everything it started), output to its log."""
    os.setsid()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the child's whole life
    sys.stderr = sys.stdout
    os.environ["DPDECK_HOME"] = str(ctx.home)
    code = 0
    try:
        figures = check.func(ctx)
        outcome = {"status": "passed", "reason": "", "figures": figures or {}}
    except Skip as exc:
        outcome = {"status": "skipped", "reason": str(exc), "figures": {}}
    except BaseException as exc:  # noqa: BLE001 - every way a check can fail is a result
        traceback.print_exc()
        outcome = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "figures": {}}
        figures = getattr(exc, "figures", None)
        if isinstance(figures, dict):
            outcome["figures"] = figures
        code = 1
    try:
        atomic_write_text(result_file, json.dumps(outcome, default=str))
    finally:
        sys.stdout.flush()
        os._exit(code)


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None when it ran past timeout (then it and its group are killed)."""
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= end:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.1)


def stop_engine(home: Path) -> None:
    """Whatever a check left behind in its state dir (daemon, jobs) is stopped before the next one starts."""
    if not (home / "dpdeck.db").exists():
        return
    env = dict(os.environ, DPDECK_HOME=str(home))
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            [sys.executable, "-m", "tui.cli", "daemon", "stop", "--kill-jobs"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
        )


def run_one(check: Check, ctx: Ctx, timeout: float) -> Result:
    ctx.work.mkdir(parents=True, exist_ok=True)
    result_file = ctx.work / "result.json"
    log_file = ctx.work / "check.log"
    result_file.unlink(missing_ok=True)
    t0 = time.time()
    ctx.deadline = t0 + timeout
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(check, ctx, result_file, log_file)
    status = _wait_child(pid, timeout)
    seconds = time.time() - t0
    stop_engine(ctx.home)
    if status is None:
        outcome: dict[str, Any] = {"status": "failed", "reason": f"timed out after {timeout:.0f} s (killed)"}
    elif result_file.is_file():
        outcome = json.loads(result_file.read_text())
    elif os.WIFSIGNALED(status):
        outcome = {
            "status": "failed",
            "reason": f"the check died of signal {os.WTERMSIG(status)} without a result",
        }
    else:
        outcome = {
            "status": "failed",
            "reason": f"the check exited {os.WEXITSTATUS(status)} without a result",
        }
    result = Result(
        check.name,
        outcome["status"],
        outcome.get("reason", ""),
        seconds,
        outcome.get("figures") or {},
        check.proves,
        str(log_file),
    )
    if result.status == "failed" and log_file.is_file():
        result.log_tail = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return result


def run_checks(
    checks: Sequence[Check],
    *,
    device: str,
    dry_run: bool,
    out: Path,
    work: Path,
    budget_s: float,
    gpu: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every check in order within budget_s; returns (and keeps writing) the results document."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    gpu = probe_gpu() if gpu is None else gpu
    start = time.time()
    doc: dict[str, Any] = {
        **(header or {}),
        "mode": "cpu-dry-run" if dry_run else "gpu",
        "device": device,
        "gpu": gpu,
        "budget_s": budget_s,
        "started_at": start,
        "checks": [],
        "summary": {"passed": 0, "failed": 0, "skipped": 0},
    }
    results_file = out / "results.json"
    print(
        f"device {device}; GPU: {gpu.get('name') or gpu.get('reason')}; budget {budget_s:.0f} s", flush=True
    )
    for check in checks:
        ctx = Ctx(check.name, device, dry_run, out, work / check.name, work / "shared", gpu, 0.0)
        left = start + budget_s - time.time()
        why = skip_reason(check, device, dry_run, gpu)
        if why is None and left < min(MIN_SLICE_S, check.timeout_s[device]):
            why = f"out of time: {max(left, 0):.0f} s of the pack's {budget_s:.0f} s budget left"
        if why is not None:
            result = Result(check.name, "skipped", why, 0.0, proves=check.proves)
        else:
            result = run_one(check, ctx, min(check.timeout_s[device], left))
        doc["checks"].append(result.__dict__)
        doc["seconds"] = time.time() - start
        doc["summary"] = {
            s: sum(r["status"] == s for r in doc["checks"]) for s in ("passed", "failed", "skipped")
        }
        atomic_write_text(results_file, json.dumps(doc, indent=2, default=str))
        print(result.line(), flush=True)
        if result.status == "failed":
            for line in result.log_tail[-12:]:
                print(f"      | {line}", flush=True)
    print(
        f"{doc['summary']['passed']} passed, {doc['summary']['failed']} failed, {doc['summary']['skipped']} skipped"
        f" in {doc['seconds']:.0f} s; {results_file}",
        flush=True,
    )
    return doc
