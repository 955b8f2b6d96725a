"""The Run screen against the real job store: jobs made by the engine's own insert_job in a tmp DPDECK_HOME,
their rows moved on with store.update_job (as the daemon does), their logs written into their job folders, and
the deck reading all of it through its real engine client (no daemon: none of this needs a training run).

Issue 16, Deliver 5 and Run's part of 6: opens on the running (else newest) job, every panel shows the job
shown (both directions of a switch), a job picker for compare, dpdeck's event lines out of the log (toggle),
wrap and sideways scroll, search with a match count and highlight, a stall line naming what the job waits on,
integer axis labels, saves by number, local times with age, paths cut in the middle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from engine.jobs import client, store
from engine.jobs.activity import STALL_AFTER_S, Activity, job_activity, last_phase, line_phase
from engine.jobs.create import insert_job
from engine.jobs.job import Job, JobState
from engine.jobs.progress import Progress, feed_line
from profiles.store import resolve
from tests.tui_helpers import screen_text, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.run import RunLoaded, RunScreen, pick_job
from tui.screens.run_text import NO_JOBS, header_text, job_text, save_label, when
from tui.units import middle, span
from tui.widgets.log_pane import CURRENT_MATCH_STYLE, MATCH_STYLE, LogPane, match_spans, wrap_line
from tui.widgets.loss_plot import int_ticks

EVENT = '[dpdeck] {{"event": "progress", "step": {s}, "total_steps": 40, "epoch": 1, "total_epochs": 2, "loss": {loss}}}'


def add_job(name: str, state: str = "queued", *, log: str = "", metrics: int = 0, **fields: Any) -> int:
    """A job as the engine makes it (row + frozen folder), then moved on as the daemon would move it."""
    conn = store.connect()
    try:
        job_id = insert_job(
            conn=conn,
            name=name,
            profile=name,
            backend="builtin",
            gpus=None,
            num_gpus=None,
            priority=0,
            after=None,
            profile_obj=resolve("demo-tiny"),
        )
        with store.transaction(conn):
            store.update_job(conn, job_id, state=state, **fields)
            for s in range(1, metrics + 1):
                conn.execute(
                    "INSERT INTO metrics(job_id, step, epoch, loss, lr, samples_per_s, t) VALUES (?,?,?,?,?,?,?)",
                    (job_id, s, 1, 1.0 / s, 1e-4, 2.0, time.time()),
                )
    finally:
        conn.close()
    if log:
        (job_dir(job_id) / "output.log").write_text(log)
    return job_id


def set_job(job_id: int, **fields: Any) -> None:
    conn = store.connect()
    try:
        with store.transaction(conn):
            store.update_job(conn, job_id, **fields)
    finally:
        conn.close()


def job_dir(job_id: int) -> Path:
    return Path(client.get_job(job_id).job_dir)


async def open_job(pilot: Pilot[None], job_id: int) -> RunScreen:
    """The Queue's Enter: the Run screen on `job_id`, once its widgets are there."""
    app = pilot.app
    assert isinstance(app, DeckApp)
    app.show_job(job_id)
    await wait_until(
        pilot, lambda: isinstance(app.screen, RunScreen) and bool(app.screen.query("#run-stats")), what="Run"
    )
    return run_screen(app)


def run_screen(app: DeckApp) -> RunScreen:
    screen = app.screen
    assert isinstance(screen, RunScreen), screen
    return screen


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunScreen, "POLL_SECONDS", 0.3)


# ---- which job `3` opens -----------------------------------------------------------------------------------


async def test_three_opens_the_running_job_else_the_newest_and_says_how_to_make_one() -> None:
    app = DeckApp(start_mode="profiles")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        text = await wait_text(pilot, "No jobs yet")
        assert "No job selected" not in text
        assert NO_JOBS.startswith("No jobs yet") and "enqueue" in NO_JOBS and "dpdeck demo" in NO_JOBS
        # A job enqueued while the screen is open shows without a key.
        first = add_job("first", "completed", step=4, total_steps=4, ended_at=time.time())
        await wait_text(pilot, f"job {first} first")

    running = add_job("trainer", "running", step=3, total_steps=40, started_at=time.time())
    add_job("newest", "completed", step=5, total_steps=5, ended_at=time.time())  # newer, but not running
    app = DeckApp(start_mode="profiles")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_text(pilot, f"job {running} trainer")
        assert run_screen(app).job_id == running


