"""Faults in profiles and datasets found by an adversarial pass (issue 12 items 11 and 13), each reproduced for real.

Archive bombs are real gzip files whose tar headers claim gigabytes (built by repeating one full-flushed deflate
block, so the test neither compresses nor holds them); full disks are real small tmpfs mounts; a read-only state
dir is a real read-only mount. Mount-based tests skip where mounting is refused.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiles import archive

GiB = 1 << 30


# Archive bombs (item 11).


def _header(name: str, kind: bytes, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o644
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def _deflate_block(data: bytes) -> bytes:
    """Raw deflate of `data` ending in a full flush: the block needs no history, so copies of it can follow each
    other (and any other full-flushed block) in one valid stream."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)


def write_bomb(path: Path, head: bytes, body_unit: bytes, body_size: int, tail: bytes) -> Path:
    """A .tar.gz: `head`, then `body_size` bytes of `body_unit` repeated, then `tail` (padded to a tar record).

    Streamed: the body is one compressed block of 1 MiB written body_size / 1 MiB times. The gzip trailer's CRC is
    left 0 (computing it costs a second per GiB): nothing that refuses the archive reads that far, and a reader
    that does read everything fails at the header long before it.
    """
    chunk = 1 << 20
    assert body_size % chunk == 0 and chunk % len(body_unit) == 0
    block = _deflate_block(body_unit * (chunk // len(body_unit)))
    end = tail + bytes(-len(tail) % tarfile.RECORDSIZE or tarfile.RECORDSIZE)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\xff")
        fh.write(_deflate_block(head))
        for _ in range(body_size // chunk):
            fh.write(block)
        fh.write(last.compress(end) + last.flush())
        total = len(head) + body_size + len(end)
        fh.write(struct.pack("<II", 0, total & 0xFFFFFFFF))
    return path


def _main_member() -> bytes:
    data = b"epochs = 1\n"
    return _header("main.toml", tarfile.REGTYPE, len(data)) + data + bytes(-len(data) % 512)


def long_name_bomb(path: Path, kind: bytes = tarfile.GNUTYPE_LONGNAME, size: int = 2 * GiB) -> Path:
    return write_bomb(path, _header("././@LongLink", kind, size), b"a", size, _main_member())


def pax_bomb(path: Path, kind: bytes = tarfile.XHDTYPE, size: int = 2 * GiB) -> Path:
    return write_bomb(
        path, _header("././@PaxHeader", kind, size, tarfile.USTAR_FORMAT), b"a", size, _main_member()
    )


def sparse_count_bomb(path: Path, size: int = 2 * GiB) -> Path:
    """A small, valid PAX header announcing a GNU sparse 1.0 member whose sparse map claims 10^9 entries; tarfile
    reads map lines until it has them all (each `1\\n` an int in a list)."""
    records = b""
    for key, value in (
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "main.toml"),
        ("GNU.sparse.realsize", "10"),
    ):
        rec = f" {key}={value}\n".encode()
        n = len(rec) + 2
        n = len(rec) + len(str(n))
        records += str(n).encode() + rec
    pax = _header("././@PaxHeader", tarfile.XHDTYPE, len(records), tarfile.USTAR_FORMAT)
    pax += records + bytes(-len(records) % 512)
    member = _header("GNUSparseFile.0/main.toml", tarfile.REGTYPE, size, tarfile.USTAR_FORMAT)
    head = pax + member + b"1000000000\n" + b"1\n" * ((1 << 20) - 6) + b"0\n0\n1\n"
    return write_bomb(path, head[: len(head) - len(head) % 512], b"1\n", size, b"")


_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))  # the unfixed reader needs 7.8 GB: die fast
from profiles import archive
start = time.perf_counter()
try:
    archive.import_path(Path(sys.argv[1]), "bomb")
    outcome = "imported"
except archive.ArchiveRejected as exc:
    outcome = str(exc)
