"""`dpdeck queue add|pause|unpause`, `ls`, `show`, `logs`, `samples`, `cancel`, `stop`, `retry`, `resume`,
`move`, `wait`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tui import units
from tui.cli.output import error, print_json, table

if TYPE_CHECKING:
    from engine.jobs.job import Job

STATE_MARK = {
    "queued": "· queued",
    "starting": "» starting",
    "running": "▶ running",
    "stopping": "■ stopping",
    "cleanup": "~ cleanup",
    "completed": "✓ completed",
    "failed": "✗ failed",
    "cancelled": "⊘ cancelled",
    "oom": "! oom",
    "hung": "? hung",
    "interrupted": "↯ interrupted",
}


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("queue", help="add jobs, pause or unpause the queue")
    qs = q.add_subparsers(dest="queue_cmd", metavar="ACTION", required=True)
    add = qs.add_parser("add", help="queue a profile (stored name or path to a main TOML); prints the job id")
    add.add_argument("profile")
    gpu = add.add_mutually_exclusive_group()
    gpu.add_argument("--gpus", help="GPU indexes, e.g. 0,2")
    gpu.add_argument("--num-gpus", type=int, help="how many GPUs (or CPU ranks on a machine without GPUs)")
    add.add_argument("--backend", default="auto", choices=["auto", "builtin", "diffusion-pipe"])
    add.add_argument("--name")
    add.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    add.add_argument("--after", type=int, metavar="JOB", help="start only after this job has ended")
    add.add_argument("--hang-timeout", type=float, metavar="S", help="no progress for S seconds -> hung")
    mn = add.add_argument_group("multi-node (passed to the deepspeed runner unchanged)")
    mn.add_argument("--hostfile")
    mn.add_argument("--launcher", help="pdsh (default), slurm, openmpi, ...")
    mn.add_argument("--include", help="e.g. worker-0:0,1@worker-1:0")
    mn.add_argument("--exclude")
    mn.add_argument("--num-nodes", type=int)
    mn.add_argument("--master-addr")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=_add)
    for action in ("pause", "unpause"):
        p = qs.add_parser(action, help=f"{action} the queue (running jobs keep running)")
        p.set_defaults(func=_pause, paused=action == "pause")

    ls = sub.add_parser("ls", help="list jobs (queued and live; --all for finished too)")
    ls.add_argument("--all", action="store_true")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)

    show = sub.add_parser("show", help="one job in detail")
    show.add_argument("job", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)

    logs = sub.add_parser("logs", help="print a job's log (-f follows it)")
    logs.add_argument("job", type=int)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--rank", type=int)
    logs.set_defaults(func=_logs)

    samples = sub.add_parser("samples", help="list the sample images a job rendered while training")
    samples.add_argument("job", type=int)
    samples.add_argument("--latest", action="store_true", help="only the newest image of each prompt")
    samples.add_argument("--json", action="store_true")
    samples.set_defaults(func=_samples)

    for action, text in (
        ("cancel", "cancel a job (kills its processes)"),
        ("stop", "graceful stop: checkpoint and quit, cancel after a timeout"),
        ("retry", "queue an ended job again from the start"),
        ("resume", "queue an ended job again from its last checkpoint"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("job", type=int)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_request, action=action)

    move = sub.add_parser("move", help="reorder a queued job")
    move.add_argument("job", type=int)
    move.add_argument("where", choices=["up", "down", "top", "bottom"])
    move.set_defaults(func=_request, action="move", json=False)

    wait = sub.add_parser("wait", help="block until a job ends; exit 0 only if it completed")
    wait.add_argument("job", type=int)
    wait.add_argument("--timeout", type=float, metavar="S")
    wait.add_argument("--json", action="store_true")
    wait.set_defaults(func=_wait)


def _add(args: argparse.Namespace) -> int:
    from engine.jobs import client, launch
    from profiles.errors import ProfileError

    gpus = None
    if args.gpus:
        try:
            gpus = [int(x) for x in args.gpus.split(",") if x.strip()]
        except ValueError:
            error(f"--gpus: expected comma-separated GPU indexes like 0,2, found {args.gpus!r}")
            return 2
    try:
        extra = launch.multi_node_args(
            args.hostfile, args.launcher, args.include, args.exclude, args.num_nodes, args.master_addr
        )
        job_id = client.enqueue(
            args.profile, gpus=gpus, num_gpus=args.num_gpus, backend=args.backend, name=args.name,
            priority=args.priority, after=args.after, hang_timeout_s=args.hang_timeout, launcher_args=extra or None,
        )
    except ProfileError as exc:
        error(str(exc))
        return 2
    except launch.EnqueueError as exc:
        error(str(exc))
        return 1
    client.ensure_daemon()
    if args.json:
        print_json({"id": job_id})
    else:
        print(job_id)
    return 0


def _pause(args: argparse.Namespace) -> int:
    from engine.jobs import client

    client.set_queue_paused(args.paused)
    print("queue paused" if args.paused else "queue unpaused")
    return 0


def _fmt_secs(value: float | None) -> str:
    if value is None:
        return "-"
    value = int(value)
    h, rem = divmod(value, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _row(job: Job) -> list[str]:
    progress = "-"
    if job.step is not None:
        progress = f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step)
    epoch = "-" if job.epoch is None else (f"{job.epoch}/{job.total_epochs}" if job.total_epochs else str(job.epoch))
    return [
        str(job.id),
        job.name[:24],
        STATE_MARK.get(job.state, job.state),
        ",".join(map(str, job.gpus)) if job.gpus else "-",
        progress,
        epoch,
        "-" if job.loss is None else f"{job.loss:.4f}",
        "-" if job.samples_per_s is None else f"{job.samples_per_s:.2f}",
        _fmt_secs(job.eta_s) if not job.finished else "-",
        job.exit_reason or (job.wait_reason or "")[:40],
    ]


HEADERS = ["ID", "NAME", "STATE", "GPUS", "STEP", "EPOCH", "LOSS", "SAMPLES/S", "ETA", "REASON"]


def _ls(args: argparse.Namespace) -> int:
    from engine.jobs import client

    note = client.check_daemon()
    if note:
        print(f"dpdeck: {note}", file=sys.stderr)
    if args.json:
        # Compact, one C-encoder call: stores with thousands of jobs list in a blink.
        sys.stdout.write(json.dumps(client.list_job_dicts(include_finished=args.all)) + "\n")
        return 0
    jobs = client.list_jobs(include_finished=args.all)
    if not jobs:
        print("no jobs" + ("" if args.all else " (dpdeck ls --all shows finished ones)"))
        return 0
    print(table([_row(j) for j in jobs], HEADERS))
    if client.queue_paused():
        print("queue is paused (dpdeck queue unpause)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from engine.jobs import client

    try:
        job = client.get_job(args.job)
    except KeyError as exc:
        error(str(exc.args[0]))
        return 2
    if args.json:
        data = job.public()
        data["saves"] = client.job_saves(job.id)
        data["events"] = client.job_events(job.id)
        data["tensorboard"] = client.job_tb_metrics(job.id)
        print_json(data)
        return 0
    for key, value in job.public().items():
        if key == "evidence":
            continue
        if value is not None:
            print(f"{key:>14}: {show_value(key, value)}")
    if job.started_at is not None:
        ran = (job.ended_at or time.time()) - job.started_at
        print(f"{'ran for' if job.ended_at else 'running for':>14}: {units.duration(ran)}")
    for save in client.job_saves(job.id):
        print(f"{'save':>14}: {save['kind']} {save['path']}{'' if save['complete'] else ' (incomplete)'}")
    _print_tb(client.job_tb_metrics(job.id))
    if job.evidence:
        print("      evidence:")
        for line in job.evidence:
            print(f"    {line}")
    return 0


def _list_text(value: list[Any]) -> str:
    return ", ".join(map(str, value)) or "-"


# `dpdeck show` in human units: the store's raw value (epoch seconds, lists, floats) by field; JSON keeps the raw.
SHOW_FORMAT: dict[str, Callable[[Any], str]] = {
    "created_at": units.when,
    "started_at": units.when,
    "ended_at": units.when,
    "eta_s": units.duration,
    "gpus": _list_text,
    "launcher_args": lambda v: " ".join(v),
    "loss": lambda v: f"{v:.4f}",
    "lr": lambda v: f"{v:.3g}",
    "samples_per_s": lambda v: f"{v:.2f}",
}


def show_value(key: str, value: Any) -> str:
    return SHOW_FORMAT.get(key, str)(value)


def _print_tb(tb: dict[str, Any]) -> None:
    """Epoch and eval losses from the run folder's TensorBoard events (diffusion-pipe prints neither)."""
    for point in tb["epoch_loss"]:
        print(f"{'epoch loss':>14}: epoch {point['epoch']} {point['loss']:.6g}")
    for name, points in tb["evals"].items():
        shown = ", ".join(f"step {p['step']} {p['loss']:.6g}" for p in points[-5:])
        more = f" (last 5 of {len(points)})" if len(points) > 5 else ""
        print(f"{'eval ' + name:>14}: {shown}{more}")
    if tb.get("note"):
        print(f"dpdeck: {tb['note']}", file=sys.stderr)