def test_pick_job_prefers_live_then_newest() -> None:
    add_job("a", "completed")
    b = add_job("b", "running")
    c = add_job("c", "failed")
    jobs = client.list_jobs(include_finished=True)
    assert pick_job(jobs) == b
    set_job(b, state="completed")
    assert pick_job(client.list_jobs(include_finished=True)) == c
    assert pick_job([]) is None


# ---- every panel shows the job shown ------------------------------------------------------------------------


async def test_switching_between_a_finished_and_a_running_job_leaves_nothing_behind(tmp_path: Path) -> None:
    run = tmp_path / "out" / "20261206_21-00-00"
    (run / "epoch1").mkdir(parents=True)
    (run / "global_step8").mkdir()
    now = time.time()
    done = add_job(
        "finished",
        "completed",
        log="TRAINING COMPLETE!\n",
        metrics=8,
        step=8,
        total_steps=8,
        epoch=2,
        total_epochs=2,
        exit_reason="completed",
        evidence=["TRAINING COMPLETE!"],
        run_dir=str(run),
        started_at=now - 600,
        ended_at=now - 300,
        loss=0.125,
    )
    live = add_job(
        "live",
        "running",
        log="steps: 2 loss: 0.5 iter time (s): 1 samples/sec: 1\n",
        metrics=2,
        step=2,
        total_steps=40,
        epoch=1,
        total_epochs=2,
        started_at=now - 60,
        loss=0.5,
    )
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_job(pilot, done)
        text = await wait_text(pilot, "Ended: completed")
        assert "✓ epoch 1" in text and "✓ checkpoint at step 8" in text and "epoch epoch1" not in text
        assert "loss 0.1250" in text and f"job {done} finished" in text
        assert "ran 5 min" in text  # started and ended as local time and age

        await open_job(pilot, live)  # finished -> running
        await wait_text(pilot, f"job {live} live")
        await wait_until(pilot, lambda: "step 2/40" in screen_text(app), what="the running job's header")
        await pilot.pause(0.8)  # a few polls: nothing of the finished job may come back
        text = screen_text(app)
        assert "Ended" not in text and "TRAINING COMPLETE" not in text and "epoch 1\n" not in text
        assert "✓ epoch 1" not in text and "none yet" in text  # its saves, not the other job's
        screen = run_screen(app)
        assert screen.query_one("#run-log", LogPane).lines[-1].startswith("steps: 2")
        assert screen.query_one("#loss-plot").points == 2  # its curve only

        await open_job(pilot, done)  # running -> finished
        text = await wait_text(pilot, "Ended: completed")
        assert "step 2/40" not in text and f"job {done} finished" in text
        await wait_until(pilot, lambda: screen.query_one("#loss-plot").points == 8, what="its curve")


# ---- compare: a job picker --------------------------------------------------------------------------------


async def test_compare_opens_a_job_picker_and_clear_removes_the_overlays() -> None:
    mine = add_job("mine", "running", metrics=5, step=5, total_steps=10, started_at=time.time())
    other = add_job("baseline", "completed", metrics=7, step=7, loss=0.3125, ended_at=time.time() - 120)
    add_job("waiting", "queued")
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_job(pilot, mine)
        screen = run_screen(app)
        plot = screen.query_one("#loss-plot")
        await wait_until(pilot, lambda: plot.points == 5, what="own curve")
        await pilot.press("equals_sign")
        text = await wait_text(pilot, "baseline")
        # Name, state, end time and last loss of the other jobs; not the one shown.
        assert "0.3125" in text and "completed" in text and "· 2 min ago" in text and "waiting" in text
        table = app.screen.query_one("#picker-table", DataTable)
        assert table.row_count == 2 and "mine" not in text.split("Overlay")[1]
        await pilot.press("j", "k")  # vim keys move; the newest (queued) job is first
        assert table.cursor_row == 0
        await pilot.press("j", "enter")
        await wait_until(pilot, lambda: plot.points == 12, what="the baseline overlaid")
        assert run_screen(app).view.compare_ids == [other]
        await pilot.press("equals_sign")
        await wait_text(pilot, "✓ = overlaid now")
        await pilot.press("q")  # q (and Esc) close the picker and change nothing
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="picker closed")
        assert run_screen(app).view.compare_ids == [other]
        await pilot.press("minus")
        await wait_until(pilot, lambda: plot.points == 5, what="overlays cleared")
        await pilot.press("minus")
        await wait_until(
            pilot, lambda: any("no curves overlaid" in str(n.message) for n in app._notifications)
        )