elapsed = time.perf_counter() - start
# VmHWM is this process image's own peak; ru_maxrss carries the parent's peak across fork+exec.
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
rss = int(hwm[0].split()[1]) * 1024
print(json.dumps({"outcome": outcome, "seconds": elapsed, "max_rss": rss}))
"""


def _import_in_child(src: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("build", "member", "what"),
    [
        (long_name_bomb, "././@LongLink", "GNU long-name header"),
        (pax_bomb, "././@PaxHeader", "PAX extended header"),
    ],
)
def test_header_bomb_is_refused_fast_small_and_named(tmp_path: Path, build, member: str, what: str) -> None:
    src = build(tmp_path / "bomb.dpdeck.tar.gz")
    assert src.stat().st_size < 3 << 20  # ~2 MB on disk, 2 GiB claimed
    result = _import_in_child(src)
    outcome = str(result["outcome"])
    assert outcome.startswith(f"{src}: member {member!r} is a {what} of {2 * GiB} bytes"), outcome
    assert "nothing was stored" in outcome
    assert float(result["seconds"]) < 10.0, result  # 87 s before the fix; ~1 ms after (slack for a loaded CI box)
    assert int(result["max_rss"]) < 150 << 20, result  # the interpreter and profiles alone are ~50 MB


def test_sparse_map_bomb_is_refused_before_its_map_is_read(tmp_path: Path) -> None:
    """A small, valid PAX header can announce a GNU sparse 1.0 member whose map tarfile reads line by line until
    it has 10^9 entries; a profile file is never sparse, so it is refused before the map is read."""
    src = sparse_count_bomb(tmp_path / "sparse.dpdeck.tar.gz")
    result = _import_in_child(src)
    outcome = str(result["outcome"])
    assert outcome.startswith(f"{src}: member 'GNUSparseFile.0/main.toml' is a sparse file"), outcome
    assert float(result["seconds"]) < 10.0, result  # 87 s before the fix; ~1 ms after (slack for a loaded CI box)
    assert int(result["max_rss"]) < 150 << 20, result


def test_chain_of_extension_headers_is_refused(tmp_path: Path) -> None:
    """Each GNU long-name header makes tarfile parse the next header recursively: 2,000 small ones in a row (a
    2 MB archive) escaped as a RecursionError."""
    link = _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 100) + b"x" * 100 + bytes(412)
    src = tmp_path / "chain.tar.gz"
    src.write_bytes(gzip.compress(link * 2000 + _main_member() + bytes(1024)))
    with pytest.raises(
        archive.ArchiveRejected, match=rf"{src}: member '\./\./@LongLink' .* extension headers in a row"
    ):
        archive.import_path(src, "chain")


def test_decompressed_stream_is_capped(tmp_path: Path) -> None:
    """Whatever tarfile decides to read, the reader under it stops past MAX_TAR_BYTES of decompressed data."""
    raw = io.BytesIO(gzip.compress(bytes(archive.MAX_TAR_BYTES + 4096)))
    reader = archive.BoundedReader(gzip.GzipFile(fileobj=raw), Path("x.tar.gz"), archive.MAX_TAR_BYTES)
    read = 0
    with pytest.raises(archive.ArchiveRejected, match=rf"x.tar.gz: more than {archive.MAX_TAR_BYTES} bytes"):
        while chunk := reader.read(1 << 30):  # one huge request is served in bounded pieces
            read += len(chunk)
            assert len(chunk) <= archive.MAX_TAR_BYTES + 1
    assert read <= archive.MAX_TAR_BYTES


@pytest.mark.parametrize(
    "build",
    [
        lambda p: long_name_bomb(p, tarfile.GNUTYPE_LONGLINK, 8 << 20),
        lambda p: pax_bomb(p, tarfile.XGLTYPE, 8 << 20),
        lambda p: pax_bomb(p, tarfile.SOLARIS_XHDTYPE, 8 << 20),
    ],
    ids=["long-link", "pax-global", "solaris-x"],
)
def test_other_oversize_headers_are_refused(tmp_path: Path, build) -> None:
    src = build(tmp_path / "bomb.tar.gz")
    start = time.perf_counter()
    with pytest.raises(
        archive.ArchiveRejected, match=rf"{src}: member '\./\./@\w+' is a .* of {8 << 20} bytes"
    ):
        archive.import_path(src, "bomb")
    assert time.perf_counter() - start < 0.5


def test_sparse_member_is_refused(tmp_path: Path) -> None:
    data = b"epochs = 1\n"
    info = tarfile.TarInfo("main.toml")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    src = tmp_path / "sparse.tar.gz"
    with tarfile.open(src, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(archive.ArchiveRejected, match=rf"{src}: member 'main.toml' is a sparse file"):
        archive.import_path(src, "sparse")


def test_plain_toml_is_still_not_taken_for_an_archive(tmp_path: Path) -> None:
    """The import sniffs archives by their first bytes now (tarfile.is_tarfile parses the first header, bomb
    included); a TOML file must still go the TOML way."""
    main = tmp_path / "p.toml"
    main.write_text("epochs = 1\n")
    with pytest.raises(archive.ImportRejected, match=f"{main}: the profile is invalid"):
        archive.import_path(main, "p")


# Shared helpers for the mount-based tests.


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(mount: Path, leave_pages: int) -> Path:
    """Fill the filesystem at `mount`, then give back exactly `leave_pages` pages (tmpfs counts whole pages)."""
    filler = mount / "filler"
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(page))
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_pages * page))
    return filler


# Full disk during a profile save (item 13a).


def _profile_files(tag: str) -> dict[str, str]:
    return {
        "main.toml": f"# {tag}\noutput_dir = '/tmp/out'\ndataset = 'dataset.toml'\nepochs = 1\n",
        "dataset.toml": f"# {tag}\nresolutions = [512]\n",
    }


def _history_state(pdir: Path) -> tuple[list[str], list[str]]:
    """(complete version folders, anything else in history/: half-made versions, temp folders)."""
    complete, other = [], []
    for entry in sorted((pdir / "history").iterdir()):
        if entry.name.startswith("v") and (entry / "meta.json").is_file():
            complete.append(entry.name)
        else:
            other.append(entry.name)
    return complete, other


def test_full_disk_save_never_runs_history_ahead_of_live_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profiles import store
    from profiles.errors import ProfileError

    with mounted_tmpfs(tmp_path / "home", "size=256k") as home:
        monkeypatch.setenv("DPDECK_HOME", str(home))
        store.save("p", _profile_files("v1"), create=True)
        pdir = home / "profiles" / "p"
        live = _profile_files("v1")
        failures = 0
        for pages in range(12):  # a save needs a handful of pages: every step of it fails once
            filler = fill_disk(home, pages)
            error: Exception | None = None
            try:
                store.save("p", _profile_files(f"try {pages}"))
            except (ProfileError, OSError) as exc:
                error = exc
            else:
                live = _profile_files(f"try {pages}")
            finally:
                filler.unlink()
            complete, other = _history_state(pdir)
            assert other == [], f"{pages} free pages: half-made history entries {other}"
            assert store.read_files("p") == live, f"{pages} free pages: live files changed by a failed save"
            newest = int(complete[-1][1:])
            assert store.read_version("p", newest) == live, f"{pages} free pages: history ahead of live files"
            assert not [e.name for e in pdir.iterdir() if e.name.endswith(".tmp")]
            if error is not None:
                failures += 1
                assert isinstance(error, ProfileError), repr(error)  # a message, not a traceback
                assert "No space left on device" in str(error) and "nothing was changed" in str(error), error
                assert str(pdir) in str(error), error
        assert failures >= 3  # failed at several different steps, then succeeded
        assert live != _profile_files("v1")


# Caption ops: undo records on failure (item 13b).


def _captions(d: Path, n: int, size: int) -> dict[str, bytes]:
    from PIL import Image

    d.mkdir()
    for i in range(n):
        Image.new("RGB", (2, 2)).save(d / f"{i:03d}.png")
        (d / f"{i:03d}.txt").write_bytes(("tag, " * (size // 5)).encode())
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.txt"))}


def _records() -> list[Path]:
    from engine.datasets.undo import undo_root

    return sorted(undo_root().iterdir())


def test_journal_disk_full_leaves_no_record_or_a_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal ($DPDECK_HOME, a small tmpfs) fills up while it packs the old captions (another filesystem, so
    no hard links) or writes its manifest: the op must change nothing and leave no record at all."""
    from engine.datasets import captions as c
    from engine.datasets.undo import undo

    d = tmp_path / "d"
    before = _captions(d, 3, 3000)
    with mounted_tmpfs(tmp_path / "home", "size=64k") as home:
        monkeypatch.setenv("DPDECK_HOME", str(home))
        _records()  # creates the journal folders while there is room
        failures = 0
        for pages in range(10):
            filler = fill_disk(home, pages)
            error: Exception | None = None
            try:
                op_id = c.apply(c.plan(d, c.add_trigger("ohwx")), "t")
            except (OSError, c.CaptionError) as exc:
                error = exc
            finally:
                filler.unlink()
            now = {p.name: p.read_bytes() for p in sorted(d.glob("*.txt"))}
            if error is not None:
                failures += 1
                assert _records() == [], f"{pages} free pages: {error!r} left {[p.name for p in _records()]}"
                assert now == before
                continue
            (record,) = _records()
            assert (record / "manifest.json").is_file()
            undo(op_id)
            assert {p.name: p.read_bytes() for p in sorted(d.glob("*.txt"))} == before
            assert _records() == []
        assert failures >= 2 and failures < 10


