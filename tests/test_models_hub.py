"""Downloads against the Hub as it behaves (tests/hub_server.py): resolve/ redirects LFS files to a CDN on
another origin with a signed URL that expires, gated repos answer 401/403 with the Hub's error headers, and
xet-backed files are announced the Hub's way and moved by hf_xet (its local CAS stands in for the network one).
Real daemon, real worker processes, real sockets."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import downloads
from engine.models.errors import DownloadError
from engine.models.xet import unavailable_reason

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubFile, HubServer, stop_downloads  # noqa: E402

WAIT = 60.0
TOKEN = "hf_goodtokengoodtokengood"


@pytest.fixture
def models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token from the developer's machine
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet_cache"))
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "0")
    monkeypatch.setenv("DPDECK_HUB_READ_TIMEOUT", "20")
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    return root


@pytest.fixture
def hub(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()


def _wait_for(pred, timeout: float = WAIT, what: str = "condition") -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _cdn(hub: HubServer, name: str, method: str = "GET") -> list[dict[str, str | None]]:
    return [r for r in hub.requests if r["host"] == "cdn" and r["method"] == method and r["file"] == name]


def _log(dl_id: str) -> str:
    path = downloads.downloads_dir() / f"{dl_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


# ---- the redirect and its auth rule ------------------------------------------------------------------------

def test_lfs_bytes_come_from_the_cdn_and_the_token_never_goes_there(hub: HubServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(2_000_000)
    hub.add("corp/gated", {"g.safetensors": data, "config.json": b'{"a": 1}'}, gated=True, tokens={TOKEN})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    big = downloads.wait(downloads.pull_file("corp/gated", "g.safetensors").id, WAIT)
    small = downloads.wait(downloads.pull_file("corp/gated", "config.json").id, WAIT)
    assert big.state == small.state == "completed", (big.error, small.error)
    assert Path(big.dest).read_bytes() == data and Path(small.dest).read_bytes() == b'{"a": 1}'
    assert big.files[0].sha256 == hashlib.sha256(data).hexdigest()  # from X-Linked-Etag on the 302
    resolve = [r for r in hub.requests if r["host"] == "hub" and r["file"] == "g.safetensors"]
    assert resolve and all(r["auth"] == "yes" and r["status"] == "302" for r in resolve)
    assert all(r["method"] == "HEAD" for r in resolve)  # the GET went straight to the HEAD's Location
    cdn = [r for r in hub.requests if r["host"] == "cdn"]
    assert [r["file"] for r in cdn] == ["g.safetensors"] and cdn[0]["status"] == "200"
    assert cdn[0]["auth"] is None and TOKEN not in (cdn[0]["headers"] or "")
    # A small (non-LFS) file is served by the Hub itself, which does get the token.
    assert [r["auth"] for r in hub.requests if r["file"] == "config.json" and r["method"] == "GET"] == ["yes"]


def test_a_planned_url_that_expired_is_signed_again(hub: HubServer) -> None:
    data = os.urandom(1_000_000)
    hub.add("acme/late", {"l.safetensors": data})
    hub.expire_next = 1  # the planning HEAD's signed URL is already dead when the worker uses it
    final = downloads.wait(downloads.pull_file("acme/late", "l.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    assert [r["status"] for r in _cdn(hub, "l.safetensors")] == ["403", "200"]
    heads = [r for r in hub.requests if r["host"] == "hub" and r["method"] == "HEAD"]
    assert len(heads) == 2  # planning, then a fresh signature after the CDN's 403
    assert "signed URL was refused" in _log(final.id)


def test_a_url_that_expires_mid_download_is_re_resolved_and_resumed(hub: HubServer, models_root: Path) -> None:
    data = os.urandom(3_000_000)
    hub.add("acme/long", {"m.safetensors": data})
    hub.throttle = 1_500_000.0  # ~2 s for the file
    hub.cut_after["m.safetensors"] = 2_000_000  # the connection drops after ~1.3 s
    dl = downloads.pull_file("acme/long", "m.safetensors")
    part = models_root / "acme--long" / ".m.safetensors.dpdeck-part"
    _wait_for(lambda: part.exists() and part.stat().st_size > 0, what="the first bytes")
    hub.expire_next = 1  # the URL the worker gets after the cut has expired by the time it is used
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    gets = _cdn(hub, "m.safetensors")
    assert [(r["range"], r["status"]) for r in gets] == [
        (None, "200"), ("bytes=2000000-", "403"), ("bytes=2000000-", "206")]  # resumed, never restarted
    signatures = {r["path"] for r in gets}
    assert len(signatures) == 1  # the same object each time; what changed was the signature
    assert "asking the Hub for a new one" in _log(final.id)


def test_a_cdn_that_keeps_refusing_fails_with_a_resumable_error(hub: HubServer) -> None:
    hub.add("acme/refused", {"r.safetensors": os.urandom(200_000)})
    hub.expire_next = 1_000
    final = downloads.wait(downloads.pull_file("acme/refused", "r.safetensors").id, WAIT)
    assert final.state == "failed" and final.code == "forbidden", final.error
    assert "kept refusing the Hub's signed URL (HTTP 403)" in (final.error or "")
    assert f"dpdeck models resume {final.id}" in (final.error or "")


@pytest.mark.parametrize(("token", "code", "needles"), [
    (None, "gated_no_token", ["corp/locked is a gated repo", "dpdeck secrets set hf_token", "HF_TOKEN",
                              "/corp/locked"]),
    ("hf_someoneelsestoken0000", "gated_no_access", ["corp/locked is a gated repo", "no access to it (403)",
                                                     "accept the licence"]),
])
def test_gated_repo_names_the_repo_and_what_to_do(hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                                  token: str | None, code: str, needles: list[str]) -> None:
    hub.add("corp/locked", {"w.safetensors": os.urandom(5000)}, gated=True, tokens={TOKEN})
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(DownloadError) as exc:
        downloads.pull_file("corp/locked", "w.safetensors")
    assert exc.value.code == code
    for needle in needles:
        assert needle in str(exc.value)
    assert token is None or token not in str(exc.value)
    assert [r["status"] for r in hub.requests if r["file"] == "w.safetensors"] == ["401" if token is None else "403"]
    assert not [r for r in hub.requests if r["host"] == "cdn"]


# ---- xet-backed files ---------------------------------------------------------------------------------------

needs_xet = pytest.mark.skipif(unavailable_reason() is not None, reason=f"xet transfer: {unavailable_reason()}")


@needs_xet
def test_xet_file_moves_through_hf_xet_with_dpdeck_checks(hub: HubServer) -> None:
    data = os.urandom(6_000_000)
    hub.add("acme/xet", {"x.safetensors": HubFile(data=data, xet=True)})
    final = downloads.wait(downloads.pull_file("acme/xet", "x.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    [f] = final.files
    assert f.via == "xet" and f.sha256 == hashlib.sha256(data).hexdigest()  # dpdeck's own hash check ran
    assert final.bytes_done == final.bytes_total == len(data)
    assert any(r["path"].endswith("/xet-read-token/" + hub.repos["acme/xet"].commit) for r in hub.requests)
    assert _cdn(hub, "x.safetensors") == []  # not a byte over the HTTP bridge


@needs_xet
def test_xet_download_resumes_from_the_partial_file(hub: HubServer, models_root: Path) -> None:
    data = os.urandom(5_000_000)
    hub.add("acme/xres", {"r.safetensors": HubFile(data=data, xet=True)})
    # A partial left by an earlier worker, whose first 1.5 MB differ from the Hub's: only a transfer that
    # continues at byte 1.5 M (and does not start over) produces the file whose sha256 is pinned here.
    cut = 1_500_000
    mine = bytes(b ^ 0x5A for b in data[:cut])
    part = models_root / "acme--xres" / ".r.safetensors.dpdeck-part"
    part.parent.mkdir(parents=True)
    part.write_bytes(mine)
    pinned = hashlib.sha256(mine + data[cut:]).hexdigest()
    final = downloads.wait(downloads.pull_file("acme/xres", "r.safetensors", sha256=pinned).id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == mine + data[cut:]
    assert final.files[0].via == "xet"


@needs_xet
def test_xet_disabled_reads_the_bridge_over_http(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the daemon this pull starts, and its workers, see it
    data = os.urandom(2_000_000)
    hub.add("acme/xoff", {"o.safetensors": HubFile(data=data, xet=True)})
    final = downloads.wait(downloads.pull_file("acme/xoff", "o.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data and final.files[0].via == "http"
    [get] = _cdn(hub, "o.safetensors")
    assert get["path"].startswith("/xet-bridge/") and get["auth"] is None
    assert not any("xet-read-token" in r["path"] for r in hub.requests)


@needs_xet
def test_xet_failure_falls_back_to_http_and_keeps_the_bytes(hub: HubServer) -> None:
    data = os.urandom(2_000_000)
    hub.add("acme/xbad", {"b.safetensors": HubFile(data=data, xet=True)})
    hub.xet_cas_broken = True  # the CAS knows nothing of the file
    final = downloads.wait(downloads.pull_file("acme/xbad", "b.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    assert Path(final.dest).read_bytes() == data
    assert final.files[0].via == "xet+http"
    assert [r["status"] for r in _cdn(hub, "b.safetensors")] == ["200"]
    assert "xet transfer unavailable" in _log(final.id)


@needs_xet
def test_folder_of_xet_files_shares_one_cas_token(hub: HubServer, models_root: Path) -> None:
    from engine.models.registry import Component, Entry

    blobs = {f"transformer/part-{i}.safetensors": os.urandom(700_000 + i) for i in range(3)}
    hub.add("acme/xdir", {"model_index.json": b"{}", **{k: HubFile(data=v, xet=True) for k, v in blobs.items()}})
    comp = Component(key="diffusers_path", repo="acme/xdir", kind="folder", include=["*"], check=["model_index.json"])
    [dl] = downloads.pull_entry(Entry(id="x", title="x", model_type="flux", licence="x", components=[comp]))
    final = downloads.wait(dl.id, WAIT)
    assert final.state == "completed", final.error
    for name, data in blobs.items():
        assert (models_root / "acme--xdir" / name).read_bytes() == data
    assert sorted(f.via or "" for f in final.files) == ["http", "xet", "xet", "xet"]  # model_index.json: HTTP
    assert len([r for r in hub.requests if "xet-read-token" in r["path"]]) == 1  # one token for the repo


@needs_xet
def test_xet_stream_stops_when_asked(hub: HubServer) -> None:
    from engine.models.hub import file_metadata
    from engine.models.xet import XetStream

    data = os.urandom(3_000_000)
    hub.add("acme/xstop", {"s.safetensors": HubFile(data=data, xet=True)})
    meta = file_metadata("acme/xstop", "s.safetensors")
    assert meta.xet_hash == hub.repos["acme/xstop"].files["s.safetensors"].xet_hash and meta.xet_refresh
    with XetStream(meta.xet_hash, meta.xet_refresh, meta.size, 1_000_000, None, lambda: False) as stream:
        assert b"".join(stream) == data[1_000_000:]  # start= is a byte offset into the file
    with XetStream(meta.xet_hash, meta.xet_refresh, meta.size, 0, None, lambda: True) as stream:
        time.sleep(0.6)  # the watcher polls every 0.25 s and cancels the stream
        assert sum(len(c) for c in stream) < len(data)


@needs_xet
def test_cli_says_a_download_went_through_xet(hub: HubServer) -> None:
    import json
    import subprocess

    hub.add("acme/xcli", {"c.safetensors": HubFile(data=os.urandom(1_000_000), xet=True)})
    final = downloads.wait(downloads.pull_file("acme/xcli", "c.safetensors").id, WAIT)
    assert final.state == "completed", final.error
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    run = [sys.executable, "-m", "tui.cli", "models", "downloads"]
    text = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout
    assert final.id in text and "verified" in text and "(xet)" in text
    listed = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, check=True).stdout)
    [mine] = [d for d in listed if d["id"] == final.id]
    assert [f["via"] for f in mine["files"]] == ["xet"]


# ---- the emulation itself, checked with huggingface_hub's own download code ----------------------------------

def test_huggingface_hub_downloads_from_the_emulation_as_from_the_hub(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    lfs, small = os.urandom(300_000), b'{"x": 1}'
    files: dict[str, bytes | Path | HubFile] = {"w.safetensors": lfs, "config.json": small}
    if unavailable_reason() is None:
        files["x.safetensors"] = HubFile(data=lfs[::-1], xet=True)
    hub.add("corp/mirror", files, gated=True, tokens={TOKEN})
    out = tmp_path / "hf"
    for name, data in [("w.safetensors", lfs), ("config.json", small)] + (
            [("x.safetensors", lfs[::-1])] if "x.safetensors" in files else []):
        got = hf_hub_download("corp/mirror", name, local_dir=out, endpoint=hub.url, token=TOKEN)
        assert Path(got).read_bytes() == data
    cdn = [r for r in hub.requests if r["host"] == "cdn"]
    assert [r["file"] for r in cdn] == ["w.safetensors"] and cdn[0]["auth"] is None  # the library's own rule
    if "x.safetensors" in files:
        assert any("xet-read-token" in r["path"] and r["auth"] == "yes" for r in hub.requests)
    for token, status in [(None, 401), ("hf_notallowednotallowed", 403)]:
        with pytest.raises(GatedRepoError) as exc:
            hf_hub_download("corp/mirror", "w.safetensors", local_dir=tmp_path / "no", endpoint=hub.url,
                            token=token or False)
        assert exc.value.response is not None and exc.value.response.status_code == status


@pytest.mark.parametrize("intact", [True, False])
def test_a_partial_that_is_already_complete_is_checked_not_fetched(hub: HubServer, models_root: Path,
                                                                   intact: bool) -> None:
    # A worker killed after its last byte and before the rename leaves a full-size partial: the next one
    # hashes it and places it (no byte fetched again), or quarantines it when its bytes are wrong.
    data = os.urandom(400_000)
    hub.add("acme/full", {"f.safetensors": data})
    part = models_root / "acme--full" / ".f.safetensors.dpdeck-part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data if intact else data[::-1])
    final = downloads.wait(downloads.pull_file("acme/full", "f.safetensors").id, WAIT)
    assert not _cdn(hub, "f.safetensors")
    if intact:
        assert final.state == "completed", final.error
        assert Path(final.dest).read_bytes() == data
    else:
        assert final.state == "failed" and final.code == "hash_mismatch", final.error
        assert not Path(final.dest).exists() and len(final.quarantined) == 1
