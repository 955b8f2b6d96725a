"""System: every GPU with its processes (ours or foreign), CPU/RAM/disk, daemon status, reclaim, and the
diffusion-pipe backend (its checkout's commit, dirty, behind; an install or update's steps while one runs)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from tui import data, units
from tui.engine_api import engine_of
from tui.keyscheme import bind
from tui.screens.base import DeckScreen


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _reading(value: object, unit: str) -> str:
    """One NVML reading with its unit; `-` when the driver reports none (never `None W`)."""
    if value is None:
        return "-"
    return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"


class SystemLoaded(Message):
    def __init__(
        self, gpus: list[dict[str, Any]], stats: dict[str, Any], daemon: dict[str, Any], backend: dict[str, Any]
    ) -> None:
        super().__init__()
        self.gpus = gpus
        self.stats = stats
        self.daemon = daemon
        self.backend = backend


def backend_report() -> dict[str, Any]:
    """`dpdeck backend status` without a fetch (git reads only: cheap enough for every poll)."""
    from engine.jobs.checkout import status

    try:
        return status.report(fetch=False)
    except Exception as exc:  # a broken record or settings file must not take the rest of the screen down
        return {"error": str(exc)}


def backend_text(rep: dict[str, Any]) -> str:
    """The status lines, then the last install/update run's steps (all of them while it runs)."""
    from engine.jobs.checkout import status

    if "error" in rep:
        return f"backend status unavailable: {rep['error']}"
    lines = status.lines(rep)
    progress = rep.get("progress")
    if progress and not progress.get("running"):
        failed = [s for s in progress.get("steps", []) if s.get("state") == "failed"]
        if failed or progress.get("ok") is False:
            lines.append(f"  last {progress.get('action')} failed:")
            lines += [f"    {s['n']} {s['name']}: {s['state']} {s.get('detail', '')}".rstrip()
                      for s in progress.get("steps", [])]
        elif progress.get("finished") is None:
            lines.append(f"  last {progress.get('action')}: {progress.get('summary')}")
    if not rep.get("managed"):
        lines.append("  B installs a managed checkout (dpdeck backend install diffusion-pipe)")
    else:
        lines.append("  B updates it (dpdeck backend update diffusion-pipe)")
    return "\n".join(lines)


def backend_command(rep: dict[str, Any]) -> list[str]:
    """What B runs: update a checkout dpdeck manages, else install one."""
    action = "update" if rep.get("managed") else "install"
    return [sys.executable, "-m", "tui.cli", "backend", action, "diffusion-pipe"]


def stats_text(stats: dict[str, Any]) -> str:
    lines = []
    cpu = stats.get("cpu_percent", stats.get("cpu"))
    if cpu is not None:
        lines.append(f"CPU  {float(cpu):5.1f}%  of {stats.get('cpu_count', '?')} cores")
    if "ram_total" in stats:
        lines.append(f"RAM  {_gib(stats.get('ram_used', 0))} / {_gib(stats['ram_total'])}")
    disks = stats.get("disks") or {d.get("path"): d for d in stats.get("disk", []) or []}
    for path, disk in disks.items():
        lines.append(f"Disk {path}: {_gib(disk.get('free', 0))} free of {_gib(disk.get('total', 0))}")
    return "\n".join(lines) or "no system figures"


# Job states in the order a person asks about them: what is happening, then what is waiting, then the ends.
STATE_ORDER = ("running", "starting", "stopping", "cleanup", "queued", "completed", "failed", "oom", "hung",
               "interrupted", "cancelled")


def daemon_text(daemon: dict[str, Any], width: int = 76) -> str:
    """engine daemon_status() as sentences: `● running (pid 42)`, `jobs: 1 running, 2 cancelled`, `queue
    paused: no` (the dict's own repr used to reach the screen: `paused: False`, `jobs: {...}`)."""
    pid = f" (pid {daemon['pid']})" if daemon.get("pid") else ""
    lines = [f"● running{pid}" if daemon.get("running") else "○ not running (it starts when a job is queued)"]
    if "jobs" in daemon:
        lines.append(f"jobs: {units.counts(daemon['jobs'], STATE_ORDER, none='none yet')}")
    if "paused" in daemon:
        lines.append(f"queue paused: {units.yes_no(daemon['paused'])}")
    if daemon.get("state_dir"):
        lines.append(f"state dir: {units.middle(daemon['state_dir'], max(20, width - 11))}")
    lines += [f"problem: {p}" for p in daemon.get("problems") or []]
    if daemon.get("detail"):
        lines.append(str(daemon["detail"]))
    return "\n".join(lines)