def test_failure_part_way_names_a_complete_record_that_restores_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged renames (the journal on another filesystem): folder b's staging folder is its own mount, so its
    temp files are written fine but cannot be renamed into b (EXDEV) after a's captions were replaced."""
    from engine.datasets import captions as c
    from engine.datasets.undo import undo

    a, b = tmp_path / "a", tmp_path / "b"
    before = {**{f"a/{k}": v for k, v in _captions(a, 3, 20).items()}}
    before.update({f"b/{k}": v for k, v in _captions(b, 3, 20).items()})

    def now() -> dict[str, bytes]:
        return {f"{p.parent.name}/{p.name}": p.read_bytes() for d in (a, b) for p in sorted(d.glob("*.txt"))}

    with (
        mounted_tmpfs(tmp_path / "home", "size=4m") as home,
        mounted_tmpfs(b / ".dpdeck-staging", "size=1m") as staging,
    ):
        monkeypatch.setenv("DPDECK_HOME", str(home))
        changes = c.plan(a, c.add_trigger("ohwx")) + c.plan(b, c.add_trigger("ohwx"))
        with pytest.raises(
            c.CaptionError, match=rf"{b / '000.txt'}: .*`dpdeck dataset undo (\S+)` restores"
        ) as info:
            c.apply(changes, "t")
        changed = now()
        assert all(changed[k].startswith(b"ohwx") for k in changed if k.startswith("a/"))
        assert all(changed[k] == before[k] for k in changed if k.startswith("b/"))
        assert [p for p in staging.rglob("*") if p.is_file()] == []  # no temp file left behind
        (record,) = _records()
        assert (record / "manifest.json").is_file() and record.name in str(info.value)
        undo(record.name)
        assert now() == before and _records() == []


