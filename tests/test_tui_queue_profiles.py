"""Queue, Profiles and the editor agree with the engine and the CLI (issue 16: one source of truth), refuse or
confirm what they should, and have the missing pieces: profile delete/rename/copy, the summary pane, removing
ended jobs, the notification history, path completion and feedback right after an enqueue.

Real store, real daemon and the real CLI where they are cheap; the FakeEngine of tests/fake_engine.py where a
test needs job states a real run would take minutes to reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import make_profile, setup_engine
from textual.screen import Screen
from textual.widgets import DataTable, Input

from engine.jobs import client, launch
from engine.jobs import store as job_store
from engine.jobs.job import JobState
from engine.jobs.protocol import Action, Request
from engine.jobs.verbs import refusal
from profiles import store
from tests.fake_engine import FakeEngine, make_job
from tests.tui_helpers import notes, screen_text, wait_note, wait_text, wait_until
from tui.app import DeckApp
from tui.screens.dialogs import ConfirmDialog, PromptDialog
from tui.screens.editor import EditorScreen
from tui.screens.notifications import NotificationsScreen
from tui.widgets.path_input import complete_path

REPO = Path(__file__).resolve().parent.parent


def dpdeck(*args: str) -> subprocess.CompletedProcess[str]:
    """This tree's CLI (not an installed one), in the test's DPDECK_HOME."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def key_for(screen: Screen[object], binding_id: str) -> str:
    """The key bound to `binding_id` on `screen` now (tests press the id's key, so a renamed key still works)."""
    for key, bindings in screen._bindings.key_to_bindings.items():
        if any(b.id == binding_id for b in bindings):
            return key
    raise AssertionError(f"no binding {binding_id} on {type(screen).__name__}")


def table_ids(app: DeckApp) -> list[int]:
    table = app.screen.query_one("#queue-table", DataTable)
    return [int(str(k.value)) for k in table.rows]


def column(app: DeckApp, key: str) -> list[str]:
    table = app.screen.query_one("#queue-table", DataTable)
    return [str(table.get_cell(row, key)) for row in table.rows]


# ---- one source of truth: the Queue's order is the engine's (and `dpdeck ls`'s) --------------------------


async def test_queue_order_and_positions_follow_a_move_at_once(tmp_path: Path) -> None:
    setup_engine()
    job_store.set_setting(job_store.connect(), "paused", "1")  # nothing starts: every job stays queued
    main = str(make_profile(tmp_path, name="order"))
    a, b, c = (client.enqueue(main, name=n) for n in ("a", "b", "c"))
    ended = client.enqueue(main, name="old")
    client.send(Request(Action.CANCEL, ended)).check()
    app = DeckApp(start_mode="queue")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table_ids(app) == [a, b, c, ended], what="engine order")
        assert column(app, "pos") == ["1", "2", "3", ""]  # an ended job has no place in line
        await pilot.press("G", "k")  # job c, the last queued one
        await pilot.press(key_for(app.screen, "queue.move_up"))
        await wait_until(pilot, lambda: table_ids(app) == [a, c, b, ended], what="c moved up, on screen")
        assert column(app, "pos") == ["1", "2", "3", ""]
        assert [j.id for j in client.list_jobs()] == [a, c, b]
        listed = [line.split()[0] for line in dpdeck("ls", "--all").stdout.splitlines()[1:]]
        assert [int(x) for x in listed if x.isdigit()] == table_ids(app)  # `dpdeck ls --all`: the same order
        table = app.screen.query_one("#queue-table", DataTable)
        assert table.cursor_row == 1  # the highlight went with the moved job
        assert "#2 in line" in str(app.screen.query_one("#queue-detail").render())


def test_list_order_puts_the_queue_first_in_start_order_then_ended_jobs(tmp_path: Path) -> None:
    setup_engine()
    conn = job_store.connect()
    job_store.set_setting(conn, "paused", "1")
    main = str(make_profile(tmp_path, name="order"))
    first, second = client.enqueue(main, name="first"), client.enqueue(main, name="second")
    conn.execute("UPDATE jobs SET state='completed' WHERE id=?", (first,))
    urgent = client.enqueue(main, name="urgent", priority=5)
    conn.commit()
    jobs = client.list_jobs(include_finished=True)
    assert [j.id for j in jobs] == [urgent, second, first]
    assert client.queue_positions(jobs) == {urgent: 1, second: 2}
    assert [j["id"] for j in client.list_job_dicts(include_finished=True)] == [urgent, second, first]