def _logs(args: argparse.Namespace) -> int:
    from engine.jobs import client

    try:
        path = client.job_log_path(args.job, args.rank)
    except KeyError as exc:
        error(str(exc.args[0]))
        return 2
    offset = 0
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        if not args.follow:
            return 0
        if client.get_job(args.job).finished and not data:
            return 0
        time.sleep(0.25)


def _samples(args: argparse.Namespace) -> int:
    from engine.jobs import client

    try:
        found = client.job_samples(args.job)
    except KeyError as exc:
        error(str(exc.args[0]))
        return 2
    if args.latest:
        newest: dict[int, dict[str, Any]] = {}
        for s in found:  # listed by prompt, then step: the last of each prompt wins
            newest[s["index"]] = s
        found = list(newest.values())
    if args.json:
        print_json(found)
        return 0
    if not found:
        print(f"job {args.job}: no samples yet (a [sample] table renders them; built-in trainer only)")
        return 0
    rows = [
        [
            str(s["index"]),
            str(s["step"]),
            str(s["epoch"] or "-"),
            f"{s['width'] or '?'}x{s['height'] or '?'}",
            s["prompt"][:40],
            s["path"],
        ]
        for s in found
    ]
    print(table(rows, ["PROMPT#", "STEP", "EPOCH", "SIZE", "PROMPT", "PATH"]))
    return 0


def _request(args: argparse.Namespace) -> int:
    from engine.jobs import client
    from engine.jobs.protocol import Action, Request, RequestError

    try:
        result = client.send(Request(Action(args.action), args.job, getattr(args, "where", None))).check()
    except KeyError as exc:
        error(str(exc.args[0]))
        return 2
    except RequestError as exc:  # the daemon's refusal, in its words
        error(str(exc))
        return 1
    if getattr(args, "json", False):
        print_json(result.to_dict())
    else:
        print(result.message or "ok")
    return 0


def _wait(args: argparse.Namespace) -> int:
    from engine.jobs import client

    try:
        job = client.wait(args.job, timeout=args.timeout)
    except KeyError as exc:
        error(str(exc.args[0]))
        return 2
    except TimeoutError as exc:
        error(str(exc))
        return 124
    if args.json:
        print_json(job.public())
    else:
        print(f"job {job.id}: {job.state} ({job.exit_reason})")
    return 0 if job.state == "completed" else 1
