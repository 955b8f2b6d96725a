"""Picture tests of the deck: every area, help and the editor at 80x24 and 160x48, in one fixed state.

A layout regression (a cut footer, a column that no longer fits, a panel that moved) shows as a picture diff in
the report pytest-textual-snapshot writes (snapshot_report.html). After an intended change, regenerate them and
LOOK at the new pictures before committing:

    PYTHONPATH=$PWD python -m pytest -q -p no:cacheprovider tests/test_tui_snapshots.py --snapshot-update

The state is the same on every run and machine: a fixed DPDECK_HOME path (recreated per test), a fixed folder
to start in holding a small generated dataset (BMP images: byte-for-byte the same sizes everywhere), TZ=UTC, the
wall clock frozen with time-machine (Textual and asyncio run on the monotonic clock, which it leaves alone),
real stored profiles and a real header-only model file, and the engine stand-in (tests/fake_engine.py) with
fixed jobs, metrics and host figures (the one part of the state a real machine cannot fix); the free disk space
Models shows comes from shutil.disk_usage, answered with a fixed figure for paths under ROOT.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from PIL import Image
from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.fake_engine import FakeEngine, make_job
from tests.tui_helpers import screen_text, wait_text, wait_until
from tui.app import DeckApp

time_machine = pytest.importorskip("time_machine")

# About 40 s for the 16 pictures on a loaded 2-core box; still in the default run (no addopts deselects it).
pytestmark = pytest.mark.slow

ROOT = Path("/tmp/dpdeck-snapshots")  # fixed: paths are on screen
NOW = 1_796_155_200.0  # 2026-12-01 20:00 UTC: every time and age on screen is measured from here
SIZES = {"80x24": (80, 24), "160x48": (160, 48)}
# How long a screen must stay unchanged before it is photographed (workers and polls have landed).
SETTLE_S = 0.6

# name -> (size, colour, caption or None for no caption file)
IMAGES: dict[str, tuple[tuple[int, int], tuple[int, int, int], str | None]] = {
    "01_fox.bmp": ((96, 96), (200, 90, 30), "snapfox, a fox in snow, looking left"),
    "02_forest.bmp": ((128, 80), (40, 120, 50), "snapfox, forest, wide shot"),
    "03_night.bmp": ((80, 120), (30, 30, 90), None),
    "04_field.bmp": ((112, 84), (190, 180, 70), "snapfox, field, tall grass"),
}

JOBS: list[dict[str, Any]] = [
    {
        "job_id": 1,
        "name": "snaplora",
        "state": "running",
        "step": 620,
        "total_steps": 1000,
        "epoch": 7,
        "total_epochs": 10,
        "loss": 0.0834,
        "lr": 1e-4,
        "samples_per_s": 3.2,
        "eta_s": 118.0,
        "gpus": [0, 1],
        "started_at": NOW - 3725,
        "created_at": NOW - 3800,
        "profile": "snaplora",
        "pid": 4242,
    },
    {
        "job_id": 2,
        "name": "snaplora-v2",
        "state": "queued",
        "total_steps": 800,
        "total_epochs": 8,
        "created_at": NOW - 600,
        "profile": "snaplora",
        "wait_reason": "waiting for GPU 0 (job 1)",
    },
    {
        "job_id": 3,
        "name": "first-try",
        "state": "completed",
        "step": 400,
        "total_steps": 400,
        "epoch": 4,
        "total_epochs": 4,
        "loss": 0.1012,
        "exit_reason": "completed",
        "created_at": NOW - 90000,
        "started_at": NOW - 89000,
        "ended_at": NOW - 86400,
        "profile": "snaplora",
    },
    {
        "job_id": 4,
        "name": "oom-test",
        "state": "failed",
        "step": 12,
        "total_steps": 1000,
        "epoch": 1,
        "exit_reason": "failed: rank 1 exit 1",
        "evidence": ["torch.OutOfMemoryError: CUDA out of memory"],
        "created_at": NOW - 7300,
        "started_at": NOW - 7200,
        "ended_at": NOW - 7100,
        "profile": "snaplora",
    },
]

LOG_LINES = [
    "[2026-11-30 22:58:01] launching deepspeed on GPUs 0,1 (port 29611)",
    "steps: 600 loss: 0.0851 iter time (s): 0.311 samples/sec: 3.21",
    "steps: 610 loss: 0.0840 iter time (s): 0.309 samples/sec: 3.24",
    "saving epoch 6 to /tmp/dpdeck-snapshots/work/output/epoch6",
    "steps: 620 loss: 0.0834 iter time (s): 0.312 samples/sec: 3.20",
]

GPUS: list[dict[str, Any]] = [
    {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "util": 97,
        "mem_used": 61 * 2**30,
        "mem_total": 80 * 2**30,
        "temp": 71,
        "power": 612,
        "processes": [{"pid": 4242, "ours": True}],
    },
    {
        "index": 1,
        "name": "NVIDIA H100 80GB HBM3",
        "util": 95,
        "mem_used": 60 * 2**30,
        "mem_total": 80 * 2**30,
        "temp": 69,
        "power": 598,
        "processes": [{"pid": 4243, "ours": True}, {"pid": 777, "ours": False}],
    },
]


@dataclass(frozen=True)
class Fixed:
    home: Path
    work: Path
    dataset: Path
    log: Path


def _write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, (name, (size, colour, caption)) in enumerate(IMAGES.items()):
        # Two-tone blocks, not a flat colour: the half-block preview shows some shape.
        image = Image.new("RGB", size, colour)
        dark = tuple(c // 2 for c in colour)
        for x in range(0, size[0], 16):
            for y in range(0, size[1], 16):
                if (x // 16 + y // 16 + i) % 3 == 0:
                    image.paste(dark, (x, y, min(x + 16, size[0]), min(y + 16, size[1])))
        image.save(folder / name)  # BMP: no compressor whose version could change the byte count on screen
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption + "\n")


def _store_profile(fixed: Fixed) -> None:
    from profiles import store
    from profiles.templates import load_template

    profile = load_template("sd15")
    profile.main.set("output_dir", str(fixed.work / "output"))
    profile.main.set("model.diffusers_path", str(fixed.home / "models" / "sd15"))
    profile.dataset.set("directory[0].path", str(fixed.dataset))
    store.save_profile("snaplora", profile, "from the sd15 template", create=True)


def _write_model(fixed: Fixed) -> None:
    from engine.models.safetensors_header import write_header_only

    (fixed.home / "models").mkdir()
    # Enough of an SDXL checkpoint's header for discovery to name the family.
    write_header_only(
        fixed.home / "models" / "my_pony.safetensors",
        {
            "model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
            "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),
            "first_stage_model.decoder.conv_in.weight": ("F16", (512, 4, 3, 3)),
        },
    )


def _pin_mtimes(root: Path) -> None:
    """Every file and folder dated NOW - 1 h: the deck shows saved-at times and output ages from mtimes."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, (NOW - 3600, NOW - 3600), follow_symlinks=False)


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


