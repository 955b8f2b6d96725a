"""The job store: one SQLite file (WAL) per state dir.

Clients insert jobs (state `queued`) and requests; only the daemon changes a job's state after that.
Every write runs in `BEGIN IMMEDIATE` so concurrent writers queue on the lock instead of failing mid-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.jobs.job import JSON_COLUMNS
from statefiles import paths

SCHEMA_VERSION = 2

# Each migration takes the store from version i to i+1; never edit a released one, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_reason TEXT,
        profile TEXT NOT NULL,
        backend TEXT NOT NULL,
        gpus TEXT,
        num_gpus INTEGER,
        priority INTEGER NOT NULL DEFAULT 0,
        after_id INTEGER,
        queue_pos REAL NOT NULL,
        resume_from TEXT,
        parent_id INTEGER,
        port INTEGER,
        pid INTEGER,
        pid_ctime REAL,
        pgid INTEGER,
        job_dir TEXT NOT NULL,
        run_dir TEXT,
        wait_reason TEXT,
        evidence TEXT,
        step INTEGER,
        total_steps INTEGER,
        epoch INTEGER,
        total_epochs INTEGER,
        loss REAL,
        lr REAL,
        samples_per_s REAL,
        eta_s REAL,
        hang_timeout_s REAL,
        last_progress_at REAL,
        stop_deadline REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER,
        action TEXT NOT NULL,
        arg TEXT,
        created_at REAL NOT NULL,
        done_at REAL,
        result TEXT
    );
    CREATE INDEX requests_pending ON requests(done_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE TABLE metrics (
        job_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        epoch INTEGER,
        loss REAL,
        lr REAL,
        samples_per_s REAL,
        t REAL NOT NULL,
        PRIMARY KEY (job_id, step)
    );
    CREATE TABLE leases (
        resource TEXT PRIMARY KEY,
        job_id INTEGER NOT NULL,
        t REAL NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # v2: multi-node launcher pass-through. Stores written before v2 existed may hold this column already
    # under version 1 (it was once added to v1's CREATE TABLE): _migrate skips an ADD COLUMN that is there.
    """
    ALTER TABLE jobs ADD COLUMN launcher_args TEXT;
    """,
]
_ADD_COLUMN = re.compile(r"\s*ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)

REPAIR_HINT = "dpdeck daemon stop && dpdeck doctor --repair"


class StoreCorrupt(RuntimeError, sqlite3.DatabaseError):
    """The store file is not a readable SQLite database; the message names it and the repair command."""


def corrupt_message(path: Path, exc: BaseException) -> str:
    return (
        f"{path}: the job store is damaged ({exc}); rebuild it from the job folders "
        f"(the damaged file is kept aside): {REPAIR_HINT}"
    )


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating when missing, 0600) the store and bring its schema up to date.

    Raises StoreCorrupt when the file is not a SQLite database or is damaged.
    """
    path = path or paths.store_path()
    _private_file(path)
    try:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        # FULL: a job row must survive power loss once the daemon says it changed.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        raise StoreCorrupt(corrupt_message(path, exc)) from exc
    return conn


def is_corruption(exc: BaseException) -> bool:
    """A damaged or foreign file; not a busy or read-only one (OperationalError: not ours to fix)."""
    return isinstance(exc, StoreCorrupt) or type(exc) is sqlite3.DatabaseError


def _private_file(path: Path) -> None:
    """The store is 0600 before SQLite writes a byte; its -wal and -shm files take the same mode."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    except OSError:
        return  # a read-only state dir: SQLite reports what it can or cannot do
    for suffix in ("", "-wal", "-shm"):
        target = Path(f"{path}{suffix}")
        with contextlib.suppress(OSError):
            if stat.S_IMODE(target.stat().st_mode) & 0o077:
                os.chmod(target, 0o600)


def file_identity(path: Path | None = None) -> tuple[int, int] | None:
    """(device, inode) of the store file, None when it is missing: a change means it was deleted or replaced
    under an open connection, which would go on reading and writing the unlinked old file."""
    try:
        st = os.stat(path or paths.store_path())
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"{paths.store_path()}: store schema v{version} is newer than this dpdeck (v{SCHEMA_VERSION}); upgrade dpdeck"
        )
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
        for i in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[i].split(";"):
                if statement.strip() and not _column_present(conn, statement):
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _column_present(conn: sqlite3.Connection, statement: str) -> bool:
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.groups()
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def get_setting(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_setting(conn: sqlite3.Connection, key: str, value: str) -> None:
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))


def add_event(conn: sqlite3.Connection, job_id: int | None, kind: str, message: str) -> None:
    conn.execute(
        "INSERT INTO events(job_id, t, kind, message) VALUES (?, ?, ?, ?)", (job_id, time.time(), kind, message)
    )


def update_job(conn: sqlite3.Connection, job_id: int, **fields: Any) -> None:
    if not fields:
        return
    for key in JSON_COLUMNS:
        if key in fields and fields[key] is not None and not isinstance(fields[key], str):
            fields[key] = json.dumps(fields[key])
    cols = ", ".join(f"{k}=?" for k in fields)
    conn.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))