# ---- the log: dpdeck's events, wrap, search -----------------------------------------------------------------


async def test_dpdeck_event_lines_are_status_not_log_lines_and_L_shows_them() -> None:
    lines = []
    for s in range(1, 6):
        lines.append(f"steps: {s} loss: {1 / s:.4f} iter time (s): 0.5 samples/sec: 2.0")
        lines.append(EVENT.format(s=s, loss=1 / s))
    log = "\n".join(lines) + "\n"
    # The engine's own parser reads the events into the record, as the daemon does; the header shows that.
    progress = Progress()
    for line in lines:
        feed_line(progress, line)
    job = add_job(
        "events",
        "running",
        log=log,
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=progress.epoch,
        total_epochs=progress.total_epochs,
        loss=progress.loss,
        samples_per_s=progress.samples_per_s,
        started_at=time.time(),
    )
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_job(pilot, job)
        await wait_text(pilot, "step 5/40  ETA -  epoch 1/2  loss 0.2000")
        pane = run_screen(app).query_one("#run-log", LogPane)
        await wait_until(pilot, lambda: pane.total_written == 5, what="the training lines")
        assert not any("[dpdeck]" in line for line in pane.lines)
        assert pane.hidden_events == 5 and "events hidden" in screen_text(app)
        await pilot.press("L")
        await wait_until(pilot, lambda: pane.total_written == 10, what="every line with the events")
        assert sum("[dpdeck]" in line for line in pane.lines) == 5
        assert "events shown" in screen_text(app)
        await pilot.press("L")
        await wait_until(pilot, lambda: pane.total_written == 5, what="events hidden again")


async def test_long_lines_scroll_sideways_or_wrap() -> None:
    tail = "THE-END-OF-A-LONG-LINE"
    long = "x" * 150 + tail
    job = add_job("long", "completed", log=f"short\n{long}\nafter\n", ended_at=time.time())
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_job(pilot, job)
        screen = run_screen(app)
        pane = screen.query_one("#run-log", LogPane)
        await wait_until(pilot, lambda: pane.total_written == 3, what="log lines")
        await pilot.pause(0.2)
        assert tail not in screen_text(app)  # cut at the pane's width...
        assert pane.virtual_size.width >= len(long)  # ...which scrolls sideways
        await wait_text(pilot, "no wrap ←→")  # and the line under the log says so
        assert app.focused is pane  # the log has the focus: arrows scroll it
        await pilot.press("right", "right", "right")
        await wait_until(pilot, lambda: pane.scroll_x == 3, what="three columns to the right")
        pane.scroll_to(x=pane.max_scroll_x, animate=False, immediate=True)
        await wait_until(pilot, lambda: tail in screen_text(app), what="the line's end after scrolling right")

        await pilot.press("w")
        await wait_until(pilot, lambda: pane.total_written > 3, what="wrapped rows")
        rows = list(pane.lines)
        width = pane.wrap_width()
        assert all(len(r) <= width for r in rows) and "".join(rows[1:-1]) == long
        assert pane.scroll_x == 0
        await wait_until(pilot, lambda: tail[-10:] in screen_text(app), what="the end shown wrapped")
        assert "· wrap ·" in screen_text(app)
        await pilot.resize_terminal(120, 30)  # a wider pane cuts the rows again
        await wait_until(
            pilot, lambda: pane.wrap_width() > width and len(pane.lines) < len(rows), what="rewrap"
        )
        await pilot.press("w")
        await wait_until(pilot, lambda: list(pane.lines) == ["short", long, "after"], what="one row per line")