# The free space of this machine's /tmp, as Models' pull line and size question show it, fixed like the rest.
FIXED_DISK = DiskUsage(total=2000 * 2**30, used=700 * 2**30, free=1300 * 2**30)


def _fixed_disk_usage(real: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """shutil.disk_usage answering FIXED_DISK for paths inside ROOT (and the real figures elsewhere)."""

    def disk_usage(path: Any) -> Any:
        return FIXED_DISK if Path(os.fspath(path)).is_relative_to(ROOT) else real(path)

    return disk_usage


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fixed]:
    shutil.rmtree(ROOT, ignore_errors=True)
    # The running job's log where the engine keeps it: the Run screen reads its age (stalled or not) there.
    log = ROOT / "home" / "jobs" / "1" / "output.log"
    state = Fixed(ROOT / "home", ROOT / "work", ROOT / "work" / "dataset", log)
    for name in list(os.environ):
        # A developer's own settings (models dir, image protocol, hub cache, colours) would change what is drawn.
        textual = name.startswith("TEXTUAL_") and not name.startswith("TEXTUAL_SNAPSHOT_")  # the plugin's own
        if name.startswith(("DPDECK_", "HF_")) or textual or name in ("NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DPDECK_HOME", str(state.home))
    monkeypatch.setenv("HF_HUB_CACHE", str(ROOT / "hf-cache"))
    monkeypatch.setenv("DPDECK_IMAGE_PROTOCOL", "halfblock")
    # The stdlib call, not a dpdeck internal: every reader of free space (Models, downloads) goes through it.
    monkeypatch.setattr(shutil, "disk_usage", _fixed_disk_usage(shutil.disk_usage))
    old_tz = os.environ.get("TZ")
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    state.home.mkdir(parents=True)
    (ROOT / "hf-cache").mkdir()
    _write_dataset(state.dataset)
    state.log.parent.mkdir(parents=True)
    state.log.write_text("\n".join(LOG_LINES) + "\n")
    monkeypatch.chdir(state.work)
    with time_machine.travel(NOW, tick=False):
        _store_profile(state)
        _write_model(state)
        _pin_mtimes(ROOT)
        # Written 20 s ago: a healthy running job, not a stalled one.
        os.utime(state.log, (NOW - 20, NOW - 20))
        yield state
    if old_tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old_tz
    time.tzset()


