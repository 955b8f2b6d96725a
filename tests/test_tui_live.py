"""Queue, Run and the log pane.

The engine client (engine/client.py) is not in this tree yet, so the queue/run tests put a small in-memory
stand-in behind `tui.data`'s engine door (the one thing that cannot exist here yet); the log pane follows a real
file written by a real writer thread.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input

from engine.jobs.protocol import Action
from tests.fake_engine import FakeEngine, make_job
from tests.tui_helpers import screen_text, send_burst, wait_note, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.log_pane import LogPane, clean_line
from tui.widgets.loss_plot import smooth


def test_fake_engine_implements_the_protocol() -> None:
    """Every Engine member exists on the real facade and on this fake (at run time), and mypy accepts the fake
    where an Engine is wanted (the same check catches a signature drifting from the Protocol)."""
    from engine.jobs.facade import ClientEngine
    from tui.engine_api import Engine

    members = {
        name for name in vars(Engine) if not name.startswith("_") and callable(getattr(Engine, name))
    }
    assert {"list_jobs", "send", "get_job", "enqueue", "job_log_path"} <= members
    for impl in (ClientEngine, FakeEngine):
        missing = sorted(name for name in members if not callable(getattr(impl, name, None)))
        assert not missing, f"{impl.__name__} lacks {missing}"
    mypy = pytest.importorskip("mypy.api")
    check = (
        "from engine.jobs.facade import ClientEngine\n"
        "from tests.fake_engine import FakeEngine\n"
        "from tui.engine_api import Engine\n"
        "fake: Engine = FakeEngine()\n"
        "real: Engine = ClientEngine()\n"
    )
    out, err, status = mypy.run(
        ["--follow-imports=silent", "--ignore-missing-imports", "--no-error-summary", "-c", check]
    )
    assert status == 0, out + err
    drifted = check.replace("fake: Engine = FakeEngine()", "fake: Engine = object()")
    out, _err, status = mypy.run(["--follow-imports=silent", "--ignore-missing-imports", "-c", drifted])
    assert status != 0 and "Engine" in out  # the check can fail


async def test_queue_updates_rows_by_key_and_shows_the_daemons_refusals() -> None:
    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "alpha", state="running", step=10, started_at=time.time() - 65, loss=0.5)
    engine.jobs[2] = make_job(2, "beta", state="completed", step=100, exit_reason="completed")
    # The screen checks the engine's rule (engine/jobs/verbs.py) before it asks; the words are the daemon's.
    engine.refusals[(2, Action.CANCEL)] = "job 2 already ended (completed)"
    engine.refusals[(1, Action.RETRY)] = "job 1 is still running; retry needs an ended job"
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        text = await wait_text(pilot, "alpha")
        assert "▶ running" in text and "✓ completed" in text
        table = app.screen.query_one("#queue-table", DataTable)
        first_key = table.coordinate_to_cell_key((0, 0)).row_key
        engine.update(1, step=50)
        engine.jobs[3] = make_job(3, "gamma")
        await wait_text(pilot, "50/100")
        await wait_text(pilot, "gamma")
        assert table.row_count == 3 and table.coordinate_to_cell_key((0, 0)).row_key == first_key
        del engine.jobs[3]
        await wait_until(pilot, lambda: table.row_count == 2, what="row removed")

        await pilot.press("j")  # beta: already completed: refused before any confirmation (engine/jobs/verbs.py)
        await pilot.press("c")
        await wait_note(pilot, "job 2 already ended (completed)")
        assert engine.requests == []

        await pilot.press("k", "s")  # alpha: running; graceful stop after confirming
        await wait_text(pilot, "Stop job 1")
        await pilot.press("y")
        await wait_until(pilot, lambda: engine.requests == [(1, "stop", None)], what="stop request")
        await pilot.press("K")  # only queued jobs move: alpha is running
        await wait_note(pilot, "job 1 is running; only queued jobs move")
        assert (1, "move", "up") not in engine.requests
        await pilot.press("t")  # retry is for ended jobs: refused before its confirmation (engine/jobs/verbs.py)
        await wait_note(pilot, "job 1 is still running; retry needs an ended job")
        assert not isinstance(app.screen, ConfirmDialog)
        assert (1, "retry", None) not in engine.requests
        await pilot.press("space")
        await wait_text(pilot, "PAUSED")
        assert engine.paused

        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current_mode == "run", what="run view")
        await wait_text(pilot, "job 1")


async def test_run_screen_shows_progress_curve_saves_and_evidence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    log.write_text("starting\nsteps: 1 loss: 0.9\nRuntimeError: boom\n")
    engine = FakeEngine(log)
    engine.metrics = [{"step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 40)]
    engine.jobs[7] = make_job(
        7,
        "demo",
        state="failed",
        step=39,
        total_steps=40,
        exit_reason="failed: rank 0 exit 1",
        evidence=["RuntimeError: boom"],
        started_at=time.time() - 10,
        ended_at=time.time(),
    )
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "demo")
        await pilot.press("enter")
        await wait_text(pilot, "step 39/40")
        plot = app.screen.query_one("#loss-plot")
        await wait_until(pilot, lambda: plot.points == 39, what="loss points")
        log_pane = app.screen.query_one("#run-log", LogPane)
        await wait_until(pilot, lambda: log_pane.total_written == 3, what="log lines")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.screen.search_at == 2, what="jump to the error line")
        assert not log_pane.auto_scroll
        await pilot.press("F")
        assert log_pane.auto_scroll
        engine.jobs[8] = make_job(8, "other", state="completed")
        await pilot.press("equals_sign")  # compare: overlay job 8's curve (the stand-in serves the same metrics)
        await wait_text(pilot, "Overlay the loss curve")
        await wait_text(pilot, "other")  # the picker lists job 8
        await pilot.press("enter")
        await wait_until(pilot, lambda: plot.points == 78, what="two curves overlaid")
        app.screen.query_one("#run-side").scroll_end(animate=False)
        await pilot.resize_terminal(120, 40)
        text = await wait_text(pilot, "Ended:")
        assert "RuntimeError: boom" in text and "epoch1" in text
        assert "GPU: none on this machine" in str(app.screen.query_one("#run-stats").render())


async def test_run_screen_shows_tensorboard_epoch_and_eval_losses(tmp_path: Path) -> None:
    """diffusion-pipe's eval and epoch losses exist only in TensorBoard events: the Run screen shows them."""
    log = tmp_path / "job.log"
    log.write_text("steps: 6 loss: 0.1 iter time (s): 1 samples/sec: 1\n")
    engine = FakeEngine(log)
    engine.metrics = [{"step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 7)]
    engine.jobs[3] = make_job(3, "evals", state="running", step=6, total_steps=12, started_at=time.time())
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_text(pilot, "evals")
        await pilot.press("enter")
        await wait_text(pilot, "step 6/12")
        plot = app.screen.query_one("#eval-plot")
        assert not plot.display  # no eval losses yet: the chart takes no room
        engine.tb = {
            "epoch_loss": [{"epoch": 1, "loss": 0.25}],
            "evals": {"val": [{"step": 0, "loss": 0.9}, {"step": 3, "loss": 0.4}],
                      "hard": [{"step": 3, "loss": 1.5}]},
            "note": None,
        }
        engine.update(3, step=7)  # the job moves on: the curve and the events are read again
        engine.metrics.append({"step": 7, "loss": 0.1, "lr": 1e-4})
        await wait_until(pilot, lambda: plot.display and plot.points == 3, what="eval curves")
        text = await wait_text(pilot, "eval val: 0.4000 @ step 3")
        assert "epoch loss 1: 0.2500" in text and "eval hard: 1.5000" in text


class LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LogPane(max_lines=1000)


async def test_log_pane_follows_a_growing_file_and_keeps_up(tmp_path: Path) -> None:
    path = tmp_path / "grow.log"  # created late on purpose: the follower must wait for it
    total = 20_000

    def writer() -> None:
        time.sleep(0.2)
        with path.open("w") as f:
            for i in range(total):
                f.write(f"line {i}\rline {i} done\n" if i % 1000 == 0 else f"line {i}\n")
                if i % 2000 == 0:
                    f.flush()

    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(LogPane)
        pane.follow(path)
        thread = threading.Thread(target=writer)
        thread.start()
        follower = pane.follower
        assert follower is not None
        # Every line is either shown or counted as scrolled out (the file on disk keeps them all).
        await wait_until(
            pilot,
            lambda: pane.total_written + follower.dropped == total,
            timeout=60,
            what="all lines accounted for",
        )
        thread.join()
        assert pane.line_count <= 1000  # bounded in memory; the file keeps everything
        assert pane.lines[-1] == f"line {total - 1}"
        await pilot.pause(0.2)
        assert f"line {total - 1}" in screen_text(app)
        assert pane.find("line 19000 done", len(pane.lines) - 1) is not None


def test_pure_helpers() -> None:
    assert clean_line("10%|#  \r 50%|##### \n") == " 50%|##### "
    values = [1.0] * 5
    assert smooth(values) == pytest.approx(values)
    assert smooth([0.0, 10.0])[1] > 0


async def test_run_log_search_typed_in_one_burst(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("".join(f"step {i}\n" for i in range(50)) + "needle here\n" + "tail\n" * 5)
    engine = FakeEngine(log)
    engine.jobs[3] = make_job(3, "searchme", state="completed", step=10, total_steps=10, exit_reason="completed")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "searchme")
        await pilot.press("enter")
        pane = app.screen.query_one("#run-log", LogPane)
        await wait_until(pilot, lambda: pane.total_written == 56, what="log lines")
        send_burst(app, "/needle")  # `n` is a Run key: a lost focus race would fire it instead
        box = app.screen.query_one("#run-search", Input)
        await wait_until(pilot, lambda: box.value == "needle", what="search text in the field")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.search_at == 50, what="jump to the match")
        assert not box.display and app.focused is pane and not pane.auto_scroll
        send_burst(app, "/")
        await wait_until(pilot, lambda: app.focused is box, what="field reopened")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not box.display, what="Esc closes the field")
        await pilot.press("n")  # next match: wraps around to the same line
        assert app.screen.search_text == "needle"