async def test_search_counts_matches_and_highlights_them() -> None:
    lines = [f"step {i} needle" if i % 3 == 0 else f"step {i}" for i in range(51)]  # 17 matches
    job = add_job("search", "completed", log="\n".join(lines) + "\n", ended_at=time.time())
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_job(pilot, job)
        screen = run_screen(app)
        pane = screen.query_one("#run-log", LogPane)
        await wait_until(pilot, lambda: pane.total_written == 51, what="log lines")
        await pilot.press("slash")
        box = screen.query_one("#run-search", Input)
        await wait_until(pilot, lambda: app.focused is box, what="search field")
        await pilot.press(*"NEEDLE", "enter")  # case-insensitive
        await wait_text(pilot, "1/17 'NEEDLE'")
        assert screen.search_at == 0
        # The matches are highlighted; the current one apart from the others.
        strip = pane._render_line_strip(0, pane.rich_style)
        styled = [seg for seg in strip if seg.text == "needle"]
        assert styled and styled[0].style is not None and styled[0].style.reverse and styled[0].style.bold
        other = [seg for seg in pane._render_line_strip(3, pane.rich_style) if seg.text == "needle"]
        assert other and other[0].style is not None and other[0].style.reverse and not other[0].style.bold
        assert [
            seg for seg in pane._render_line_strip(1, pane.rich_style) if seg.style and seg.style.reverse
        ] == []
        await pilot.press("n", "n")
        await wait_text(pilot, "3/17 'NEEDLE'")
        await pilot.press("N")
        await wait_text(pilot, "2/17 'NEEDLE'")
        await pilot.press("N", "N")  # wraps around to the last
        await wait_text(pilot, "17/17 'NEEDLE'")
        assert screen.search_at == 48
        await pilot.press("escape")  # field closed: Esc drops the highlight
        await wait_until(pilot, lambda: pane.needle == "", what="highlight dropped")
        assert "/17" not in screen_text(app)


def test_log_pane_helpers() -> None:
    assert match_spans("Needle and needle", "NEEDLE") == [(0, 6), (11, 17)]
    assert match_spans("abc", "") == []
    assert wrap_line("abcdefgh", 3) == ["abc", "def", "gh"]
    assert wrap_line("", 3) == [""]
    assert wrap_line("日本語テキスト", 4) == ["日本", "語テ", "キス", "ト"]  # cells, not characters
    assert MATCH_STYLE != CURRENT_MATCH_STYLE


# ---- stall indicator ----------------------------------------------------------------------------------------


async def test_a_quiet_running_job_says_for_how_long_and_what_it_waits_on() -> None:
    job = add_job(
        "slow",
        "running",
        log="loading sdxl model\ncaching latents: 0/10\ncaching latents: 3/10\n",
        total_steps=40,
        started_at=time.time() - 600,
    )
    log = job_dir(job) / "output.log"
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_job(pilot, job)
        # Fresh output, no step yet: what it is doing instead of a bare "waiting".
        await wait_text(pilot, "waiting for the first step: caching latents")
        quiet = time.time() - 4 * 60 - 5
        os.utime(log, (quiet, quiet))
        await wait_text(pilot, "⚠ no output for 4 min: caching latents")
        # It prints again: a step, and the bar is back.
        with log.open("a") as f:
            f.write("steps: 1 loss: 0.5 iter time (s): 1 samples/sec: 1\n")
        set_job(job, step=1, loss=0.5)
        await wait_text(pilot, "  2%")
        assert "no output" not in screen_text(app)
        # Quiet between steps: named by the last step.
        quiet = time.time() - STALL_AFTER_S - 30
        os.utime(log, (quiet, quiet))
        await wait_text(pilot, "⚠ no output for 2 min after step 1")


