"""The client -> daemon protocol (engine/jobs/protocol.py): every Action answered by a real daemon with a typed
Result, refusals worded by the daemon and shown as they are by the Queue screen, downloads included."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_helpers import make_profile, setup_engine, wait_for

from engine.jobs import client, protocol, store
from engine.jobs.daemon import HANDLERS
from engine.jobs.facade import ClientEngine
from engine.jobs.job import JobState
from engine.jobs.protocol import Action, Request, RequestError, Result
from engine.models import downloads
from engine.models.errors import DownloadError
from tests.tui_helpers import wait_note, wait_text
from tui.app import DeckApp


def test_every_action_has_one_handler_and_results_round_trip() -> None:
    assert set(HANDLERS) == set(Action)
    full = Result(True, "job 3 queued (retry of 2)", new_job=3, killed=[7], code="x", pending=True)
    assert Result.from_dict(full.to_dict()) == full
    assert Result(False, "no").to_dict() == {"ok": False, "message": "no"}  # the stored JSON of schema 1
    with pytest.raises(RequestError, match="no") as refused:
        Result(False, "no", code="c").check()
    assert refused.value.code == "c"
    with pytest.raises(ValueError, match="needs a job id"):
        Request(Action.CANCEL)
    with pytest.raises(ValueError, match="needs a download id"):
        Request(Action.RESUME_DOWNLOAD)


def _queued(tmp_path: Path, *names: str) -> list[int]:
    setup_engine()
    store.set_setting(store.connect(), "paused", "1")  # nothing starts: every job stays queued
    main = str(make_profile(tmp_path, name="proto"))
    return [client.enqueue(main, name=n) for n in names]


def _ask(action: Action, job_id: int | None = None, arg: str | None = None) -> Result:
    result = client.send(Request(action, job_id, arg))
    assert isinstance(result, Result) and not result.pending, result
    return result


def test_a_real_daemon_answers_every_job_action(tmp_path: Path) -> None:
    setup_engine()
    ask = _ask
    assert ask(Action.UNPAUSE).message == "queue unpaused" and not client.queue_paused()
    assert ask(Action.PAUSE).message == "queue paused" and client.queue_paused()
    a, b, c = _queued(tmp_path, "a", "b", "c")
    reclaimed = ask(Action.RECLAIM)
    assert reclaimed.ok and reclaimed.killed == []

    moved = ask(Action.MOVE, c, "top")
    assert moved.ok and moved.message == f"job {c} moved top"
    assert [j.id for j in client.list_jobs()] == [c, a, b]
    bad = ask(Action.MOVE, c, "sideways")
    assert not bad.ok and "expected up, down, top, bottom" in bad.message

    early = ask(Action.RETRY, a)
    assert not early.ok and early.message == f"job {a} is still queued; retry needs an ended job"

    assert ask(Action.CANCEL, a) == Result(True, f"job {a} cancelled")
    assert client.get_job(a).state == JobState.CANCELLED
    stopped = ask(Action.STOP, b)  # a queued job has nothing to checkpoint: a stop is a cancel
    assert stopped.ok and client.get_job(b).state == JobState.CANCELLED

    again = ask(Action.CANCEL, a)
    assert again == Result(False, f"job {a} already ended (cancelled)")
    assert ask(Action.STOP, a).message == f"job {a} is cancelled: nothing to stop"
    assert ask(Action.MOVE, a, "up").message == f"job {a} is cancelled; only queued jobs move"
    assert ask(Action.RESUME, a).message == f"job {a} has no run folder to resume from"

    retried = ask(Action.RETRY, a)
    assert retried.ok and retried.new_job is not None
    clone = client.get_job(retried.new_job)
    assert clone.state == JobState.QUEUED and clone.parent_id == a and clone.name == "a"

    with pytest.raises(KeyError, match="no job 999"):
        client.send(Request(Action.CANCEL, 999))


def test_an_unknown_action_in_the_table_is_refused_not_fatal(tmp_path: Path) -> None:
    """A row written by another dpdeck version: the daemon answers it and goes on answering the rest."""
    (a,) = _queued(tmp_path, "a")
    conn = store.connect()
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO requests(job_id, action, arg, created_at) VALUES (?, 'frobnicate', NULL, ?)", (a, time.time())
        )
    row_id = cur.lastrowid
    assert row_id is not None
    assert client.send(Request(Action.CANCEL, a)).ok  # answered after the unknown one
    answer = protocol.read_result(conn, row_id)
    assert answer is not None and not answer.ok and "unknown request 'frobnicate'" in answer.message


def _download(state: str) -> downloads.Download:
    dl = downloads.Download(
        id=f"0101000000-{state[:4]}", repo="org/repo", dest=str(downloads.downloads_dir() / "nowhere"),
        state=state,  # type: ignore[arg-type]
        created_at=downloads.now_iso(), endpoint="http://127.0.0.1:9",  # never asked: the download has no files
    )
    downloads.save(dl)
    return dl


def test_download_cancel_and_resume_go_through_the_daemon(tmp_path: Path) -> None:
    failed, done = _download("failed"), _download("completed")

    cancelled = client.send(Request(Action.CANCEL_DOWNLOAD, arg=failed.id))
    assert cancelled == Result(True, f"download {failed.id} cancelled")
    assert downloads.get(failed.id).state == "cancelled"
    assert not downloads.cancel_marker_path(failed.id).exists()  # no worker ran: nothing left to tell one
    assert client.send(Request(Action.CANCEL_DOWNLOAD, arg=done.id)).message == f"download {done.id} already completed"

    resumed = client.send(Request(Action.RESUME_DOWNLOAD, arg=failed.id))
    assert resumed.ok, resumed
    # Requeued by the daemon before it answered (the old `cancelled` is never read back); its worker then runs.
    assert downloads.get(failed.id).state in ("queued", "running", "completed")
    wait_for(lambda: downloads.get(failed.id).state == "completed", 60, what="the resumed download (no files)")

    refused = client.send(Request(Action.RESUME_DOWNLOAD, arg=done.id))
    assert refused == Result(False, f"download {done.id} already completed", code="completed")
    with pytest.raises(DownloadError, match="already completed") as raised:
        downloads.resume(done.id)
    assert raised.value.code == "completed"
    missing = client.send(Request(Action.CANCEL_DOWNLOAD, arg="0101000000-gone"))
    assert not missing.ok and missing.code == "not_found"


async def test_the_queue_screen_shows_the_daemons_refusal(tmp_path: Path) -> None:
    """Real store, real daemon, the real engine facade: cancelling an ended job is refused at once, before any
    confirmation, in the daemon's sentence (engine/jobs/verbs.py holds the rule for both)."""
    (a,) = _queued(tmp_path, "ended")
    client.send(Request(Action.CANCEL, a)).check()
    app = DeckApp(start_mode="queue", engine=ClientEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_text(pilot, "ended")
        await wait_text(pilot, "cancelled")
        await pilot.press("c")
        await wait_note(pilot, f"job {a} already ended (cancelled)")