async def test_queue_fits_80_columns_and_details_the_highlighted_job(monkeypatch: pytest.MonkeyPatch) -> None:
    from tui.screens.queue_columns import COLUMNS

    reason = "failed: rank 0 exited with code 1 after CUDA out of memory while allocating 2.00 GiB on GPU 0"
    engine = FakeEngine()
    engine.jobs[1] = make_job(
        1, "a-rather-long-job-name-for-80-columns", state="running", step=1200, total_steps=50000
    )
    engine.jobs[12] = make_job(12, "beta", state="failed", step=100, exit_reason=reason, samples_per_s=3.25)
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "beta")
        table = app.screen.query_one("#queue-table", DataTable)

        def fits() -> bool:
            return table.virtual_size.width <= table.scrollable_content_region.width

        await wait_until(pilot, fits, what="table within its region")
        assert not table.show_horizontal_scrollbar
        keys = [str(k.value) for k in table.columns]
        assert {"id", "state", "name", "reason"} <= set(keys) and len(keys) < len(COLUMNS)
        await pilot.press("j")
        detail = app.screen.query_one("#queue-detail")
        await wait_until(pilot, lambda: "job 12 beta" in str(detail.render()), what="detail of job 12")
        assert reason in " ".join(str(detail.render()).split())  # the whole reason, wrapped
        text = screen_text(app)
        assert "…" in text and reason not in text.replace("\n", "").split("exit: ")[0]

        await pilot.resize_terminal(160, 30)
        await wait_until(pilot, lambda: len(table.columns) == len(COLUMNS), what="every column when wide")
        assert fits() and "3.25" in screen_text(app)
        assert table.cursor_row == 1  # the highlighted job survives the rebuild
        await pilot.resize_terminal(80, 24)
        await wait_until(pilot, lambda: len(table.columns) < len(COLUMNS) and fits(), what="narrow again")