def test_activity_reads_the_newest_log_and_names_the_phase(tmp_path: Path) -> None:
    ranks = tmp_path / "ranks"
    ranks.mkdir(exist_ok=True)  # (the job folder is made with it)
    (tmp_path / "output.log").write_text("Using /x as PyTorch extensions root...\n")
    rank0 = ranks / "20260101_rank0.log"
    rank0.write_text("Building extension module deepspeed_shm_comm...\n")
    old = time.time() - 300
    os.utime(tmp_path / "output.log", (old, old))
    activity = job_activity(tmp_path)
    assert activity.phase == "building the C++ op deepspeed_shm_comm (once; then cached)"
    assert activity.quiet_s(time.time()) is not None and activity.quiet_s(time.time()) < 60
    assert job_activity(tmp_path / "nothing").last_output_at is None
    # Asked to read the phase only after a quiet spell: a busy log costs no tail read.
    assert job_activity(tmp_path, phase_after_s=STALL_AFTER_S).phase is None
    later = time.time() + STALL_AFTER_S + 1
    assert job_activity(tmp_path, phase_after_s=STALL_AFTER_S, now=later).phase is not None

    table = {
        "loading flux model": "loading the flux model",
        "caching text embeddings: 2/4": "caching text embeddings",
        "Caching latents: /data/cache": "caching latents",
        "Loading extension module fused_adam...": "loading the C++ op fused_adam",
        "Saving model to directory epoch2": "saving",
        "Running eval": "evaluating",
        "sampling 2 prompt(s) at step 40": "rendering samples",
        "steps: 5 loss: 0.1 iter time (s): 1 samples/sec: 1": "training",
        '[dpdeck] {"event": "phase", "what": "compiling the model"}': "compiling the model",
        '[rank0]: [dpdeck] {"event": "save", "kind": "epoch", "path": "/r/epoch1"}': "saving",
        # Lines of a real demo run (the built-in trainer under DeepSpeed on CPU), in their order:
        "[INFO] [launch.py:245:main] process 29818 spawned with command: ['python', '-m', 'engine.trainer']": (
            "starting the trainer (importing torch and DeepSpeed)"
        ),
        "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully": (
            "starting the ranks (distributed setup)"
        ),
        "Loading weights: 100%|██████████| 36/36 [00:00<00:00, 25644.52it/s]": "loading the model",
        "cache: 8 latents encoded, 0 reused; 9 captions encoded, 0 reused": "setting up LoRA, optimizer and DeepSpeed",
        "bucket 32x32 (ar 1.0): 8 examples, 0 dropped": "setting up LoRA, optimizer and DeepSpeed",
        "some other line": None,
    }
    for line, phase in table.items():
        assert line_phase(line) == phase, line
    assert last_phase(["caching latents: 1/2", "noise", "tqdm 50%"]) == "caching latents"
    assert last_phase([]) is None


# ---- human units ---------------------------------------------------------------------------------------------


async def test_loss_chart_labels_steps_as_whole_numbers() -> None:
    job = add_job("curve", "completed", metrics=33, step=33, total_steps=33, ended_at=time.time())
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_job(pilot, job)
        plot = run_screen(app).query_one("#loss-plot")
        await wait_until(pilot, lambda: plot.points == 33, what="curve")
        await pilot.pause(0.2)
        text = screen_text(app)
        rows = text.splitlines()
        axis = next(r for r in rows if "10" in r and "20" in r and "30" in r)
        assert "." not in axis.split("│")[0]  # `10 20 30`, not `1.0 16.8 32.5`


