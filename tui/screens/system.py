"""System: every GPU with its processes (ours or foreign), CPU/RAM/disk, daemon status, reclaim."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from tui import data
from tui.screens.base import DeckScreen


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


class SystemLoaded(Message):
    def __init__(self, gpus: list[dict[str, Any]], stats: dict[str, Any], daemon: dict[str, Any]) -> None:
        super().__init__()
        self.gpus = gpus
        self.stats = stats
        self.daemon = daemon


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


def gpu_summary(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "No NVIDIA GPUs found on this machine (NVML reports none). Training here runs on CPU only."
    return f"{len(gpus)} GPU(s)"


class SystemScreen(DeckScreen):
    TITLE_TEXT = "System"
    POLL_SECONDS = 3.0  # NVML plus a process scan (ours vs foreign): a few ms each time
    BINDINGS = [
        Binding("R", "reclaim", "Reclaim orphans", id="system.reclaim"),
        Binding("r", "refresh", "Refresh", id="system.refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="system-body"):
            yield Static("[b]GPUs[/b]")
            yield Static("reading GPUs…", id="gpu-summary", markup=False)
            yield DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
            yield Static("\n[b]Host[/b]")
            yield Static("…", id="host-stats", markup=False)
            yield Static("\n[b]Daemon[/b]")
            yield Static("…", id="daemon-status", markup=False)

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
        super().on_mount()

    def poll(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="system-load")
    def load(self) -> None:
        self.post_message(SystemLoaded(data.gpu_report(), data.system_stats(), data.daemon_status()))

    def on_system_loaded(self, message: SystemLoaded) -> None:
        self.query_one("#gpu-summary", Static).update(gpu_summary(message.gpus))
        table = self.query_one("#gpu-table", DataTable)
        table.display = bool(message.gpus)
        seen = set()
        for gpu in message.gpus:
            key = str(gpu.get("index"))
            seen.add(key)
            procs = gpu.get("processes", []) or []
            cells = {
                "index": key,
                "name": str(gpu.get("name", "?")),
                "util": f"{gpu.get('util', '?')}%",
                "mem": f"{_gib(gpu.get('mem_used', 0))}/{_gib(gpu.get('mem_total', 0))}",
                "temp": f"{gpu.get('temp', '?')}°C",
                "power": f"{gpu.get('power', '?')} W",
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
        self.query_one("#host-stats", Static).update(stats_text(message.stats))
        daemon = message.daemon
        running = daemon.get("running")
        text = ("● running" if running else "○ not running") + "".join(
            f"\n{k}: {v}" for k, v in daemon.items() if k != "running"
        )
        self.query_one("#daemon-status", Static).update(text)

    def action_refresh(self) -> None:
        self.load()

    def action_reclaim(self) -> None:
        self._preview()

    @work(thread=True, exclusive=True, group="system-reclaim")
    def _preview(self) -> None:
        try:
            plan = data.reclaim(dry_run=True)
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
            done = data.reclaim(dry_run=False)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"reclaim failed: {exc}", severity="error", timeout=8)
            return
        killed, survivors = done.get("killed") or [], done.get("survivors") or []
        note = f"reclaimed {len(killed)} process(es)" + (
            f"; {len(survivors)} still alive" if survivors else ""
        )
        self.app.call_from_thread(self.notify, note, severity="warning" if survivors else "information")
        self.load()
