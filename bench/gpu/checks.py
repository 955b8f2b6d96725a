"""The GPU check pack's checks, one function each, and the table that runs them (bench/gpu/run.sh drives it).

    python3 bench/gpu/checks.py install --wheels .whl --target WORK/site --out OUT
    python3 bench/gpu/checks.py run --out OUT --work WORK [--cpu-dry-run] [--budget S] [--only a,b]

Every check drives dpdeck as a user does, through its CLI (`queue add`, `show --json`, `stop`, `resume`,
`gpus --json`, `config set`) against a real daemon, store and launcher in a state dir of its own. A check
returns its figures or raises; driver.py gives each its own process and time limit. On the CPU dry run the
checks that need a GPU are skipped with the reason and the others run their CPU analogue with tiny models.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parents[1]

import driver  # noqa: E402
import shapes  # noqa: E402
from driver import Check, Ctx, Skip  # noqa: E402

from statefiles.atomic import atomic_write_text  # noqa: E402

FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")
# The benchmark of issue 17 item 2, its one call site: adapt these arguments when bench_trainer_gpu.py changes.
BENCH = REPO / "bench" / "bench_trainer_gpu.py"
# Its --json PATH (ctx.work / bench.json) is added by check_bench. Five timed steps after two warm-up ones: the
# compile of each case is most of its minutes on a GPU.
BENCH_ARGS: dict[str, list[str]] = {
    "cuda": ["--steps", "5", "--warmup", "2"],
    "cpu": ["--tiny", "--cpu", "--steps", "2", "--warmup", "1", "--no-compile"],
}
# The modules the carried wheels must make importable (module -> distribution, for the version).
CARRIED_MODULES: dict[str, str] = {
    "textual": "textual",
    "textual_plotext": "textual-plotext",
    "pydantic": "pydantic",
    "tomlkit": "tomlkit",
    "platformdirs": "platformdirs",
    "diffusers": "diffusers",
    "deepspeed": "deepspeed",
    "optimi": "torch-optimi",
    "hjson": "hjson",
}
RELEASE_SLACK_MIB = 512  # GPU memory used above the pre-job baseline that still counts as released


class CheckFailed(AssertionError):
    """A check's claim does not hold; figures carries what was measured up to that point."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


def expect(ok: object, message: str, figures: dict[str, Any] | None = None) -> None:
    if not ok:
        raise CheckFailed(message, figures)


# ---- dpdeck through its CLI ---------------------------------------------------------------------------------