def test_image_op_failing_on_its_first_image_leaves_no_record(tmp_path: Path) -> None:
    """The same rule for image ops: the first image turned unreadable between plan and apply."""
    from PIL import Image

    from engine.datasets import images as im

    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (400, 200), (10, 120, 30)).save(d / name)
    plan = im.plan_resize(d, 100)
    (d / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # truncated since the plan
    before = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    with pytest.raises(im.ImageOpError, match=rf"{d / 'a.png'}: .*nothing was changed"):
        im.apply(plan.changes, "resize")
    assert {p.name: p.read_bytes() for p in sorted(d.iterdir())} == before
    assert _records() == []


# Symlink loops and outside links in a scan (items 13c, 13d).

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=cwd or REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        errors="replace",  # a bug may print raw non-UTF-8 bytes: let the assertions see them
        timeout=60,
    )


def test_scan_of_only_symlink_loops_is_an_error_naming_each(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.symlink("a.png", d / "a.png")  # a loop of one
    os.symlink("c.png", d / "b.png")
    os.symlink("b.png", d / "c.png")  # and of two
    r = _cli("dataset", "scan", str(d))
    assert r.returncode == 1, (r.stdout, r.stderr)
    for name in ("a.png", "b.png", "c.png"):
        assert f"dpdeck: error: {d / name}: symlink loop" in r.stderr, r.stderr
    j = _cli("dataset", "scan", str(d), "--json")
    assert j.returncode == 1
    data = json.loads(j.stdout)
    assert data["totals"]["broken_links"] == 3 and data["directories"][0]["broken_links"] == [
        "a.png",
        "b.png",
        "c.png",
    ]


def test_scan_with_a_loop_beside_real_images_reports_it_and_succeeds(tmp_path: Path) -> None:
    from PIL import Image

    from engine.datasets.scan import scan

    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "ok.png")
    os.symlink("loop.png", d / "loop.png")
    os.symlink("gone.png", d / "dangling.png")
    report = scan(d)
    assert report.totals["images"] == 1 and report.totals["broken_links"] == 2
    assert f"{d / 'loop.png'}: symlink loop; it cannot be read (training skips it)" in report.errors
    assert any(e.startswith(f"{d / 'dangling.png'}: dangling symlink") for e in report.errors)
    r = _cli("dataset", "scan", str(d))
    assert r.returncode == 0 and f"{d / 'loop.png'}: symlink loop" in r.stderr