async def test_log_growth_repaints_the_pane_without_laying_out_the_screen(tmp_path: Path) -> None:
    """A layout re-renders every widget on the screen; a following log pane must not cause one per batch."""
    path = tmp_path / "steady.log"
    path.write_text("")
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(LogPane)
        layouts = 0
        screen = app.screen
        original = screen._refresh_layout

        def counting(*args: Any, **kwargs: Any) -> None:
            nonlocal layouts
            layouts += 1
            original(*args, **kwargs)

        screen._refresh_layout = counting  # type: ignore[method-assign]
        pane.follow(path)
        written = 0
        with path.open("a") as f:
            for batch in range(12):  # a job printing a few lines at a time, as the demo does
                f.write("".join(f"step {written + i} loss 0.5\n" for i in range(5)))
                f.flush()
                written += 5
                await wait_until(pilot, lambda n=written: pane.total_written == n, what=f"batch {batch}")
        await pilot.pause(0.1)
        # The vertical scrollbar appears once (that one lays out); the other batches only repaint the pane.
        assert layouts <= 3, layouts
        assert pane.show_vertical_scrollbar and pane.vertical_scrollbar.window_virtual_size == written
        assert pane.scroll_y == pane.max_scroll_y  # still following the end
        assert f"step {written - 1} loss" in screen_text(app)


