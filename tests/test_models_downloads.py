"""Downloads against tests/hub_server.py (a real local HTTP server speaking the Hub endpoints): real worker
processes, real partial files, real signals."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import downloads
from engine.models.errors import DownloadError
from engine.models.hub import token_path
from engine.models.registry import Component, Entry

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, stop_downloads  # noqa: E402

WAIT = 60.0  # generous: the CI box has 2 cores shared by several test runs


@pytest.fixture
def models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token from the developer's machine
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "0")
    monkeypatch.setenv("DPDECK_HUB_READ_TIMEOUT", "20")
    return root


@pytest.fixture
def hub(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()  # daemon first, then any worker: nothing outlives the test


def _wait_for(pred, timeout: float = WAIT, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_download_verifies_and_places_file(hub: HubServer, models_root: Path) -> None:
    data = os.urandom(2_500_000)
    hub.add("acme/tiny", {"weights/model.safetensors": data})
    dl = downloads.pull_file("acme/tiny", "weights/model.safetensors")
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    dest = models_root / "acme--tiny" / "weights" / "model.safetensors"
    assert Path(final.dest) == dest
    assert dest.read_bytes() == data
    assert final.files[0].sha256 == hashlib.sha256(data).hexdigest()  # taken from the Hub's X-Linked-Etag
    assert final.bytes_done == final.bytes_total == len(data)
    assert not list(dest.parent.glob(".*dpdeck-part"))
    assert final.commit == hub.repos["acme/tiny"].commit


def test_resume_after_cut_connection(hub: HubServer, models_root: Path) -> None:
    data = os.urandom(3_000_000)
    hub.add("acme/cut", {"m.safetensors": data})
    hub.cut_after["m.safetensors"] = 1_234_567
    final = downloads.wait(downloads.pull_file("acme/cut", "m.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    gets = [r for r in hub.requests if r["method"] == "GET" and r["file"] == "m.safetensors"]
    assert len(gets) == 2 and all(r["host"] == "cdn" for r in gets)  # the bytes come from the CDN
    assert gets[0]["range"] is None
    assert gets[1]["range"] == "bytes=1234567-"  # continued, not restarted


def test_cancel_stops_and_removes_partial(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/big", {"b.safetensors": os.urandom(2_000_000)})
    hub.throttle = 200_000.0
    dl = downloads.pull_file("acme/big", "b.safetensors")
    part = models_root / "acme--big" / ".b.safetensors.dpdeck-part"
    _wait_for(lambda: part.exists() and part.stat().st_size > 0, what="download to start")
    downloads.cancel(dl.id)
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "cancelled"
    assert not part.exists()
    assert not Path(final.dest).exists()
    pid = final.pid
    assert pid is not None
    _wait_for(lambda: not downloads.worker_alive(final), what="worker exit")


def test_cancel_interrupts_a_stalled_connection(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/stuck", {"s.safetensors": os.urandom(500_000)})
    hub.stall.add("s.safetensors")
    dl = downloads.pull_file("acme/stuck", "s.safetensors")
    _wait_for(lambda: downloads.get(dl.id).state == "running", what="worker start")
    time.sleep(0.5)  # the worker is now blocked reading a socket that sends nothing
    t = time.monotonic()
    downloads.cancel(dl.id)
    final = downloads.wait(dl.id, 15)  # well under the 20 s read timeout set for tests
    assert final.state == "cancelled"
    assert time.monotonic() - t < 15
    assert not list(models_root.rglob("*dpdeck-part"))


def test_hash_mismatch_is_quarantined(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/bad", {"c.safetensors": os.urandom(100_000)})
    hub.corrupt.add("c.safetensors")
    final = downloads.wait(downloads.pull_file("acme/bad", "c.safetensors").id, WAIT)
    assert final.state == "failed"
    assert final.code == "hash_mismatch"
    assert "sha256 mismatch" in (final.error or "") and "quarantined" in (final.error or "")
    assert not Path(final.dest).exists()
    assert not list(Path(final.dest).parent.glob(".*dpdeck-part"))
    [q] = final.quarantined
    assert Path(q).is_file() and Path(q).parent == models_root / ".quarantine"


def test_registry_sha256_wins_over_hub(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/pinned", {"p.safetensors": os.urandom(50_000)})
    wrong = "0" * 64
    final = downloads.wait(downloads.pull_file("acme/pinned", "p.safetensors", sha256=wrong).id, WAIT)
    assert final.code == "hash_mismatch" and wrong in (final.error or "")


def test_gated_repo_without_token_is_401_with_clear_message(hub: HubServer) -> None:
    hub.add("corp/gated", {"g.safetensors": b"x" * 5000}, gated=True, tokens={"hf_goodtokengoodtoken"})
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("corp/gated", "g.safetensors")
    assert exc.value.code == "gated_no_token"
    assert "gated" in str(exc.value) and "dpdeck secrets set hf_token" in str(exc.value)
    assert not downloads.list_downloads()


def test_gated_repo_with_token_lacking_access_is_403(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("corp/gated", {"g.safetensors": b"x" * 5000}, gated=True, tokens={"hf_goodtokengoodtoken"})
    monkeypatch.setenv("HF_TOKEN", "hf_wrongtokenwrongtoken")
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("corp/gated", "g.safetensors")
    assert exc.value.code == "gated_no_access"
    assert "403" in str(exc.value)
    assert "hf_wrongtoken" not in str(exc.value)  # the token never shows up in messages


def test_gated_repo_with_good_token_downloads(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("corp/gated", {"g.safetensors": b"y" * 5000}, gated=True, tokens={"hf_goodtokengoodtoken"})
    monkeypatch.setenv("HF_TOKEN", "hf_goodtokengoodtoken")
    final = downloads.wait(downloads.pull_file("corp/gated", "g.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == b"y" * 5000
    assert all(r["auth"] == "yes" for r in hub.requests if "/resolve/" in r["path"])
    assert "hf_goodtoken" not in Path(downloads.state_path(final.id)).read_text()
    assert not token_path(final.id).exists()  # the handed-over token went with the download


def test_concurrent_downloads_overlap(hub: HubServer, models_root: Path) -> None:
    blobs = {f"f{i}.safetensors": os.urandom(600_000) for i in range(3)}
    hub.add("acme/many", blobs)
    hub.throttle = 250_000.0  # ~2.4 s each: enough overlap even when worker start-up is slow
    ids = [downloads.pull_file("acme/many", name).id for name in blobs]
    seen_parallel = 0
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        states = [downloads.get(i) for i in ids]
        moving = sum(1 for d in states if d.state == "running" and d.bytes_done > 0 and d.bytes_done < len(blobs[
            Path(d.dest).name]))
        seen_parallel = max(seen_parallel, moving)
        if all(d.state not in downloads.LIVE for d in states):
            break
        time.sleep(0.05)
    finals = [downloads.get(i) for i in ids]
    assert [d.state for d in finals] == ["completed"] * 3, [d.error for d in finals]
    for d in finals:
        assert Path(d.dest).read_bytes() == blobs[Path(d.dest).name]
    assert seen_parallel >= 2  # they ran at the same time, not one after another


def test_folder_component_pulls_matching_files(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/pipe", {"model_index.json": b'{"_class_name": "FluxPipeline"}', "vae/config.json": b"{}",
                          "vae/diffusion_pytorch_model.safetensors": os.urandom(40_000),
                          "transformer/diffusion_pytorch_model.safetensors": os.urandom(40_000),
                          "flux1-schnell.safetensors": os.urandom(40_000)})
    comp = Component(key="diffusers_path", repo="acme/pipe", kind="folder",
                     include=["model_index.json", "vae/*"], check=["model_index.json", "vae/config.json"])
    entry = Entry(id="t", title="t", model_type="flux", licence="x", components=[comp])
    [dl] = downloads.pull_entry(entry)
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    root = models_root / "acme--pipe"
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert downloads.pull_entry(entry) == []  # present now: nothing to do


@pytest.mark.parametrize(
    ("repo", "path", "code", "needle"),
    [
        ("acme/nothere", "a.bin", "repo_not_found", "repository not found"),
        ("acme/tiny", "nope.bin", "file_not_found", "'nope.bin' is not in the repo"),
        ("not a repo", "a.bin", "bad_repo_id", "not a Hub repo id"),
        ("acme/tiny", "../etc/passwd", "bad_path", "not a file path inside a repo"),
    ],
)
def test_bad_requests_fail_before_starting(hub: HubServer, repo: str, path: str, code: str, needle: str) -> None:
    hub.add("acme/tiny", {"a.bin": b"a"})
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file(repo, path)
    assert exc.value.code == code
    assert needle in str(exc.value)
    assert not downloads.list_downloads()


def test_revision_not_found(hub: HubServer) -> None:
    hub.add("acme/tiny", {"a.bin": b"a"})
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("acme/tiny", "a.bin", revision="v9")
    assert exc.value.code == "revision_not_found"


def test_disk_space_checked_before_start(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("acme/tiny", {"a.safetensors": os.urandom(10_000)})
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", str(1 << 60))
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("acme/tiny", "a.safetensors")
    assert exc.value.code == "disk_space" and "not enough disk space" in str(exc.value)
    assert not downloads.list_downloads()


def test_directory_where_file_must_go(hub: HubServer, models_root: Path) -> None:
    hub.add("acme/tiny", {"a.safetensors": os.urandom(10_000)})
    (models_root / "acme--tiny" / "a.safetensors").mkdir(parents=True)
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("acme/tiny", "a.safetensors")
    assert exc.value.code == "dest_is_dir" and "is a directory" in str(exc.value)


def test_file_size_limit_mid_download_leaves_no_file(hub: HubServer, models_root: Path) -> None:
    import resource

    hub.add("acme/lim", {"l.safetensors": os.urandom(3_000_000)})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))  # inherited by the worker
    try:
        dl = downloads.pull_file("acme/lim", "l.safetensors")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "failed" and final.code == "file_too_large", final.error
    assert not Path(final.dest).exists()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE test covers the write-error path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_download(hub: HubServer, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(tiny_fs))
    hub.add("acme/full", {"f.safetensors": os.urandom(1_500_000)})
    hub.throttle = 500_000.0
    dl = downloads.pull_file("acme/full", "f.safetensors")  # fits when it starts
    part = tiny_fs / "acme--full" / ".f.safetensors.dpdeck-part"
    _wait_for(lambda: part.exists() and part.stat().st_size > 100_000, what="partial bytes")
    with open(tiny_fs / "filler", "wb") as fh:  # something else fills the disk meanwhile
        try:
            fh.write(b"\0" * 2_000_000)
        except OSError:
            pass
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "failed" and final.code == "disk_full", final.error
    assert "disk full" in (final.error or "") and "resume" in (final.error or "")
    assert not Path(final.dest).exists()


def test_entry_with_one_bad_component_starts_nothing(hub: HubServer) -> None:
    hub.add("acme/ok", {"a.safetensors": os.urandom(20_000)})
    good = Component(key="vae_path", repo="acme/ok", kind="file", file="a.safetensors")
    bad = Component(key="transformer_path", repo="acme/gone", kind="file", file="t.safetensors")
    entry = Entry(id="two", title="t", model_type="lumina_2", licence="x", components=[good, bad])
    with pytest.raises(DownloadError) as exc:
        downloads.pull_entry(entry)
    assert exc.value.code == "repo_not_found" and "acme/gone" in str(exc.value)
    assert downloads.list_downloads() == []
