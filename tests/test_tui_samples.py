"""The Run screen shows the newest sample image of each [sample] prompt and flips through steps with keys.

The images are written by the trainer's own writer (engine/trainer/sampling.py write_sample: PNG, JSON
sidecar, the `sample` event) into a real run folder; the job around it is the deck's in-memory engine stand-in
(tests/fake_engine.py FakeEngine), as in the other Run screen tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from engine.trainer.sampling import write_sample
from tests.fake_engine import FakeEngine, make_job
from tests.tui_helpers import screen_text, wait_text, wait_until
from tui.app import DeckApp
from tui.widgets.image_preview import ImagePreview

PROMPTS = ("a red circle", "a green square")
# One flat colour per (step, prompt): the painted cells tell which image is on screen.
COLOURS = {
    (10, 0): (200, 40, 40),
    (20, 0): (40, 40, 200),
    (10, 1): (40, 200, 40),
    (20, 1): (200, 200, 40),
    (30, 1): (40, 200, 200),
}


def _write(run: Path, step: int, index: int) -> Path:
    image = Image.new("RGB", (64, 48), COLOURS[(step, index)])
    sidecar = {
        "step": step,
        "epoch": 1,
        "index": index,
        "prompt": PROMPTS[index],
        "seed": 1,
        "width": 64,
        "height": 48,
        "steps": 20,
        "guidance": 7.0,
    }
    return write_sample(run / "samples", image, sidecar)


def _painted_colour(preview: ImagePreview) -> tuple[int, int, int] | None:
    """The foreground colour of the middle half-block cell of the preview."""
    strips = preview._strips
    if not strips:
        return None
    for segment in strips[len(strips) // 2]:
        if segment.text.startswith("▀") and segment.style and segment.style.color:
            triplet = segment.style.color.get_truecolor()
            return (triplet.red, triplet.green, triplet.blue)
    return None


def _close(a: tuple[int, int, int] | None, b: tuple[int, int, int]) -> bool:
    return a is not None and all(abs(x - y) <= 3 for x, y in zip(a, b, strict=True))  # 64-level quantizing


async def test_run_screen_shows_and_flips_samples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tui.screens.run import RunScreen

    monkeypatch.setattr(RunScreen, "POLL_SECONDS", 0.3)
    monkeypatch.setenv("DPDECK_IMAGE_PROTOCOL", "halfblock")
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    for step, index in ((10, 0), (10, 1), (20, 0), (20, 1)):
        _write(run, step, index)
    log = tmp_path / "job.log"
    log.write_text("steps: 20 loss: 0.1 iter time (s): 1 samples/sec: 1\n")
    engine = FakeEngine(log)
    engine.metrics = [{"step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 21)]
    engine.jobs[5] = make_job(
        5, "sampled", state="running", step=20, total_steps=40, started_at=time.time(), run_dir=str(run)
    )
    engine.jobs[6] = make_job(
        6, "plain", state="running", step=3, started_at=time.time(), run_dir=str(tmp_path)
    )
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_text(pilot, "sampled")
        await pilot.press("enter")
        text = await wait_text(pilot, "Sample 1/2  step 20 (2/2)")
        assert "a red circle" in text and "64x48 · newest" in text
        preview = app.screen.query_one("#run-sample-image", ImagePreview)
        await wait_until(
            pilot,
            lambda: (
                preview.painted_path == run / "samples" / "20_0.png"
                and _close(_painted_colour(preview), COLOURS[(20, 0)])
            ),
            what="the newest sample of prompt 1 painted",
        )

        await pilot.press("comma")  # an older step
        await wait_text(pilot, "step 10 (1/2)")
        assert "older (. newer)" in screen_text(app)
        await wait_until(pilot, lambda: _close(_painted_colour(preview), COLOURS[(10, 0)]), what="step 10")
        await pilot.press("comma")  # already the oldest: stays
        await pilot.press("full_stop")
        await wait_text(pilot, "step 20 (2/2)")

        await pilot.press("semicolon")  # the next prompt, at the step shown
        await wait_text(pilot, "Sample 2/2  step 20")
        assert "a green square" in screen_text(app)
        await wait_until(pilot, lambda: _close(_painted_colour(preview), COLOURS[(20, 1)]), what="prompt 2")

        # A new sample while following the newest: it is shown by itself.
        _write(run, 30, 1)
        await wait_text(pilot, "Sample 2/2  step 30 (3/3)")
        await wait_until(
            pilot,
            lambda: (
                preview.painted_path == run / "samples" / "30_1.png"
                and _close(_painted_colour(preview), COLOURS[(30, 1)])
            ),
            what="the new sample painted",
        )

        # A job without samples: the panel takes no room.
        app.screen.set_job(6)
        await wait_text(pilot, "job 6")
        panel = app.screen.query_one("#run-samples")
        await wait_until(pilot, lambda: not panel.display, what="samples panel hidden")


def test_dpdeck_samples_lists_a_jobs_images(dpdeck_home: Path, tmp_path: Path) -> None:
    """`dpdeck samples JOB` reads the job's run folder: every image, or the newest per prompt, as text or JSON."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from engine.jobs import store

    shutil.copytree(
        Path(__file__).resolve().parent / "fixtures" / "state_v1" / "home", dpdeck_home, dirs_exist_ok=True
    )
    run = tmp_path / "run"
    for step, index in ((10, 0), (10, 1), (20, 0), (20, 1), (30, 1)):
        _write(run, step, index)
    conn = store.connect()
    try:
        with store.transaction(conn):
            store.update_job(conn, 1, run_dir=str(run))
    finally:
        conn.close()

    def dpdeck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tui.cli", "samples", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )

    listed = json.loads(dpdeck("1", "--json").stdout)
    assert [(s["index"], s["step"]) for s in listed] == [(0, 10), (0, 20), (1, 10), (1, 20), (1, 30)]
    assert listed[0]["prompt"] == "a red circle" and (listed[0]["width"], listed[0]["height"]) == (64, 48)
    latest = json.loads(dpdeck("1", "--latest", "--json").stdout)
    assert [(s["index"], s["step"], Path(s["path"]).name) for s in latest] == [
        (0, 20, "20_0.png"),
        (1, 30, "30_1.png"),
    ]
    text = dpdeck("1", "--latest").stdout
    assert "a green square" in text and "64x48" in text and str(run / "samples" / "30_1.png") in text
    assert "no samples yet" in dpdeck("2").stdout  # a job without a run folder
    missing = dpdeck("99")
    assert missing.returncode == 2 and "no job 99" in missing.stderr