def test_units() -> None:
    assert int_ticks(1, 32.5) == [10, 20, 30]
    assert int_ticks(0, 7) == [0, 2, 4, 6]
    assert int_ticks(5, 6) == [5, 6] and int_ticks(3, 3) == [3]
    assert all(isinstance(t, int) for t in int_ticks(0.5, 12_345))
    assert [span(s) for s in (0, 45, 250, 3900, 86400 * 2 + 3 * 3600)] == [
        "0 s",
        "45 s",
        "4 min",
        "1 h 05 min",
        "2 d 03 h",
    ]
    now = time.time()
    assert when(now - 30, now).endswith(" · just now")
    assert when(now - 720, now).endswith(" · 12 min ago")
    assert "-" in when(now - 3 * 86400, now).split(" ")[0]  # another day: the date too
    path = "/home/user/training/outputs/my-long-profile-name/20261206_21-00-00"
    cut = middle(path, 30)
    assert len(cut) <= 30 and cut.startswith("/home/") and cut.endswith("21-00-00") and "…" in cut
    assert middle("short", 30) == "short"
    # The side panel at 80x24 is ~26 columns: every line fits, an age too long moves to its own line.
    job = Job(
        id=1,
        name="x",
        state=JobState.COMPLETED,
        profile="p",
        backend="builtin",
        job_dir="/j",
        created_at=now - 9000,
        started_at=now - 8000,
        ended_at=now - 3900,
        run_dir=path,
    )
    text = job_text(job, now, 26)
    assert all(len(line) <= 26 for line in text.splitlines()), text
    assert "  1 h 05 min ago" in text.splitlines() and "ran 1 h 08 min" in text and "…" in text
    assert "queued" not in text  # it started: the start time says more
    assert save_label({"kind": "epoch", "path": "/r/epoch16", "number": 16}) == "✓ epoch 16"
    assert (
        save_label({"kind": "checkpoint", "path": "/r/global_step80", "number": 80})
        == "✓ checkpoint at step 80"
    )
    assert (
        save_label({"kind": "step", "path": "/r/step5", "number": 5, "complete": False}) == "… saving step 5"
    )
    assert save_label({"kind": "save", "path": "/r/odd"}) == "✓ odd"

    # A live job with no log at all (its launch is stuck) is quiet since it started.
    stuck = Job(
        id=2,
        name="stuck",
        state=JobState.STARTING,
        profile="p",
        backend="builtin",
        job_dir="/j",
        created_at=now - 600,
        started_at=now - 300,
    )
    assert "no output for 5 min" in header_text(2, stuck, Activity(None, None), now)
    assert "no output" not in header_text(2, stuck, Activity(now - 10, "loading the model"), now)


async def test_compare_with_no_other_job_says_so_and_a_late_pick_never_replaces_a_chosen_job() -> None:
    only = add_job("alone", "completed", metrics=3, step=3, ended_at=time.time())
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(pilot, only)
        await wait_text(pilot, f"job {only} alone")
        await pilot.press("equals_sign")
        await wait_text(pilot, "No other jobs to compare with yet.")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="picker closed")
        # The worker's pick (made while no job was chosen) arrives after the user chose one: it is dropped.
        other = add_job("other", "running")
        screen.post_message(RunLoaded(other, client.get_job(other), [], [], {}, [], None, picked=True))
        await pilot.pause(0.3)
        assert screen.job_id == only and f"job {only} alone" in screen_text(app)


async def test_rank_keys_follow_one_ranks_log() -> None:
    job = add_job("ranks", "completed", log="launcher line\n", gpus=[0], ended_at=time.time())
    ranks = job_dir(job) / "ranks"
    ranks.mkdir(exist_ok=True)  # (the job folder is made with it)
    (ranks / "20261206_rank0.log").write_text("rank zero line\n")
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it ends fake live jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(pilot, job)
        pane = screen.query_one("#run-log", LogPane)
        # The combined view: rank 0's own file once it exists (the launcher's log before).
        await wait_until(pilot, lambda: list(pane.lines) == ["rank zero line"], what="rank 0 log")
        await pilot.press("right_square_bracket")
        await wait_text(pilot, "rank 0 · following")
        await pilot.press("right_square_bracket")  # past the last rank: all ranks again
        await wait_text(pilot, "all ranks · following")


async def test_a_queued_job_says_what_it_waits_for() -> None:
    reason = "waiting for GPU memory: GPU 0 has 2.0 GiB free, the job needs about 20 GiB"
    job = add_job("patient", "queued", wait_reason=reason)
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon: it would run the job)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_job(pilot, job)
        await wait_text(pilot, f"queued: {reason}")


async def test_a_job_removed_from_the_store_gives_way_to_the_running_or_newest_one() -> None:
    old = add_job("old", "completed", ended_at=time.time())
    newest = add_job("newest", "completed", ended_at=time.time())
    app = DeckApp(start_mode="profiles")  # (the Queue would start a daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_job(pilot, old)
        await wait_text(pilot, f"job {old} old")
        conn = store.connect()
        try:
            with store.transaction(conn):
                conn.execute("DELETE FROM jobs WHERE id=?", (old,))  # as removing an ended job does
        finally:
            conn.close()
        await wait_text(pilot, f"job {newest} newest")
        assert screen.job_id == newest and app.current_job is None
        assert any(f"job {old} was removed" in str(n.message) for n in app._notifications)