def job_env(ctx: Ctx) -> dict[str, str]:
    env = dict(os.environ, DPDECK_HOME=str(ctx.home), PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if ctx.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    return env


def dpdeck(ctx: Ctx, *args: str, timeout: float = 120) -> str:
    """Run `dpdeck ARGS` (python -m tui.cli) in the check's state dir; its stdout, or CheckFailed."""
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=REPO,
        env=job_env(ctx),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise CheckFailed(
            f"dpdeck {' '.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def enqueue(ctx: Ctx, profile: Path, *extra: str) -> int:
    return int(json.loads(dpdeck(ctx, "queue", "add", str(profile), "--json", *extra))["id"])


def on_gpu0(ctx: Ctx) -> tuple[str, ...]:
    """`--gpus 0` on a GPU: a job pinned to a GPU waits with that GPU's own reason (a foreign process, another
    dpdeck job), where one that asks for any GPU says only how many are free."""
    return ("--gpus", "0") if ctx.device == "cuda" else ()


def show(ctx: Ctx, job: int) -> dict[str, Any]:
    return dict(json.loads(dpdeck(ctx, "show", str(job), "--json")))


def wait_for(
    ctx: Ctx, what: str, probe: Callable[[], Any], poll: float = 0.5, within: float | None = None
) -> Any:
    """Poll until probe returns something truthy, within the check's own time (minus a little to report)."""
    end = time.time() + (within if within is not None else max(ctx.left() - 5, 1))
    while True:
        value = probe()
        if value:
            return value
        if time.time() >= end:
            raise CheckFailed(f"timed out waiting for {what}")
        time.sleep(poll)


def wait_final(ctx: Ctx, job: int, within: float | None = None) -> dict[str, Any]:
    return dict(wait_for(ctx, f"job {job} to end", lambda: _final(ctx, job), within=within))


def _final(ctx: Ctx, job: int) -> dict[str, Any] | None:
    row = show(ctx, job)
    return row if row["state"] in FINAL else None


def wait_step(ctx: Ctx, job: int, step: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        row = show(ctx, job)
        if row["state"] in FINAL:
            raise CheckFailed(
                f"job {job} ended ({row['state']}, {row['exit_reason']}) before step {step}: "
                f"{row['evidence'][-3:]}"
            )
        return row if (row["step"] or 0) >= step else None

    return dict(wait_for(ctx, f"job {job} to reach step {step}", probe, poll=0.3))


def job_summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "state", "exit_reason", "step", "loss", "samples_per_s", "started_at", "ended_at")
    return {k: row.get(k) for k in keys}


def short_profile(ctx: Ctx, name: str, **values: Any) -> Path:
    """The tiny SD1.5 demo model (built once for every check) as a short job: 2 epochs of 4 steps."""
    return shapes.demo_profile(ctx.shared, f"{ctx.name}-{name}", ctx.work / "out", **{"epochs": 2, **values})


# ---- the GPU as NVML sees it (engine.jobs.gpus is what the daemon reads) -------------------------------------


def nvml_sample() -> dict[str, Any]:
    """GPU 0's used memory (MiB) and its compute processes {pid: MiB}."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used // 2**20
        procs = {
            p.pid: (p.usedGpuMemory or 0) // 2**20
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        }
        return {"used_mib": used, "procs": procs}
    finally:
        pynvml.nvmlShutdown()


class Sampler(threading.Thread):
    """Samples, every `every` seconds until stopped, which of `watched` pids live, the master port's listener
    and (on a GPU) NVML: what was held at the moment the next job started is read off afterwards."""

    def __init__(self, gpu: bool, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.gpu, self.every = gpu, every
        self.watched: set[int] = set()
        self.port: int | None = None
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        from engine.jobs.ports import listening_ports

        while not self.stopped.is_set():
            sample: dict[str, Any] = {"t": time.time()}
            sample["alive"] = sorted(p for p in self.watched if psutil.pid_exists(p) and _not_zombie(p))
            sample["port_listening"] = self.port is not None and self.port in listening_ports()
            if self.gpu:
                sample.update(nvml_sample())
            self.samples.append(sample)
            self.stopped.wait(self.every)

    def last_before(self, t: float) -> dict[str, Any] | None:
        before = [s for s in self.samples if s["t"] <= t]
        return before[-1] if before else None


def _not_zombie(pid: int) -> bool:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def job_processes(ctx: Ctx, job: int) -> list[tuple[int, list[str]]]:
    """(pid, cmdline) of every process carrying job's dpdeck marker (what `dpdeck reclaim` would see)."""
    import psutil

    from engine.jobs.procs import marked_processes

    out = []
    for m in marked_processes(job):
        with contextlib.suppress(psutil.Error):
            out.append((m.pid, psutil.Process(m.pid).cmdline()))
    return out


def is_rank(cmd: Sequence[str]) -> bool:
    """A training rank, not the launcher that names it: titled `dpdeck train job N rank R` (engine/proctitle.py),
    or `python -u -m engine.trainer --local_rank=N ...` where no title was set."""
    from engine.proctitle import title_for

    if cmd and cmd[0].startswith(title_for("train", job="", rank="").split(" rank")[0]):
        return True
    return "-m" in cmd and cmd[cmd.index("-m") + 1 : cmd.index("-m") + 2] == ["engine.trainer"]


# ---- the checks ---------------------------------------------------------------------------------------------


def check_wheels(ctx: Ctx) -> dict[str, Any]:
    """The carried wheels installed, and every module they bring imports."""
    install_file = ctx.out / "install.json"
    install = json.loads(install_file.read_text()) if install_file.is_file() else {"status": "missing"}
    versions: dict[str, str] = {}
    broken: dict[str, str] = {}
    from importlib.metadata import version

    for module, dist in CARRIED_MODULES.items():
        try:
            importlib.import_module(module)
            versions[dist] = version(dist)
        except Exception as exc:  # noqa: BLE001 - a wheel that installs but does not import is a failure too
            broken[module] = f"{type(exc).__name__}: {exc}"
    figures = {"install": install.get("status"), "installed": len(install.get("installed", [])), **versions}
    failed = install.get("failed") or {}
    expect(not failed, f"wheels that did not install: {failed}", figures)
    expect(not broken, f"modules that do not import: {broken}", figures)
    if install.get("status") != "installed":
        figures["note"] = install.get("reason", "no install step ran")
    return figures


def check_nvml(ctx: Ctx) -> dict[str, Any]:
    """`dpdeck gpus` (the engine's NVML view) sees the card NVML itself reports."""
    if ctx.device != "cuda":
        raise Skip(f"CPU dry run; NVML here: {ctx.gpu.get('reason') or ctx.gpu.get('name')}")
    gpus = json.loads(dpdeck(ctx, "gpus", "--json"))
    expect(gpus, f"dpdeck gpus lists no GPU, NVML reports {ctx.gpu.get('count')}")
    first = gpus[0]
    figures = {
        "name": first["name"],
        "mem_total_mib": first["mem_total"] // 2**20,
        "mem_used_mib": first["mem_used"] // 2**20,
        "count": len(gpus),
        "driver": ctx.gpu.get("driver"),
    }
    expect(
        first["name"] == ctx.gpu.get("name"),
        f"dpdeck sees {first['name']}, NVML {ctx.gpu.get('name')}",
        figures,
    )
    return figures


FOREIGN = (
    "import sys, time, torch\n"
    "x = torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device='cuda')\n"
    "print('holding', flush=True)\n"
    "time.sleep(600)\n"
)


def check_foreign_wait(ctx: Ctx) -> dict[str, Any]:
    """A CUDA process that is not dpdeck's makes a queued job wait, saying so, and the job starts once it ends."""
    env = {k: v for k, v in job_env(ctx).items() if not k.startswith("DPDECK")}
    foreign = subprocess.Popen(
        [sys.executable, "-c", FOREIGN, "1024"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert foreign.stdout is not None
        expect(foreign.stdout.readline().strip() == "holding", "the foreign CUDA process did not start")
        seen = wait_for(
            ctx, "NVML to list the foreign process", lambda: foreign.pid in nvml_sample()["procs"], within=30
        )
        gpus = json.loads(dpdeck(ctx, "gpus", "--json"))
        listed = [p for p in gpus[0]["processes"] if p["pid"] == foreign.pid]
        expect(
            listed and not listed[0]["ours"],
            f"dpdeck gpus does not list pid {foreign.pid} as foreign: {gpus}",
        )
        job = enqueue(ctx, short_profile(ctx, "job"), *on_gpu0(ctx))
        t0 = time.time()
        needle = f"foreign compute process (pid {foreign.pid}"
        row = wait_for(
            ctx,
            "the job to wait on the foreign process",
            lambda: (r := show(ctx, job))["wait_reason"] and needle in r["wait_reason"] and r,
            within=30,
        )
        figures: dict[str, Any] = {
            "wait_reason": row["wait_reason"],
            "reason_after_s": time.time() - t0,
            "foreign_listed": bool(seen),
        }
        time.sleep(2)  # still waiting two ticks later, not merely not started yet
        expect(show(ctx, job)["state"] == "queued", "the job started beside the foreign process", figures)
    finally:
        foreign.kill()
        foreign.wait()
    gone = time.time()
    started = wait_for(
        ctx,
        "the job to start once the foreign process ended",
        lambda: (r := show(ctx, job))["started_at"] and r,
        within=60,
    )
    figures["start_after_foreign_ended_s"] = started["started_at"] - gone
    end = wait_final(ctx, job)
    expect(end["state"] == "completed", f"the job ended {end['state']} ({end['exit_reason']})", figures)
    return figures


def check_sigkill_release(ctx: Ctx) -> dict[str, Any]:
    """A rank SIGKILLed mid-step: the job ends `killed`, and when the next job starts nothing of the first holds
    a process, its master port or (on a GPU, per NVML) GPU memory."""
    on_gpu = ctx.device == "cuda"
    sampler = Sampler(gpu=on_gpu)
    baseline = nvml_sample()["used_mib"] if on_gpu else None
    sampler.start()
    try:
        first = enqueue(ctx, short_profile(ctx, "long", epochs=5000), *on_gpu0(ctx))
        second = enqueue(ctx, short_profile(ctx, "next"), *on_gpu0(ctx))
        row = wait_step(ctx, first, 3)
        sampler.port = row["port"]
        procs = job_processes(ctx, first)
        ranks = [pid for pid, cmd in procs if is_rank(cmd)]
        expect(ranks, f"no training rank among job {first}'s processes: {procs}")
        sampler.watched = {pid for pid, _ in procs}
        if on_gpu:
            held = wait_for(
                ctx, "the rank to show in NVML", lambda: set(ranks) & set(nvml_sample()["procs"]), within=30
            )
            expect(held, "the rank holds no GPU memory per NVML")
        os.kill(ranks[0], signal.SIGKILL)
        killed_at = time.time()
        end = wait_final(ctx, first)
        nxt = wait_for(ctx, f"job {second} to start", lambda: (r := show(ctx, second))["started_at"] and r)
        done = wait_final(ctx, second)
    finally:
        sampler.stopped.set()
        sampler.join()
    at_start = sampler.last_before(nxt["started_at"]) or {}
    figures: dict[str, Any] = {
        "killed_pid": ranks[0],
        "killed_at_step": row["step"],
        "exit_reason": end["exit_reason"],
        "evidence": (end["evidence"] or [""])[-1],
        "ended_after_kill_s": end["ended_at"] - killed_at,
        "next_started_after_end_s": nxt["started_at"] - end["ended_at"],
        "alive_at_next_start": at_start.get("alive"),
        "port_listening_at_next_start": at_start.get("port_listening"),
        "next_job": done["state"],
    }
    if on_gpu:
        figures.update(
            baseline_mib=baseline,
            used_mib_at_next_start=at_start.get("used_mib"),
            gpu_procs_at_next_start=at_start.get("procs"),
        )
    expect(
        end["exit_reason"] == "killed", f"job {first} ended {end['state']} ({end['exit_reason']})", figures
    )
    expect(at_start, "no sample was taken before the next job started", figures)
    expect(not at_start["alive"], f"processes of job {first} alive when job {second} started", figures)
    expect(
        not at_start["port_listening"],
        f"job {first}'s master port listened when job {second} started",
        figures,
    )
    if on_gpu:
        ours = set(at_start["procs"]) & sampler.watched
        expect(not ours, f"NVML listed job {first}'s pids {ours} when job {second} started", figures)
        expect(
            at_start["used_mib"] <= baseline + RELEASE_SLACK_MIB,
            f"{at_start['used_mib']} MiB used when job {second} started, {baseline} MiB before job {first}",
            figures,
        )
    expect(
        done["state"] == "completed", f"job {second} ended {done['state']} ({done['exit_reason']})", figures
    )
    return figures


def oom_profile(ctx: Ctx, mode: str) -> Path:
    """A valid flux profile for the diffusion-pipe backend, which the stand-in train.py runs."""
    root = ctx.work / "oomjob"
    (root / "flux").mkdir(parents=True, exist_ok=True)
    (root / "flux" / "model_index.json").write_text("{}")
    (root / "images").mkdir(exist_ok=True)
    atomic_write_text(
        root / "dataset.toml", f"resolutions = [64]\n\n[[directory]]\npath = '{root / 'images'}'\n"
    )
    main = root / "main.toml"
    atomic_write_text(
        main,
        f"output_dir = '{root / 'out'}'\ndataset = 'dataset.toml'\nepochs = 1\nmicro_batch_size_per_gpu = 1\nsave_every_n_epochs = 1\n\n"
        f"[model]\ntype = 'flux'\ndiffusers_path = '{root / 'flux'}'\ndtype = 'bfloat16'\n\n"
        "[adapter]\ntype = 'lora'\nrank = 4\ndtype = 'bfloat16'\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-4\n\n"
        f"[gpupack]\noom = '{mode}'\n",
    )
    return main


def check_oom(ctx: Ctx) -> dict[str, Any]:
    """A rank that runs out of CUDA memory ends its job `oom` (cuda_oom) with the allocator's line as evidence."""
    mode = "cuda" if ctx.device == "cuda" else "synthetic"
    dpdeck(ctx, "config", "set", "diffusion_pipe.path", str(HERE / "oom_backend"))
    job = enqueue(ctx, oom_profile(ctx, mode), "--backend", "diffusion-pipe")
    end = wait_final(ctx, job)
    line = next((e for e in end["evidence"] if "out of memory" in e.lower()), None)
    figures = {"mode": mode, **job_summary(end), "evidence_line": line}
    expect(
        end["state"] == "oom" and end["exit_reason"] == "cuda_oom",
        f"job {job} ended {end['state']} ({end['exit_reason']}): {end['evidence'][-3:]}",
        figures,
    )
    expect(line, f"no out-of-memory line in the evidence: {end['evidence']}", figures)
    return figures


def check_two_jobs(ctx: Ctx) -> dict[str, Any]:
    """Two jobs for one GPU (one CPU slot): the second waits, saying why, and starts after the first ended."""
    first = enqueue(ctx, short_profile(ctx, "a"), *on_gpu0(ctx))
    second = enqueue(ctx, short_profile(ctx, "b"), *on_gpu0(ctx))
    reasons: set[str] = set()

    def both_done() -> bool:
        a, b = show(ctx, first), show(ctx, second)
        if a["state"] not in FINAL and b["state"] == "queued" and b["wait_reason"]:
            reasons.add(b["wait_reason"])
        return a["state"] in FINAL and b["state"] in FINAL

    wait_for(ctx, "both jobs to end", both_done)
    a, b = show(ctx, first), show(ctx, second)
    figures = {"first": job_summary(a), "second": job_summary(b), "second_waited_for": sorted(reasons)}
    expect(a["state"] == b["state"] == "completed", f"jobs ended {a['state']} and {b['state']}", figures)
    expect(b["started_at"] >= a["ended_at"], f"job {second} started before job {first} ended", figures)
    why = "in use by another dpdeck job" if ctx.device == "cuda" else "CPU slot"
    expect(any(why in r for r in reasons), f"job {second} never waited with {why!r}: {reasons}", figures)
    return figures


def train_check(family: str) -> Callable[[Ctx], dict[str, Any]]:
    def check(ctx: Ctx) -> dict[str, Any]:
        t0 = time.time()
        profile = shapes.write_train_profile(family, ctx.device, ctx.work)
        built_s = time.time() - t0
        first = enqueue(ctx, profile)
        running = wait_step(ctx, first, 2)
        dpdeck(ctx, "stop", str(first))
        stopped = wait_final(ctx, first)
        figures: dict[str, Any] = {
            "build_s": built_s,
            "stop_seen_at_step": running["step"],
            "stopped": job_summary(stopped),
        }
        expect(
            stopped["state"] != "completed",
            f"the run completed (step {stopped['step']}) before the stop landed: raise its epochs in "
            "shapes.TRAIN_SIZES",
            figures,
        )
        expect(
            (stopped["state"], stopped["exit_reason"]) == ("cancelled", "save_quit"),
            f"the stopped job ended {stopped['state']} ({stopped['exit_reason']}): {stopped['evidence'][-3:]}",
            figures,
        )
        second = int(json.loads(dpdeck(ctx, "resume", str(first), "--json"))["new_job"])
        end = wait_final(ctx, second)
        figures["resumed"] = job_summary(end)
        expect(
            end["state"] == "completed",
            f"the resumed job ended {end['state']} ({end['exit_reason']}): {end['evidence'][-3:]}",
            figures,
        )
        run_dir = Path(end["run_dir"] or stopped["run_dir"])
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in steps if m.get("event", "progress") == "progress"]  # not eval or sample lines
        numbers = [m["step"] for m in steps]
        size = shapes.TRAIN_SIZES[(family, ctx.device)]
        total = size.epochs * size.images // size.batch
        figures.update(
            steps=len(numbers),
            stopped_at_step=stopped["step"],
            first_loss=steps[0]["loss"],
            last_loss=steps[-1]["loss"],
            wall_s=time.time() - t0,
            lora=[str(p.relative_to(run_dir)) for p in sorted(run_dir.glob("epoch*/*.safetensors"))],
        )
        expect(
            numbers == list(range(1, total + 1)),
            f"steps across stop and resume are not 1..{total} once each: {numbers}",
            figures,
        )
        expect(figures["lora"], f"no LoRA saved in {run_dir}", figures)
        return figures

    return check


def check_bench(ctx: Ctx) -> dict[str, Any]:
    """The trainer's step against a diffusers-example step (bench/bench_trainer_gpu.py), figures as it prints them."""
    result = ctx.work / "bench.json"
    cmd = [sys.executable, str(BENCH), *BENCH_ARGS[ctx.device], "--json", str(result)]
    print("+ " + " ".join(cmd), flush=True)
    limit = max(ctx.left() - 5, 1)
    try:
        done = subprocess.run(cmd, cwd=REPO, env=job_env(ctx), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        # The rows it printed before the limit are still figures (it prints each as soon as it is measured).
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        print(partial, flush=True)
        raise CheckFailed(
            f"the benchmark ran past the {limit:.0f} s left to it", {"bench": parse_bench(partial, result)}
        ) from None
    print(done.stdout + done.stderr, flush=True)
    figures = {"command": " ".join(cmd[1:]), "bench": parse_bench(done.stdout, result)}
    expect(
        done.returncode == 0, f"the benchmark exited {done.returncode}: {done.stderr.strip()[-300:]}", figures
    )
    return figures


def parse_bench(stdout: str, result: Path) -> Any:
    """Its --json document when it wrote one, else its output lines (the rows it printed as it measured)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads(result.read_text(encoding="utf-8"))
    return stdout.splitlines()[-30:]


NEEDS_GPU = "needs an NVIDIA GPU"
# name, what it proves, function, timeout per device (s), why it needs a GPU (None: it has a CPU analogue),
# the GPU memory it needs. Order: cheap proofs first, the benchmark last (it takes what time is left).
CHECKS: tuple[Check, ...] = (
    Check(
        "wheels",
        "the carried wheels install and import on the machine's Python",
        check_wheels,
        {"cuda": 30, "cpu": 60},
    ),
    Check("nvml", "dpdeck's NVML view sees the card", check_nvml, {"cuda": 20, "cpu": 20}, NEEDS_GPU),
    Check(
        "foreign_wait",
        "a foreign CUDA process makes a job wait with that reason",
        check_foreign_wait,
        {"cuda": 60, "cpu": 60},
        NEEDS_GPU + " (a CUDA process to be foreign)",
    ),
    Check(
        "sigkill_release",
        "a rank SIGKILLed mid-step holds nothing (NVML, processes, port) when the next job starts",
        check_sigkill_release,
        {"cuda": 75, "cpu": 300},
    ),
    Check("oom", "a CUDA OOM is classified oom with its evidence line", check_oom, {"cuda": 45, "cpu": 120}),
    Check(
        "two_jobs", "two jobs on one GPU run one after the other", check_two_jobs, {"cuda": 60, "cpu": 300}
    ),
    Check(
        "train_sdxl",
        "the built-in trainer trains real-shaped SDXL through the queue, save_quit, resume",
        train_check("sdxl"),
        {"cuda": 100, "cpu": 400},
        min_gpu_gib=24,
    ),
    Check(
        "train_chroma",
        "the built-in trainer trains real-shaped Chroma through the queue, save_quit, resume",
        train_check("chroma"),
        {"cuda": 100, "cpu": 400},
        min_gpu_gib=24,
    ),
    Check(
        "bench",
        "trainer step vs diffusers-example step: samples/s, MFU, memory",
        check_bench,
        {"cuda": 170, "cpu": 300},
        min_gpu_gib=40,
    ),
)


# ---- the commands -------------------------------------------------------------------------------------------


def install(wheels: Path, target: Path, out: Path) -> int:
    """Install the carried wheels into a private target (all at once, else one by one so one bad wheel costs
    only itself); writes out/install.json. Returns 0: a wheel that fails is the wheels check's to report."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    record: dict[str, Any] = {"status": "installed", "target": str(target), "installed": [], "failed": {}}
    if not files:
        record.update(
            status="skipped", reason=f"no wheels in {wheels}: run bench/gpu/prepare.sh where pip works"
        )
    else:
        base = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--upgrade",
            "--quiet",
            "--target",
            str(target),
        ]
        t0 = time.time()
        done = subprocess.run([*base, *map(str, files)], capture_output=True, text=True)
        if done.returncode == 0:
            record["installed"] = [f.name for f in files]
        else:
            for wheel in files:
                one = subprocess.run([*base, str(wheel)], capture_output=True, text=True)
                if one.returncode == 0:
                    record["installed"].append(wheel.name)
                else:
                    lines = (one.stderr or one.stdout).strip().splitlines() or [f"exit {one.returncode}"]
                    record["failed"][wheel.name] = lines[-1]
        record["seconds"] = time.time() - t0
        if record["failed"]:
            record["status"] = "partial"
    atomic_write_text(out / "install.json", json.dumps(record, indent=2))
    print(
        f"install: {record['status']}, {len(record['installed'])} wheels into {target}"
        + (f"; FAILED: {record['failed']}" if record["failed"] else "")
        + (f" ({record.get('reason')})" if record.get("reason") else ""),
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install")
    ins.add_argument("--wheels", type=Path, required=True)
    ins.add_argument("--target", type=Path, required=True)
    ins.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--work", type=Path, required=True)
    run.add_argument("--cpu-dry-run", action="store_true")
    run.add_argument("--budget", type=float, help="seconds for all checks (default: 420 on a GPU, 2400 dry)")
    run.add_argument("--only", help="comma-separated check names")
    args = ap.parse_args(argv)
    if args.cmd == "install":
        return install(args.wheels, args.target, args.out)
    checks = list(CHECKS)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {c.name for c in checks})
        if unknown:
            ap.error(f"unknown checks {unknown}; known: {', '.join(c.name for c in checks)}")
        checks = [c for c in checks if c.name in names]
    gpu = driver.probe_gpu()
    device = "cuda" if gpu["ok"] and not args.cpu_dry_run else "cpu"
    budget = args.budget or (2400.0 if device == "cpu" else 420.0)
    doc = driver.run_checks(
        checks,
        device=device,
        dry_run=args.cpu_dry_run,
        out=args.out,
        work=args.work,
        budget_s=budget,
        gpu=gpu,
        header={"python": sys.version.split()[0]},
    )
    return 1 if doc["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