# ---- refuse or confirm: engine/jobs/verbs.py's rule, checked before any question -----------------------------


def test_the_rules_refuse_in_the_daemons_words() -> None:
    done = make_job(3, "done", state="completed", run_dir="/runs/3")
    running = make_job(4, "live", state="running")
    assert refusal(Action.CANCEL, done) == "job 3 already ended (completed)"
    assert refusal(Action.RESUME, done) is None and refusal(Action.RETRY, done) is None
    assert (
        refusal(Action.RESUME, make_job(5, "x", state="failed")) == "job 5 has no run folder to resume from"
    )
    assert refusal(Action.RETRY, running) == "job 4 is still running; retry needs an ended job"
    assert refusal(Action.MOVE, running) == "job 4 is running; only queued jobs move"
    assert refusal(Action.STOP, done) == "job 3 is completed: nothing to stop"
    assert refusal(Action.CANCEL, running) is None and refusal(Action.PAUSE, done) is None


async def test_cancel_of_an_ended_job_says_already_ended_and_asks_nothing() -> None:
    engine = FakeEngine()
    engine.jobs[2] = make_job(2, "beta", state="completed", exit_reason="completed", run_dir="/runs/2")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "beta")
        await pilot.press(key_for(app.screen, "queue.cancel"))
        await wait_note(pilot, "job 2 already ended (completed)")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmDialog), "a confirmation came before the refusal"
        assert not any("without a final save" in n for n in notes(app)) and engine.requests == []


async def test_resume_of_a_completed_job_asks_and_retry_confirms_like_cancel() -> None:
    engine = FakeEngine()
    engine.jobs[3] = make_job(3, "done", state="completed", exit_reason="completed", run_dir="/runs/3")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "done")
        await pilot.press(key_for(app.screen, "queue.resume"))
        text = await wait_text(pilot, "Train job 3 again from its last save?")
        assert "completed" in text
        await pilot.press("n")
        await pilot.pause(0.3)
        assert engine.requests == []  # no answer, no new job
        await pilot.press(key_for(app.screen, "queue.resume"))
        await wait_text(pilot, "Train job 3 again")
        await pilot.press("y")
        await wait_until(pilot, lambda: engine.requests == [(3, "resume", None)], what="resume sent")
        await pilot.press(key_for(app.screen, "queue.retry"))
        await wait_text(pilot, "Retry job 3 (done) from the start?")
        await pilot.press("y")
        await wait_until(pilot, lambda: (3, "retry", None) in engine.requests, what="retry sent")


async def test_a_real_daemon_still_refuses_what_the_deck_would_not_ask(tmp_path: Path) -> None:
    """The deck's check is a courtesy: a request that slips past it (state changed after the look) is refused
    by the daemon with the same words."""
    setup_engine()
    job_store.set_setting(job_store.connect(), "paused", "1")
    job = client.enqueue(str(make_profile(tmp_path, name="r")), name="r")
    client.send(Request(Action.CANCEL, job)).check()
    again = client.send(Request(Action.CANCEL, job))
    assert not again.ok and again.message == refusal(Action.CANCEL, client.get_job(job))


# ---- removing ended jobs from the Queue list ---------------------------------------------------------------


async def test_remove_one_ended_job_then_all_ended_ones() -> None:
    engine = FakeEngine()
    engine.jobs[1] = make_job(1, "live", state="running")
    engine.jobs[2] = make_job(2, "done", state="completed", exit_reason="completed")
    engine.jobs[3] = make_job(3, "broke", state="failed", exit_reason="failed: exit 1")
    app = DeckApp(start_mode="queue", engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "broke")
        await pilot.press(key_for(app.screen, "queue.delete"))  # on the running job
        await wait_note(pilot, "job 1 is running: only ended jobs leave the list")
        await pilot.press("j", key_for(app.screen, "queue.delete"))
        await wait_text(pilot, "Remove ended job 2 (done) from this list?")
        await pilot.press("y")
        await wait_until(pilot, lambda: table_ids(app) == [1, 3], what="job 2 gone from the table")
        assert engine.dismissed == {2}
        await wait_text(pilot, "1 ended removed")
        await pilot.press(key_for(app.screen, "queue.delete_ended"))
        await wait_text(pilot, "Remove all 1 ended job(s)")
        await pilot.press("y")
        await wait_until(pilot, lambda: table_ids(app) == [1], what="only the running job left")