async def test_run_screen_polls_of_an_unchanged_job_touch_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Following a job must cost little: a poll that brings nothing new lays nothing out and re-sets nothing."""
    from tui.screens.run import RunScreen

    monkeypatch.setattr(RunScreen, "POLL_SECONDS", 0.3)
    monkeypatch.setattr("tui.screens.run.PLOT_EVERY_S", 0.5)  # the curve may be redrawn at every other poll
    log = tmp_path / "job.log"
    log.write_text("steps: 5 loss: 0.5\n")
    engine = FakeEngine(log)
    engine.metrics = [{"step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 6)]
    engine.jobs[4] = make_job(4, "steady", state="running", step=5, total_steps=50, started_at=time.time())
    reads: list[int] = []
    engine.job_metrics = lambda job_id: reads.append(job_id) or engine.metrics  # type: ignore[method-assign]
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "steady")
        await pilot.press("enter")
        await wait_text(pilot, "step 5/50")
        screen = app.screen
        plot = screen.query_one("#loss-plot")
        await wait_until(pilot, lambda: plot.points == 5, what="first curve")
        await pilot.pause(1.0)  # settle: stats, saves, log
        header = screen.query_one("#run-header")
        before = (header.content, screen.polls, len(reads), plot._version)
        layouts = 0
        original = screen._refresh_layout

        def counting(*args: Any, **kwargs: Any) -> None:
            nonlocal layouts
            layouts += 1
            original(*args, **kwargs)

        screen._refresh_layout = counting  # type: ignore[method-assign]
        await wait_until(pilot, lambda: screen.polls >= before[1] + 4, what="four more polls")
        assert layouts == 0
        assert header.content is before[0]  # not even re-set to the same text
        assert len(reads) == before[2] and plot._version == before[3]  # curve neither re-read nor rebuilt
        engine.update(4, step=6)  # the job moves on: header, curve and reads follow
        engine.metrics.append({"step": 6, "loss": 0.1, "lr": 1e-4})
        await wait_text(pilot, "step 6/50")
        await wait_until(pilot, lambda: len(reads) > before[2], what="curve read again")