@pytest.mark.parametrize("via_toml", [False, True])
def test_scan_of_a_looping_dataset_folder_fails(tmp_path: Path, via_toml: bool) -> None:
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    target = loop
    if via_toml:
        target = tmp_path / "ds.toml"
        target.write_text("[[directory]]\npath = 'loop'\n")
    r = _cli("dataset", "scan", str(target))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{loop}: symlink loop" in r.stderr, r.stderr


def test_trainer_scan_warns_about_looping_media(tmp_path: Path) -> None:
    from PIL import Image

    from engine.datasets.items import scan_directory

    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "ok.png")
    (d / "ok.txt").write_text("tag")
    os.symlink("loop.png", d / "loop.png")
    result = scan_directory(d)
    assert len(result.items) == 1
    assert f"{d / 'loop.png'}: symlink loop; skipped" in result.warnings


def test_scan_does_not_read_outside_symlinks_for_tag_statistics(tmp_path: Path) -> None:
    from PIL import Image

    from engine.datasets.scan import scan

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0, secret-tag")
    (outside / "captions.json").write_text(json.dumps({"b.png": "json-secret-tag"}))
    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(d / name)
    os.symlink(outside / "secret.txt", d / "a.txt")
    os.symlink(outside / "captions.json", d / "captions.json")
    (d / "c.txt").write_text("inside-tag")
    report = scan(d)
    assert report.tags == {"inside-tag": 1}
    assert report.caption_length["max"] == len("inside-tag")
    rep = report.directories[0]
    assert sorted(rep.links_outside) == ["a.txt", "captions.json"]
    assert rep.captioned == 2  # a (diffusion-pipe reads it) and c; b's only caption source was not read
    assert any(w.startswith(f"{d / 'a.txt'}: caption is a symlink pointing outside") for w in rep.warnings)
    assert any(w.startswith(f"{d / 'captions.json'}: symlink pointing outside") for w in rep.warnings)
    r = _cli("dataset", "scan", str(d))
    assert "secret" not in r.stdout and "root:x" not in r.stdout + r.stderr