def test_dismissed_jobs_stay_in_the_store_and_live_ones_are_refused(tmp_path: Path) -> None:
    setup_engine()
    job_store.set_setting(job_store.connect(), "paused", "1")
    main = str(make_profile(tmp_path, name="d"))
    queued, ended = client.enqueue(main, name="q"), client.enqueue(main, name="e")
    client.send(Request(Action.CANCEL, ended)).check()
    try:
        client.dismiss_jobs([queued])
    except ValueError as exc:
        assert "only ended jobs leave the list" in str(exc)
    else:
        raise AssertionError("a queued job was removed")
    assert client.dismiss_jobs([ended]) == [ended]
    assert client.dismissed_jobs() == {ended}
    assert ended in [j.id for j in client.list_jobs(include_finished=True)]  # `ls --all`, `show` keep it
    assert client.get_job(ended).state == JobState.CANCELLED


# ---- the editor's verdict is `dpdeck profile validate`'s ------------------------------------------------


@pytest.mark.parametrize(
    ("template", "checkout", "trainer"),
    [
        ("sd15", False, "built-in trainer"),
        # A configured diffusion-pipe does not take sd15: validate must not check it against diffusion-pipe.
        ("sd15", True, "built-in trainer"),
        # The issue's case: its four placeholders were "0 error(s), 4 warning(s)" in the editor, "INVALID (4
        # error(s))" in the CLI.
        ("flux-dev", True, "diffusion-pipe (diffusion-pipe at "),
    ],
)
async def test_editor_verdict_and_backend_equal_the_cli_on_the_same_profile(
    template: str, checkout: bool, trainer: str
) -> None:
    if checkout:
        setup_engine()  # diffusion_pipe.path -> tests/fake_diffusion_pipe
    store.create_from_template(template, "sd")
    cli = dpdeck("profile", "validate", "sd")
    assert cli.returncode == 1
    summary = cli.stderr.strip().splitlines()[-1]  # "sd: INVALID (3 error(s), 0 warning(s)); runs on: ..."
    verdict, runs_on = summary.split(": ", 1)[1].split("; ", 1)
    assert runs_on.startswith(f"runs on: {trainer}"), runs_on
    assert verdict.startswith("INVALID (") and " 0 error(s)" not in verdict
    assert (
        "still the template's placeholder '<PATH TO IMAGE FOLDER>'; set it to your images folder"
        in cli.stdout
    )
    app = DeckApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_text(pilot, "sd")
        app.push_screen(EditorScreen("sd", store.read_files("sd"), template=None, is_new=False))
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen), what="editor")
        editor = app.screen

        def status() -> str:
            found = editor.query("#editor-status")
            return str(found.first().render()) if found else ""

        await wait_until(pilot, lambda: "runs on:" in status(), what="a verdict")
        assert f"{verdict} · {runs_on}" in status(), (status(), summary)


async def test_enqueue_refusal_names_the_placeholder_in_plain_words() -> None:
    store.create_from_template("sd15", "sdq")
    try:
        client.enqueue("sdq")
    except launch.EnqueueError as exc:
        assert "directory[0].path: still the template's placeholder '<PATH TO IMAGE FOLDER>'" in str(exc)
        assert "set it to your images folder" in str(exc)
    else:
        raise AssertionError("a profile with placeholders was queued")


# ---- Profiles: delete, rename, copy, the summary pane ----------------------------------------------------


async def _on_profile(pilot, app: DeckApp, name: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pilot, lambda: any(r.name == name for r in getattr(app.screen, "rows", [])), what=name)
    await pilot.press("slash", *name, "enter")
    await wait_until(
        pilot, lambda: (r := app.screen.selected()) is not None and r.name == name, what=f"{name} highlighted"
    )


