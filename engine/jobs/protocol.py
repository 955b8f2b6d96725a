"""Client -> daemon protocol: every request a client makes of the daemon, typed, through the store's
`requests` table.

A client writes a `Request` (`write_request`), pokes the daemon awake and waits for the row's `Result`
(`read_result`); the daemon reads pending rows (`pending_requests`), runs the one handler its table holds for
the `Action` (engine/jobs/daemon.py HANDLERS) and writes the `Result` back (`write_result`). Every refusal
("already ended", "only queued jobs move") is decided there, in the daemon, and comes back as
`Result(ok=False, message=...)` for the client to show.

The table's columns stay those of store schema 1 (action text, arg text, result JSON), so a store written by
an older dpdeck is read unchanged.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from engine.jobs import store


class Action(str, Enum):
    PAUSE = "pause"  # the queue: no new job starts
    UNPAUSE = "unpause"
    RECLAIM = "reclaim"  # kill marked processes whose job is not live
    CANCEL = "cancel"  # a job, now, without a final save
    STOP = "stop"  # a job, gracefully: the trainer checkpoints and quits (save_quit)
    RETRY = "retry"  # an ended job again, as a new job
    RESUME = "resume"  # an ended job again, from its last checkpoint
    MOVE = "move"  # a queued job up / down / top / bottom (arg)
    CANCEL_DOWNLOAD = "cancel_download"  # arg: the download id
    RESUME_DOWNLOAD = "resume_download"  # arg: the download id

    def __str__(self) -> str:
        return self.value


# Actions on a job (job_id required) and on a download (arg: its id); the rest act on the whole queue.
JOB_ACTIONS = frozenset({Action.CANCEL, Action.STOP, Action.RETRY, Action.RESUME, Action.MOVE})
DOWNLOAD_ACTIONS = frozenset({Action.CANCEL_DOWNLOAD, Action.RESUME_DOWNLOAD})
MOVES = ("up", "down", "top", "bottom")


@dataclass(frozen=True)
class Request:
    action: Action
    job_id: int | None = None
    arg: str | None = None  # MOVE: where; download actions: the download id

    def __post_init__(self) -> None:
        if self.action in JOB_ACTIONS and self.job_id is None:
            raise ValueError(f"{self.action} needs a job id")
        if self.action in DOWNLOAD_ACTIONS and not self.arg:
            raise ValueError(f"{self.action} needs a download id")


@dataclass(frozen=True)
class Result:
    ok: bool
    message: str
    new_job: int | None = None  # RETRY / RESUME: the job queued
    killed: list[int] = field(default_factory=list)  # RECLAIM: the pids killed
    code: str | None = None  # a machine-readable reason for a refusal (downloads: DownloadError codes)
    pending: bool = False  # the daemon had not answered within the client's wait

    def to_dict(self) -> dict[str, Any]:
        """The JSON the daemon stores and `dpdeck cancel --json` prints (unset extras left out)."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k in ("ok", "message") or v not in (None, [], False)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(
            ok=bool(data.get("ok")),
            message=str(data.get("message") or ""),
            new_job=data.get("new_job"),
            killed=list(data.get("killed") or []),
            code=data.get("code"),
            pending=bool(data.get("pending")),
        )

    def check(self) -> Result:
        """This result, or RequestError when the daemon refused."""
        if not self.ok:
            raise RequestError(self.message, self.code)
        return self


class RequestError(Exception):
    """A request the daemon refused (e.g. cancel on a job that already ended); the message is the daemon's."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


# ----- the requests table -----------------------------------------------------------------------------


def write_request(conn: sqlite3.Connection, request: Request) -> int:
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO requests(job_id, action, arg, created_at) VALUES (?, ?, ?, ?)",
            (request.job_id, request.action.value, request.arg, time.time()),
        )
    assert cur.lastrowid is not None
    return cur.lastrowid


def read_result(conn: sqlite3.Connection, request_id: int) -> Result | None:
    """The daemon's answer, None while it has not answered."""
    row = conn.execute("SELECT done_at, result FROM requests WHERE id=?", (request_id,)).fetchone()
    if row is None or row["done_at"] is None:
        return None
    try:
        data = json.loads(row["result"] or "{}")
    except ValueError:
        data = {}
    return Result.from_dict(data if isinstance(data, dict) else {})


def pending_requests(conn: sqlite3.Connection) -> list[tuple[int, Request | Result]]:
    """Unanswered requests in order: each a Request, or the refusal to store for a row that is none
    (an action this dpdeck does not know, written by another version)."""
    out: list[tuple[int, Request | Result]] = []
    for row in conn.execute("SELECT id, job_id, action, arg FROM requests WHERE done_at IS NULL ORDER BY id"):
        try:
            out.append((row["id"], Request(Action(row["action"]), row["job_id"], row["arg"])))
        except ValueError as exc:
            out.append((row["id"], Result(False, f"unknown request {row['action']!r}: {exc}")))
    return out


def write_result(conn: sqlite3.Connection, request_id: int, result: Result) -> None:
    with store.transaction(conn):
        conn.execute(
            "UPDATE requests SET done_at=?, result=? WHERE id=?",
            (time.time(), json.dumps(result.to_dict()), request_id),
        )