def fixed_engine(fixed: Fixed) -> FakeEngine:
    engine = FakeEngine(fixed.log)
    for spec in JOBS:
        fields = dict(spec)
        job_id = fields.pop("job_id")
        engine.jobs[job_id] = make_job(
            job_id, fields.pop("name"), job_dir=f"{fixed.home}/jobs/{job_id}", **fields
        )
    # A falling curve with a little wobble, the same every time.
    engine.metrics = [
        {"step": s, "loss": 0.3 / (1 + s / 80) + 0.01 * ((s * 7) % 5) / 5, "lr": 1e-4}
        for s in range(1, 621, 5)
    ]
    engine.saves = [
        {"kind": "epoch", "path": str(fixed.work / "output" / f"epoch{n}"), "complete": True} for n in (5, 6)
    ]
    engine.gpus = GPUS
    engine.stats = {
        "cpu_percent": 41.5,
        "cpu_count": 32,
        "ram_used": 96 * 2**30,
        "ram_total": 256 * 2**30,
        "disks": {str(fixed.home): FIXED_DISK._asdict()},
    }
    return engine


async def settle(pilot: Pilot[object], needle: str) -> None:
    """Wait for `needle`, then until the screen has not changed for SETTLE_S (workers and polls landed)."""
    await wait_text(pilot, needle)
    last, since = screen_text(pilot.app), time.monotonic()
    deadline = since + 20
    while time.monotonic() - since < SETTLE_S:
        assert time.monotonic() < deadline, f"the screen never settled:\n{last}"
        await pilot.pause(0.1)
        now = screen_text(pilot.app)
        if now != last:
            last, since = now, time.monotonic()


async def _profiles(pilot: Pilot[object]) -> None:
    await settle(pilot, "snaplora")


async def _queue(pilot: Pilot[object]) -> None:
    await settle(pilot, "oom-test")


async def _run(pilot: Pilot[object]) -> None:
    await wait_text(pilot, "snaplora")
    await pilot.press("enter")  # the Queue's first row: the running job
    plot = pilot.app.screen.query_one("#loss-plot")
    await wait_until(pilot, lambda: getattr(plot, "points", 0) > 0, what="loss curve")
    await settle(pilot, "step 620/1000")


async def _system(pilot: Pilot[object]) -> None:
    await settle(pilot, "H100")


async def _datasets(pilot: Pilot[object]) -> None:
    from tui.widgets.image_preview import ImagePreview

    preview = pilot.app.screen.query_one("#ds-preview", ImagePreview)
    await wait_until(pilot, lambda: preview.painted_path is not None, what="image preview")
    await settle(pilot, "01_fox.bmp")


async def _models(pilot: Pilot[object]) -> None:
    await settle(pilot, "my_pony.safetensors")


async def _help(pilot: Pilot[object]) -> None:
    await wait_text(pilot, "snaplora")
    await pilot.press("question_mark")
    # By class name: which keys the help lists first (and so what is on screen) is the help's own business.
    await wait_until(pilot, lambda: type(pilot.app.screen).__name__ == "HelpScreen", what="help screen")
    await settle(pilot, "")


async def _editor(pilot: Pilot[object]) -> None:
    await wait_text(pilot, "snaplora")
    await pilot.press("enter")  # the first row: the stored profile
    await settle(pilot, "output_dir")


# shot -> (the area the deck starts in, what brings the screen into its fixed state)
SHOTS: dict[str, tuple[str, Callable[[Pilot[object]], Coroutine[Any, Any, None]]]] = {
    "profiles": ("profiles", _profiles),
    "queue": ("queue", _queue),
    "run": ("queue", _run),
    "system": ("system", _system),
    "datasets": ("datasets", _datasets),
    "models": ("models", _models),
    "help": ("profiles", _help),
    "editor": ("profiles", _editor),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shot", SHOTS)
def test_screen(shot: str, size: str, fixed: Fixed, snap_compare: Any) -> None:
    start, prepare = SHOTS[shot]

    async def run_before(pilot: Pilot[object]) -> None:
        await prepare(pilot)
        # A DataTable filled by a worker may keep a header drawn for its empty columns until its next repaint
        # (seen at random on System and Datasets): a resize repaints every widget, so the picture is the
        # settled layout, the same every run.
        width, height = SIZES[size]
        await pilot.resize_terminal(width, height + 1)
        await pilot.resize_terminal(width, height)
        for table in pilot.app.screen.query(DataTable):
            # Its row cache may hold cells drawn before the last width change, split into segments differently
            # (the same picture, other bytes): a zebra_stripes change clears it; toggled twice, nothing changes.
            table.zebra_stripes = not table.zebra_stripes
            table.zebra_stripes = not table.zebra_stripes
        await settle(pilot, "")
        # A blinking cursor is drawn or not depending on when the picture is taken: keep it drawn.
        for field in pilot.app.screen.query("Input, TextArea"):
            field.cursor_blink = False  # type: ignore[attr-defined]

    app = DeckApp(start_mode=start, engine=fixed_engine(fixed))
    assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)