def gpu_summary(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "No NVIDIA GPUs found on this machine (NVML reports none). Training here runs on CPU only."
    return f"{len(gpus)} GPU(s)"


class SystemScreen(DeckScreen):
    TITLE_TEXT = "System"
    POLL_SECONDS = 3.0  # NVML plus a process scan (ours vs foreign): a few ms each time
    BINDINGS = [
        bind("system.reclaim", "reclaim", "Reclaim orphans"),
        bind("system.refresh", "refresh", "Refresh"),
        bind("system.backend", "backend", "Install/update diffusion-pipe"),
    ]
    _backend: dict[str, Any] | None = None  # the last backend report shown
    _proc: subprocess.Popen[bytes] | None = None  # a backend run B started (reaped by poll)

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="system-body"):
            yield Static("[b]GPUs[/b]")
            yield Static("reading GPUs…", id="gpu-summary", markup=False)
            yield DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
            yield Static("\n[b]Host[/b]")
            yield Static("…", id="host-stats", markup=False)
            yield Static("\n[b]Daemon[/b]")
            yield Static("…", id="daemon-status", markup=False)
            yield Static("\n[b]diffusion-pipe backend[/b]")
            yield Static("…", id="backend-status", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#gpu-table", DataTable)
        for key, label in (
            ("index", "#"),
            ("name", "GPU"),
            ("util", "util"),
            ("mem", "memory"),
            ("temp", "temp"),
            ("power", "power"),
            ("procs", "processes"),
        ):
            table.add_column(label, key=key)
        # Hidden until its first rows are in: Textual's DataTable keeps a header drawn while it was empty at
        # the label-wide columns after the rows widen them (a misaligned header until the next poll, 2 runs in 4).
        table.display = False
        super().on_mount()

    def poll(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # reaped: a finished run must not linger as a zombie that looks alive
        self.load()

    @work(thread=True, exclusive=True, group="system-load")
    def load(self) -> None:
        engine = engine_of(self.app)
        try:
            daemon = engine.daemon_status()
        except Exception as exc:  # a damaged or locked store: the GPUs and host figures are still worth showing
            daemon = {"running": False, "detail": str(exc)}
        self.post_message(SystemLoaded(engine.gpu_report(), data.system_stats(engine), daemon, backend_report()))

    def on_system_loaded(self, message: SystemLoaded) -> None:
        self.query_one("#gpu-summary", Static).update(gpu_summary(message.gpus))
        table = self.query_one("#gpu-table", DataTable)
        seen = set()
        for gpu in message.gpus:
            key = str(gpu.get("index"))
            seen.add(key)
            procs = gpu.get("processes", []) or []
            cells = {
                "index": key,
                "name": str(gpu.get("name", "?")),
                "util": _reading(gpu.get("util"), "%"),
                "mem": f"{_gib(gpu.get('mem_used') or 0)}/{_gib(gpu.get('mem_total') or 0)}",
                "temp": _reading(gpu.get("temp"), "°C"),
                "power": _reading(gpu.get("power"), " W"),
                "procs": ", ".join(f"{p.get('pid')} {'ours' if p.get('ours') else 'FOREIGN'}" for p in procs)
                or "-",
            }
            if key in table.rows:
                for col, value in cells.items():
                    table.update_cell(key, col, value, update_width=True)
            else:
                table.add_row(*cells.values(), key=key)
        for key in [k.value for k in table.rows if k.value not in seen]:
            table.remove_row(key)
        table.display = bool(message.gpus)
        self.query_one("#host-stats", Static).update(stats_text(message.stats))
        pane = self.query_one("#daemon-status", Static)
        pane.update(daemon_text(message.daemon, pane.size.width or 76))
        self._backend = message.backend
        self.query_one("#backend-status", Static).update(backend_text(message.backend))

    def action_refresh(self) -> None:
        self.load()

    def action_backend(self) -> None:
        rep = self._backend or {}
        progress = rep.get("progress") or {}
        if progress.get("running"):
            self.notify(f"a backend {progress.get('action')} is already running (pid {progress.get('pid')})")
            return
        argv = backend_command(rep)
        self.confirm(f"Run `dpdeck {' '.join(argv[3:])}`?\nIts steps show here as they run; "
                     "its output goes to the backend log in the state dir.", lambda: self._start_backend(argv))

    def _start_backend(self, argv: list[str]) -> None:
        from statefiles import paths

        log = paths.subdir("backend") / "diffusion-pipe.log"
        with open(log, "ab") as out:
            # Its own session: quitting the deck must not kill a clone or pip install half way.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.notify(f"started `dpdeck {' '.join(argv[3:])}`; log: {log}")
        self.load()

    def action_reclaim(self) -> None:
        self._preview()

    @work(thread=True, exclusive=True, group="system-reclaim")
    def _preview(self) -> None:
        try:
            plan = engine_of(self.app).reclaim(dry_run=True)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"reclaim unavailable: {exc}", severity="error", timeout=8)
            return
        self.app.call_from_thread(self._ask_reclaim, plan)

    def _ask_reclaim(self, plan: dict[str, Any]) -> None:
        items = plan.get("orphans") or []
        if not items:
            self.notify("Nothing to reclaim: no orphan processes of ours.")
            return
        lines = "\n".join(
            f"  pid {p.get('pid')} job {p.get('job')} {p.get('name', '')}"
            if isinstance(p, dict)
            else f"  {p}"
            for p in items[:10]
        )
        self.confirm(
            f"Reclaim would stop these orphan processes of ours:\n{lines}\nStop them?", self._reclaim
        )

    @work(thread=True, exclusive=True, group="system-reclaim")
    def _reclaim(self) -> None:
        try:
            done = engine_of(self.app).reclaim(dry_run=False)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"reclaim failed: {exc}", severity="error", timeout=8)
            return
        killed, survivors = done.get("killed") or [], done.get("survivors") or []
        note = f"reclaimed {len(killed)} process(es)" + (
            f"; {len(survivors)} still alive" if survivors else ""
        )
        self.app.call_from_thread(self.notify, note, severity="warning" if survivors else "information")
        self.load()