async def test_copy_rename_and_delete_a_profile() -> None:
    store.create_from_template("demo-tiny", "orig")
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_profile(pilot, app, "orig")
        await pilot.press(key_for(app.screen, "profiles.copy"))
        await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog), what="copy prompt")
        app.screen.query_one("#prompt-input", Input).value = "orig"
        await pilot.press("enter")
        await wait_text(pilot, "already exists")  # the CLI's rule, said in the dialog
        app.screen.query_one("#prompt-input", Input).value = "twin"
        await pilot.press("enter")
        await wait_note(pilot, "copied orig to twin")
        assert store.read_files("twin") == store.read_files("orig")

        await _on_profile(pilot, app, "twin")
        await pilot.press(key_for(app.screen, "profiles.rename"))
        await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog), what="rename prompt")
        app.screen.query_one("#prompt-input", Input).value = "renamed"
        await pilot.press("enter")
        await wait_note(pilot, "renamed twin to renamed")
        assert store.exists("renamed") and not store.exists("twin")

        await _on_profile(pilot, app, "renamed")
        await pilot.press(key_for(app.screen, "profiles.delete"))
        await wait_text(pilot, "Delete profile renamed?")
        await pilot.press("n")
        await pilot.pause(0.3)
        assert store.exists("renamed")  # no answer, no delete
        await pilot.press(key_for(app.screen, "profiles.delete"))
        await wait_text(pilot, "Delete profile renamed?")
        await pilot.press("y")
        await wait_note(pilot, "dpdeck profile undelete renamed")
        assert not store.exists("renamed")
    assert dpdeck("profile", "undelete", "renamed").returncode == 0  # recoverable, as the CLI's delete is
    assert store.exists("renamed")