# Control characters in file names (item 13e).

FORGED = "a\n--- passwd\n+++ passwd\n@@ -1 +1 @@\n-root\n+pwned"


def _diff_lines_are_well_formed(text: str) -> None:
    for line in text.splitlines():
        assert line[:1] in {"-", "+", "@", " ", "\\", "("} or line.startswith("dry run:"), repr(line)
        assert "\x1b" not in line and "\r" not in line, repr(line)
    assert "+pwned" not in text.splitlines() and "+++ passwd" not in text.splitlines()


def test_dry_run_diff_escapes_control_characters_in_names(tmp_path: Path) -> None:
    from PIL import Image

    from engine.datasets import captions as c

    d = tmp_path / "d"
    d.mkdir()
    for stem in (FORGED, "b\x1b[2J\x1b[31mred", "c\rcarriage"):
        Image.new("RGB", (2, 2)).save(d / f"{stem}.png")
        (d / f"{stem}.txt").write_text("tag, x\x1b[8m")
    changes = c.plan(d, c.add_trigger("ohwx"))
    assert len(changes) == 3
    diff = c.diff(changes)
    _diff_lines_are_well_formed(diff)
    assert f'+++ "{d}/a\\n--- passwd\\n+++ passwd\\n@@ -1 +1 @@\\n-root\\n+pwned.txt"' in diff.splitlines()
    assert (
        "+ohwx, tag, x\\x1b[8m" in diff.splitlines()
    )  # content too: no escape sequence reaches the terminal
    r = _cli("dataset", "caption", str(d), "--add-trigger", "ohwx", "--dry-run")
    assert r.returncode == 0, r.stderr
    _diff_lines_are_well_formed(r.stdout)


def test_names_that_are_not_utf8_or_hold_newlines_print_safely(tmp_path: Path) -> None:
    """A scan lists file names one per line; a newline in one, or bytes that are not UTF-8 (which made print()
    raise UnicodeEncodeError), must not break that."""
    from PIL import Image

    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (2, 2)).save(d / "x\nmissing caption: forged.png")
    Image.new("RGB", (2, 2)).save(os.fsdecode(os.fsencode(str(d)) + b"/caf\xe9.png"))
    r = _cli("dataset", "scan", str(d))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert "missing caption: forged.png" not in lines
    assert f"missing caption: {d}/x\\nmissing caption: forged.png" in lines
    assert f"missing caption: {d}/caf\\xe9.png" in lines
    r = _cli("dataset", "caption", str(d), "--create-missing", "--dry-run")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    _diff_lines_are_well_formed(r.stdout)


# A read-only state dir (item 13f).


@pytest.mark.parametrize(
    "command",
    [
        ["profile", "new", "x", "--from", "sd15"],
        ["ls"],
        ["dataset", "undo", "--list"],
        ["profile", "list"],
    ],
    ids=lambda c: " ".join(c),
)
@pytest.mark.parametrize("missing", [False, True], ids=["home-read-only", "home-inside-read-only"])
def test_read_only_state_dir_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], missing: bool
) -> None:
    with mounted_tmpfs(tmp_path / "ro", "ro") as ro:
        home = ro / "state" if missing else ro
        monkeypatch.setenv("DPDECK_HOME", str(home))
        r = _cli(*command)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"dpdeck: error: {home}") and "Read-only file system" in lines[0], lines[0]
    assert f"dpdeck keeps its state in {home} and must be able to write there" in lines[0]
    assert "DPDECK_HOME" in lines[0]
