"""State written by the oldest dpdeck that wrote each format stays loadable (tests/fixtures/state_v1/README.md).

The fixture is a DPDECK_HOME: a version-1 job store (dpdeck.db) made by cfa7ca1, the first commit with the
store, and download state files (downloads/<id>.json) made by 6338d3e, the first commit with downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.jobs import store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "state_v1" / "home"

JOB_STATES = {1: "completed", 2: "failed", 3: "cancelled", 4: "oom", 5: "queued"}


@pytest.fixture
def old_home(dpdeck_home: Path) -> Path:
    shutil.copytree(FIXTURE, dpdeck_home, dirs_exist_ok=True)
    return dpdeck_home


def dpdeck(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_fixture_is_a_version_1_store(tmp_path: Path) -> None:
    # A copy: even a read-only open of a WAL store leaves -shm/-wal files beside it, and the fixture stays as made
    shutil.copy2(FIXTURE / "dpdeck.db", tmp_path / "dpdeck.db")
    conn = sqlite3.connect(f"file:{tmp_path / 'dpdeck.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()
    assert "launcher_args" not in columns  # v1 as released, before later columns
    assert not list(FIXTURE.glob("dpdeck.db-*")), "something opened the fixture in place"


def test_ls_lists_the_old_jobs_with_their_states(old_home: Path) -> None:
    jobs = json.loads(dpdeck("ls", "--json", "--all").stdout)
    assert {job["id"]: job["state"] for job in jobs} == JOB_STATES
    by_id = {job["id"]: job for job in jobs}
    assert by_id[1]["name"] == "done-run" and by_id[1]["step"] == 64
    assert by_id[2]["exit_reason"] == "config_error"
    # The store was brought up to the current schema in place, and the paused queue held the waiting job.
    conn = sqlite3.connect(old_home / "dpdeck.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        assert "launcher_args" in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()
    assert {job["id"]: job["state"] for job in json.loads(dpdeck("ls", "--json", "--all").stdout)} == JOB_STATES


def test_show_keeps_old_events_and_evidence(old_home: Path) -> None:
    done = json.loads(dpdeck("show", "1", "--json").stdout)
    assert [event["kind"] for event in done["events"]] == ["enqueue", "launch", "exit"]
    assert done["state"] == "completed" and done["loss"] == pytest.approx(0.5 / 64)
    oom = json.loads(dpdeck("show", "4", "--json").stdout)
    assert oom["evidence"] == ["torch.OutOfMemoryError: CUDA out of memory."]


def test_old_download_states_are_listed(old_home: Path) -> None:
    listed = json.loads(dpdeck("models", "downloads", "--json").stdout)
    by_repo = {dl["repo"]: dl for dl in listed}
    assert by_repo["acme/tiny"]["state"] == "completed"
    assert by_repo["acme/tiny"]["bytes_done"] == by_repo["acme/tiny"]["bytes_total"] == 4112
    assert by_repo["acme/bad"]["state"] == "failed"
    assert by_repo["acme/bad"]["code"] == "hash_mismatch"
    text = dpdeck("models", "downloads").stdout
    assert "completed" in text and "failed" in text and "hash_mismatch" in text


def test_v1_store_that_already_has_later_columns_migrates(tmp_path: Path) -> None:
    """Stores written before the v2 schema existed may carry v2's column under version 1 (it was once added
    to v1's CREATE TABLE); migrating them must not fail on the column being there already."""
    path = tmp_path / "dpdeck.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(store.MIGRATIONS[0])
    conn.execute("ALTER TABLE jobs ADD COLUMN launcher_args TEXT")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    migrated = store.connect(path)
    try:
        assert migrated.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    finally:
        migrated.close()