async def test_summary_pane_shows_settings_verdict_and_last_runs(dpdeck_home: Path) -> None:
    store.create_from_template("sd15", "summ")
    (dpdeck_home / "keymap.toml").write_text('"profiles.diff" = "f5"\n')  # the pane's hints follow it
    engine = FakeEngine()
    engine.jobs[7] = make_job(
        7,
        "summ",
        profile="summ",
        state="failed",
        exit_reason="failed: out of memory",
        ended_at=time.time() - 120,
    )
    engine.jobs[8] = make_job(8, "other", profile="other", state="completed")
    app = DeckApp(engine=engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await _on_profile(pilot, app, "summ")
        text = await wait_text(pilot, "last runs:")
        for needle in (
            "type  sd15",
            "diffusers_path <PATH TO stable-diffusion-v1-5 FOLDER>",
            "dataset  <PATH TO IMAGE FOLDER>",
            "epochs",
            "rank",
            "lr",
            "validate: INVALID (3 error(s), 0 warning(s))",
            "runs on: built-in trainer",
            "job 7 ✗ failed · failed: out of memory · 2 min ago",
        ):
            assert needle in text, f"{needle!r} not in pane:\n{text}"
        assert "job 8" not in text
        assert "f5 Diff" in text and "= Diff" not in text


# ---- feedback right after enqueue -------------------------------------------------------------------------


class SlowEngine(FakeEngine):
    """An engine whose enqueue takes a while (as the real one does while it builds the demo model)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def enqueue(self, profile: str, *, gpus: list[int] | None = None) -> int:
        self.release.wait(20)
        return super().enqueue(profile, gpus=gpus)


async def test_enqueue_says_so_at_once_and_the_queue_shows_it_pending() -> None:
    store.create_from_template("sd15", "slow")
    engine = SlowEngine()
    app = DeckApp(engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_profile(pilot, app, "slow")
        await pilot.press(key_for(app.screen, "profiles.enqueue"))
        await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog), what="GPU prompt")
        started = time.monotonic()
        await pilot.press("enter")
        await wait_note(pilot, "enqueueing slow…", timeout=2)
        assert time.monotonic() - started < 2
        await pilot.press("2")
        await wait_text(pilot, "enqueueing slow: checking the profile")  # not "No jobs yet"
        engine.release.set()
        await wait_note(pilot, "job 1 queued: slow")
        await wait_until(pilot, lambda: table_ids(app) == [1], what="the job in the table")
        assert "enqueueing slow" not in screen_text(app)


async def test_empty_queue_names_the_enqueue_key_the_user_has(dpdeck_home: Path) -> None:
    (dpdeck_home / "keymap.toml").write_text('"profiles.enqueue" = "f6"\n')
    app = DeckApp(start_mode="queue", engine=FakeEngine())
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_text(pilot, "highlight a profile and press f6 to enqueue it")


# ---- notification history, path completion --------------------------------------------------------------


async def test_every_notification_is_kept_with_its_time() -> None:
    app = DeckApp(engine=FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Profiles")
        app.notify("first note")
        app.notify("second [b]note[/b]", severity="warning", timeout=0.1)
        await pilot.pause(0.5)  # the second toast has gone
        await pilot.press("exclamation_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, NotificationsScreen), what="history")
        text = await wait_text(pilot, "first note")
        lines = text.splitlines()
        second = next(i for i, line in enumerate(lines) if "second" in line)
        first = next(i for i, line in enumerate(lines) if "first note" in line)
        assert second < first  # newest first
        assert time.strftime("%H:") in lines[first] and "!" in lines[second]
        assert "second note" in lines[second]  # the text the toast showed, not its markup
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, NotificationsScreen), what="closed")


def test_complete_path(tmp_path: Path) -> None:
    (tmp_path / "archive.dpdeck.tar.gz").write_text("x")
    (tmp_path / "archives").mkdir()
    (tmp_path / "main.toml").write_text("")
    (tmp_path / ".hidden").write_text("")
    assert complete_path(f"{tmp_path}/m") == (f"{tmp_path}/main.toml", [])
    assert complete_path(f"{tmp_path}/arch") == (
        f"{tmp_path}/archive",
        ["archive.dpdeck.tar.gz", "archives/"],
    )
    assert complete_path(f"{tmp_path}/archives") == (f"{tmp_path}/archives/", [])  # a folder gets its /
    assert complete_path(f"{tmp_path}/nothing") == (f"{tmp_path}/nothing", [])
    assert complete_path(f"{tmp_path}/missing/x") == (f"{tmp_path}/missing/x", [])
    assert ".hidden" not in complete_path(f"{tmp_path}/")[1]
    home = Path.home()
    completed, _ = complete_path("~/")
    assert completed.startswith("~/") or not any(home.iterdir())  # ~ is kept in the text


async def test_import_prompt_completes_paths_on_tab(tmp_path: Path) -> None:
    (tmp_path / "mine.dpdeck.tar.gz").write_text("x")
    (tmp_path / "mixed").mkdir()
    app = DeckApp(engine=FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "Templates")
        await pilot.press(key_for(app.screen, "profiles.import"))
        await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog), what="import prompt")
        box = app.screen.query_one("#prompt-input", Input)
        box.value = f"{tmp_path}/mi"
        box.cursor_position = len(box.value)
        await pilot.press("tab")
        await wait_text(pilot, "mine.dpdeck.tar.gz  mixed/")  # two candidates listed
        assert box.value == f"{tmp_path}/mi" and box.has_focus  # Tab did not move the focus
        await pilot.press("n", "tab")
        await wait_until(pilot, lambda: box.value == f"{tmp_path}/mine.dpdeck.tar.gz", what="completed")


@pytest.mark.slow
async def test_demo_model_builds_while_the_gpus_are_typed() -> None:
    """The ten seconds after enqueueing a fresh demo profile were the demo model's build; it now starts when
    the GPU prompt opens, so a user who takes a few seconds there waits less (real build, real engine)."""
    from tui import data

    store.save("demo", data.template_files("demo-tiny"), "test", create=True)
    assert data.demo_build_needed("demo")
    job_store.set_setting(job_store.connect(), "paused", "1")  # queued, never trained, in this test
    app = DeckApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_profile(pilot, app, "demo")
        await pilot.press(key_for(app.screen, "profiles.enqueue"))
        await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog), what="GPU prompt")
        await wait_until(
            pilot, lambda: not data.demo_build_needed("demo"), timeout=120, what="built meanwhile"
        )
        started = time.monotonic()
        await pilot.press("enter")
        await wait_note(pilot, "queued: demo", timeout=60)
        waited = time.monotonic() - started
    print(f"enqueue after the build: {waited:.2f} s")
    assert waited < 5, waited
