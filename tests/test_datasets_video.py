"""Video headers (MP4 boxes, Matroska EBML), the scan's video report and frame buckets, on files built here.

The MP4 and WebM files are assembled box by box / element by element from the ISO BMFF and Matroska layouts,
so every case (moov at the end, 64-bit sizes, unknown-size elements, truncation, garbage) is exact and needs no
encoder. The payload bytes are zeros: only the headers are ever read. These test the hand-written parser
(`read_builtin`: the pre-check, and the whole answer without PyAV); tests/test_video_pyav.py covers PyAV's path
on real encoded files.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets import video_headers as vh
from engine.datasets.buckets import DatasetConfigError, frame_bucket_for, frame_bucket_list, plan_buckets
from engine.datasets.framerate import model_framerate
from engine.datasets.items import scan_directory
from engine.datasets.scan import scan
from engine.datasets.video_headers import EmptyVideoError, VideoHeaderError, read_builtin
from tui.cli.cmd_dataset import bucket_preview

REPO = Path(__file__).resolve().parent.parent

# ---- ISO BMFF builders ------------------------------------------------------------------------------------

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
ROT90 = (0, 1, 0, -1, 0, 0, 0, 0, 1)


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def box64(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body


def full(version: int = 0, flags: int = 0) -> bytes:
    return bytes([version]) + flags.to_bytes(3, "big")


def tkhd(width: float, height: float, matrix: tuple[int, ...] = IDENTITY, version: int = 0) -> bytes:
    times = struct.pack(">QQIIQ", 0, 0, 1, 0, 0) if version else struct.pack(">IIIII", 0, 0, 1, 0, 0)
    # a, b, c, d, x, y are 16.16; u, v, w are 2.30
    fixed = [v << 16 for v in matrix[:2]] + [matrix[2] << 30] + [v << 16 for v in matrix[3:5]]
    fixed += [matrix[5] << 30, matrix[6] << 16, matrix[7] << 16, matrix[8] << 30]
    return box(
        b"tkhd",
        full(version, 3),
        times,
        bytes(8),
        struct.pack(">hhhh", 0, 0, 0, 0),
        struct.pack(">9i", *fixed),
        struct.pack(">II", int(width * 65536), int(height * 65536)),
    )


def mdhd(timescale: int, duration: int, version: int = 0) -> bytes:
    if version:
        body = struct.pack(">QQIQ", 0, 0, timescale, duration)
    else:
        body = struct.pack(">IIII", 0, 0, timescale, duration)
    return box(b"mdhd", full(version), body, struct.pack(">HH", 0x55C4, 0))


def hdlr(handler: bytes) -> bytes:
    return box(b"hdlr", full(), bytes(4), handler, bytes(12), b"handler\x00")


def visual_entry(width: int, height: int, fourcc: bytes = b"avc1") -> bytes:
    return box(
        fourcc,
        bytes(6),
        struct.pack(">H", 1),
        bytes(16),
        struct.pack(">HHIIIH", width, height, 0x00480000, 0x00480000, 0, 1),
        bytes(32),
        struct.pack(">Hh", 0x18, -1),
    )


def stbl(entry: bytes, stts: list[tuple[int, int]] | None, sample_count: int) -> bytes:
    parts = [box(b"stsd", full(), struct.pack(">I", 1), entry)]
    if stts is not None:
        parts.append(box(b"stts", full(), struct.pack(">I", len(stts)), *(struct.pack(">II", *e) for e in stts)))
    parts.append(box(b"stsc", full(), struct.pack(">I", 1), struct.pack(">III", 1, max(sample_count, 1), 1)))
    parts.append(box(b"stsz", full(), struct.pack(">II", 0, sample_count), bytes(4 * sample_count)))
    parts.append(box(b"stco", full(), struct.pack(">II", 1, 48)))
    return box(b"stbl", *parts)


def video_trak(
    width: int = 64,
    height: int = 64,
    frames: int = 81,
    timescale: int = 16000,
    delta: int = 1000,
    *,
    matrix: tuple[int, ...] = IDENTITY,
    entry_size: tuple[int, int] | None = None,
    stts: list[tuple[int, int]] | None = None,
    version: int = 0,
) -> bytes:
    ew, eh = entry_size or (width, height)
    table = [(frames, delta)] if stts is None else stts
    return box(
        b"trak",
        tkhd(width, height, matrix, version),
        box(
            b"mdia",
            mdhd(timescale, frames * delta, version),
            hdlr(b"vide"),
            box(b"minf", box(b"vmhd", full(0, 1), bytes(8)), stbl(visual_entry(ew, eh), table, frames)),
        ),
    )


def audio_trak() -> bytes:
    entry = box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(20))
    return box(
        b"trak",
        tkhd(0, 0),
        box(
            b"mdia",
            mdhd(48000, 48000 * 5),
            hdlr(b"soun"),
            box(b"minf", stbl(entry, [(235, 1024)], 235)),
        ),
    )


def mp4(trak: bytes | None = None, *, moov_at_end: bool = False, mdat: bytes = bytes(64), audio: bool = True) -> bytes:
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")
    moov = box(b"moov", box(b"mvhd", full(), bytes(96)), *([audio_trak()] if audio else []), trak or video_trak())
    body = box(b"mdat", mdat)
    return ftyp + (body + moov if moov_at_end else moov + body)


# ---- Matroska builders ------------------------------------------------------------------------------------


def vint_size(n: int) -> bytes:
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | n).to_bytes(length, "big")
    raise ValueError(n)


UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def el(eid: int, *payload: bytes, unknown: bool = False) -> bytes:
    body = b"".join(payload)
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + (UNKNOWN if unknown else vint_size(len(body))) + body


def uint(eid: int, value: int) -> bytes:
    return el(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def flt(eid: int, value: float) -> bytes:
    return el(eid, struct.pack(">d", value))


def webm_tracks(width: int = 64, height: int = 36, default_duration: int | None = 41_708_333) -> bytes:
    audio = el(0xAE, uint(0xD7, 2), uint(0x83, 2), el(0x86, b"A_OPUS"))
    video_fields = [uint(0xD7, 1), uint(0x83, 1), el(0x86, b"V_VP9")]
    if default_duration:
        video_fields.append(uint(0x23E383, default_duration))
    video_fields.append(el(0xE0, uint(0xB0, width), uint(0xBA, height)))
    return el(0x1654AE6B, audio, el(0xAE, *video_fields))


def webm(
    *,
    duration_ms: float | None = 5005.0,
    tracks: bytes | None = None,
    segment_unknown: bool = False,
    doctype: bytes = b"webm",
    tracks_after_cluster: bool = False,
) -> bytes:
    header = el(0x1A45DFA3, uint(0x4286, 1), el(0x4282, doctype), uint(0x4287, 4), uint(0x4285, 2))
    info_fields = [uint(0x2AD7B1, 1_000_000)] + ([flt(0x4489, duration_ms)] if duration_ms is not None else [])
    info = el(0x1549A966, *info_fields, el(0x4D80, b"dpdeck-test"))
    tracks = webm_tracks() if tracks is None else tracks
    cluster = el(0x1F43B675, uint(0xE7, 0), el(0xA3, bytes(40)))
    if not tracks_after_cluster:
        return header + el(0x18538067, info, tracks, cluster, unknown=segment_unknown)

    # SeekHead first (fixed 3-byte positions so its own size does not move them), then Info, a Cluster, Tracks.
    def seek(target: int, pos: int) -> bytes:
        return el(0x4DBB, el(0x53AB, target.to_bytes(4, "big")), el(0x53AC, pos.to_bytes(3, "big")))

    probe = el(0x114D9B74, seek(0x1549A966, 0), seek(0x1654AE6B, 0))
    info_pos = len(probe)
    tracks_pos = info_pos + len(info) + len(cluster)
    seekhead = el(0x114D9B74, seek(0x1549A966, info_pos), seek(0x1654AE6B, tracks_pos))
    assert len(seekhead) == len(probe)
    return header + el(0x18538067, seekhead, info, cluster, tracks, unknown=segment_unknown)


@pytest.fixture(autouse=True)
def _builtin_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan and bucket tests below run on these synthetic files (zero payload, a bare AVI header) through
    the hand-written parser, whether PyAV is installed or not: FFmpeg reads some of them differently."""
    monkeypatch.setenv(vh.video_av.ENV, "builtin")


# ---- helpers ----------------------------------------------------------------------------------------------


def _png(path: Path, w: int = 64, h: int = 64) -> None:
    Image.new("RGB", (w, h), (30, 60, 90)).save(path)


def _write(path: Path, data: bytes, caption: str | None = "a clip") -> Path:
    path.write_bytes(data)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


# ---- MP4 ----------------------------------------------------------------------------------------------------


def test_mp4_size_frames_fps_duration(tmp_path: Path) -> None:
    info = read_builtin(_write(tmp_path / "a.mp4", mp4(video_trak(320, 240, frames=81)), None))
    assert (info.container, info.width, info.height, info.frames) == ("mp4", 320, 240, 81)
    assert info.fps == 16.0 and info.duration == pytest.approx(81 / 16)
    assert not info.frames_estimated and info.rotation == 0 and info.note == ""
    assert info.frames_at(16) == 81 and info.frames_at(24) == 121  # int(81 * 24 / 16) = 121


def test_mp4_moov_at_end_and_64_bit_sizes_stay_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 GiB of mdat (sparse, so it costs no disk) in a 64-bit box, then the moov, with a version-1 tkhd/mdhd.
    path = tmp_path / "long.mov"
    trak = video_trak(1920, 1080, frames=900, timescale=30000, delta=1001, version=1)
    big = 3 << 30
    with open(path, "wb") as f:
        f.write(box(b"ftyp", b"qt  ", bytes(4), b"qt  "))
        f.write(struct.pack(">I4sQ", 1, b"mdat", 16 + big))
        f.seek(big, os.SEEK_CUR)
        f.write(box(b"moov", box(b"mvhd", full(), bytes(96)), trak))
    read_total = 0
    real_pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        nonlocal read_total
        read_total += n
        return real_pread(fd, n, offset)

    monkeypatch.setattr(vh.os, "pread", counting)
    info = read_builtin(path)
    monkeypatch.undo()
    assert (info.width, info.height, info.frames) == (1920, 1080, 900)
    assert info.fps == pytest.approx(30000 / 1001) and info.duration == pytest.approx(900 * 1001 / 30000)
    assert info.frames_at(16) == int(900 * 16 / (30000 / 1001)) == 480
    assert read_total < 8192


def test_mp4_first_video_track_stored_size_and_rotation(tmp_path: Path) -> None:
    # tkhd says 1920x1080 shown rotated 90°; the sample entry (what a decoder returns) is 1920x1088.
    trak = video_trak(1920, 1080, matrix=ROT90, entry_size=(1920, 1088))
    info = read_builtin(_write(tmp_path / "phone.mp4", mp4(trak), None))
    assert (info.width, info.height, info.rotation) == (1920, 1088, 90)
    assert info.display_size == (1088, 1920)
    flipped = video_trak(matrix=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert read_builtin(_write(tmp_path / "flip.mp4", mp4(flipped), None)).rotation is None


def test_mp4_variable_frame_rate_and_missing_stts(tmp_path: Path) -> None:
    vfr = video_trak(frames=30, timescale=90000, stts=[(10, 3000), (10, 3003), (10, 6000)])
    info = read_builtin(_write(tmp_path / "vfr.mp4", mp4(vfr), None))
    assert info.frames == 30 and info.fps == pytest.approx(30 * 90000 / 120030)
    no_stts = box(
        b"trak",
        tkhd(64, 64),
        box(b"mdia", mdhd(1000, 2000), hdlr(b"vide"), box(b"minf", stbl(visual_entry(64, 64), None, 50))),
    )
    est = read_builtin(_write(tmp_path / "nostts.mp4", mp4(no_stts), None))
    assert est.frames == 50 and est.fps == 25.0 and est.frames_estimated and "'stts' table is missing" in est.note


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (mp4()[:-40], "truncated: box 'mdat'"),  # download cut inside the media data
        (mp4(moov_at_end=True)[:-200], "truncated: box 'moov'"),  # cut inside the index at the end
        (mp4(moov_at_end=True)[: 32 + 8 + 64], "no 'moov' box"),  # ftyp + mdat, index never written
        (box(b"ftyp", b"isom") + box(b"moov", struct.pack(">I4s", 0x7FFFFFFF, b"trak")), "past the end of its parent"),
        (box(b"ftyp", b"isom") + box(b"moov", struct.pack(">I4s", 3, b"trak")), "smaller than its own header"),
        (mp4(audio=False).replace(b"vide", b"text"), "no video track"),
        (
            mp4().replace(struct.pack(">I", 1) + struct.pack(">II", 81, 1000), struct.pack(">I", 10**6) + bytes(8)),
            "'stts' lists",
        ),
        (os.urandom(4096), "not an MP4/MOV file"),
        (b"\x00\x00\x00\x0cftyp\x00\x00", "truncated"),
    ],
    ids=["cut-mdat", "cut-moov", "no-moov", "huge-box", "tiny-box", "no-video", "huge-stts", "garbage", "cut-ftyp"],
)
def test_mp4_broken_files_name_the_problem(tmp_path: Path, data: bytes, needle: str) -> None:
    path = _write(tmp_path / "bad.mp4", data, None)
    with pytest.raises(VideoHeaderError) as exc:
        read_builtin(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_zero_byte_and_unparsed_formats(tmp_path: Path) -> None:
    with pytest.raises(EmptyVideoError, match="zero-byte"):
        read_builtin(_write(tmp_path / "empty.mp4", b"", None))
    avi = read_builtin(_write(tmp_path / "old.avi", b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(100), None))
    assert avi.container == "avi" and avi.frames is None and "frame count unknown: .avi" in avi.note
    # The container is told by its bytes: a WebM named .mp4 is still read.
    assert read_builtin(_write(tmp_path / "misnamed.mp4", webm(), None)).container == "webm"


def test_corrupted_headers_never_raise_anything_but_video_header_error(tmp_path: Path) -> None:
    rng = random.Random(1234)
    seeds = [mp4(), mp4(moov_at_end=True), mp4(video_trak(version=1)), webm(), webm(tracks_after_cluster=True)]
    path = tmp_path / "fuzz.mp4"
    for i in range(400):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.2:
                del data[pos:]
                if not data:
                    data = bytearray(b"\x00")
            else:
                data[pos] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            info = read_builtin(path)
        except VideoHeaderError as exc:
            assert str(path) in str(exc) and exc.reason
        else:
            assert info.frames is None or info.frames >= 0


# ---- Matroska -----------------------------------------------------------------------------------------------


def test_webm_size_and_estimated_frames(tmp_path: Path) -> None:
    info = read_builtin(_write(tmp_path / "a.webm", webm(), None))
    assert (info.container, info.width, info.height) == ("webm", 64, 36)
    assert info.fps == pytest.approx(1e9 / 41_708_333) and info.duration == pytest.approx(5.005)
    assert info.frames == 120 and info.frames_estimated
    mkv = read_builtin(_write(tmp_path / "b.mkv", webm(doctype=b"matroska", segment_unknown=True), None))
    assert mkv.container == "matroska" and mkv.frames == 120


def test_webm_tracks_after_clusters_via_seekhead(tmp_path: Path) -> None:
    info = read_builtin(_write(tmp_path / "seek.webm", webm(tracks_after_cluster=True), None))
    assert (info.width, info.height, info.frames) == (64, 36, 120)


def test_webm_unknown_duration_or_rate(tmp_path: Path) -> None:
    live = read_builtin(_write(tmp_path / "live.webm", webm(duration_ms=None, segment_unknown=True), None))
    assert live.frames is None and live.width == 64 and "no Duration" in live.note
    norate = read_builtin(_write(tmp_path / "n.webm", webm(tracks=webm_tracks(default_duration=None)), None))
    assert norate.frames is None and norate.duration == pytest.approx(5.005) and "DefaultDuration" in norate.note
    nan = read_builtin(_write(tmp_path / "nan.webm", webm(duration_ms=float("nan")), None))
    assert nan.frames is None and nan.duration is None and "not a positive number" in nan.note


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (webm()[:-30], "truncated: the Segment declares"),
        # Unknown-size Segment and Cluster, no Tracks anywhere: must end with an error, not hang or read on.
        (webm(tracks=b"", segment_unknown=True)[:-47] + el(0x1F43B675, bytes(10), unknown=True), "no Tracks"),
        (webm(tracks=el(0x1654AE6B, el(0xAE, uint(0x83, 2))), segment_unknown=True), "no video track"),
        (webm(tracks=el(0x1654AE6B, b"", unknown=True)), "unknown size"),
        (webm(tracks=el(0x1654AE6B, b"\xae\x10\xff\xff\xff\xff\xff\xff\xff")), "past the end"),
        (b"\x1a\x45\xdf\xa3" + bytes(40), "invalid EBML"),
        (os.urandom(64), "not a Matroska/WebM file"),
    ],
    ids=["cut-segment", "unknown-sizes", "no-video", "unknown-tracks", "child-overrun", "bad-id", "garbage"],
)
def test_webm_broken_files_name_the_problem(tmp_path: Path, data: bytes, needle: str) -> None:
    if needle == "not a Matroska/WebM file":
        data = b"\x00" + data[1:]
    path = _write(tmp_path / "bad.webm", data, None)
    with pytest.raises(VideoHeaderError) as exc:
        read_builtin(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


# ---- scan report --------------------------------------------------------------------------------------------


def _clips(root: Path) -> Path:
    d = root / "clips"
    d.mkdir()
    _png(d / "still.png")
    d.joinpath("still.txt").write_text("a still", encoding="utf-8")
    _write(d / "long.mp4", mp4(video_trak(64, 64, frames=81)))  # 81 frames at 16 fps
    _write(d / "mid.mov", mp4(video_trak(64, 64, frames=90, timescale=30, delta=1)))  # 90 at 30 fps = 48 at 16
    _write(d / "short.mp4", mp4(video_trak(64, 64, frames=20)))  # 20 at 16: shorter than 33
    _write(d / "one.mp4", mp4(video_trak(64, 64, frames=1)))  # one frame: diffusion-pipe treats it as an image
    _write(d / "wide.webm", webm(tracks=webm_tracks(128, 64)))  # 120 frames at 23.976 = 80 at 16
    _write(d / "broken.mp4", mp4()[:-40])
    _write(d / "empty.mp4", b"")
    _write(d / "old.avi", b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(52))
    return d


def test_scan_reports_video_frames_sizes_and_broken_videos(tmp_path: Path) -> None:
    d = _clips(tmp_path)
    report = scan(d)
    rep = report.directories[0]
    t = report.totals
    assert t["images"] == 1 and t["videos"] == 8 and t["captioned"] == 9
    assert rep.unreadable == ["broken.mp4"] and rep.zero_byte == ["empty.mp4"]
    assert any("broken.mp4: unreadable video (" in w and "truncated" in w for w in rep.warnings)
    assert rep.video_unknown_frames == ["old.avi"]
    by_name = {m["name"]: m for m in rep.video_meta}
    assert by_name["mid.mov"]["frames"] == 90 and by_name["mid.mov"]["fps"] == 30.0
    assert by_name["wide.webm"]["frames_estimated"] and (
        by_name["wide.webm"]["width"],
        by_name["wide.webm"]["height"],
    ) == (128, 64)
    assert t["video_frames"] == rep.video_frames == 81 + 90 + 20 + 1 + 120
    assert t["video_seconds"] == pytest.approx(81 / 16 + 3 + 20 / 16 + 1 / 16 + 5.005)
    assert report.resolutions["64x64"] == 5 and report.resolutions["128x64"] == 1
    assert json.loads(json.dumps(report.to_dict()))["totals"]["video_unknown_frames"] == 1


def test_scan_checks_video_masks_and_shows_videos_in_the_panel(tmp_path: Path) -> None:
    from rich.console import Console

    from tui.widgets.dataset_panels import stats_renderable

    d = _clips(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (64, 64)).save(masks / "long.png")
    Image.new("L", (32, 32)).save(masks / "mid.png")
    (tmp_path / "ds.toml").write_text('[[directory]]\npath = "clips"\nmask_path = "masks"\n', encoding="utf-8")
    rep = scan(tmp_path / "ds.toml").directories[0]
    assert rep.mask_size_mismatch == ["mid.mov: image 64x64, mask 32x32"]
    console = Console(file=io.StringIO(), width=120)
    console.print(stats_renderable(scan(d), d))
    assert "8 videos · 312 frames · 14.4 s · 1 frame count unknown" in console.file.getvalue()


def test_scan_warns_about_rotated_videos(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    _write(d / "portrait.mp4", mp4(video_trak(64, 32, matrix=ROT90)))
    rep = scan(d).directories[0]
    assert any("rotated 90" in w and "64x32" in w for w in rep.warnings)


# ---- frame buckets ----------------------------------------------------------------------------------------


def test_frame_bucket_rule() -> None:
    fbs = frame_bucket_list({"frame_buckets": [65, 33]}, "dataset")
    assert fbs == [1, 33, 65]  # 1 always added, sorted
    assert frame_bucket_for(1, fbs) == 1
    assert frame_bucket_for(81, fbs) == 65 and frame_bucket_for(65, fbs) == 65 and frame_bucket_for(64, fbs) == 33
    assert frame_bucket_for(20, fbs) is None  # a video is never put in the image bucket
    assert frame_bucket_for(0, fbs) is None
    assert frame_bucket_list({}, "dataset") == [1]
    with pytest.raises(DatasetConfigError, match="frame_buckets"):
        frame_bucket_list({"frame_buckets": [33, 0]}, "dataset")


def _dataset(root: Path, extra: str = "") -> dict:
    return {
        "resolutions": [64],
        "enable_ar_bucket": True,
        "ar_buckets": [1.0, 2.0],
        "frame_buckets": [1, 33, 65],
        "directory": [{"path": "clips", **json.loads(extra or "{}")}],
    }


def test_plan_buckets_places_videos_beside_images(tmp_path: Path) -> None:
    _clips(tmp_path)
    plan = plan_buckets(_dataset(tmp_path), tmp_path, 1, framerate=16)
    sizes = {(b.width, b.height, b.frames): sorted(bi.item.path.name for bi in b.items) for b in plan.buckets}
    assert sizes == {
        (64, 64, 1): ["one.mp4", "still.png"],
        (64, 64, 33): ["mid.mov"],
        (64, 64, 65): ["long.mp4"],
        (96, 48, 65): ["wide.webm"],
    }
    assert plan.videos_too_short == 1 and any("short.mp4" in w and "20 frames" in w for w in plan.warnings)
    assert plan.videos_unknown_frames == 1 and plan.skipped_broken == 2
    # Per-directory frame_buckets override the dataset's; a higher model rate means more frames.
    plan24 = plan_buckets(_dataset(tmp_path, '{"frame_buckets": [1, 17]}'), tmp_path, 1, framerate=24)
    got = sorted((b.width, b.height, b.frames, b.count) for b in plan24.buckets)
    assert got == [(64, 64, 1, 2), (64, 64, 17, 3), (96, 48, 17, 1)]  # short.mp4: 20 frames at 16 = 30 at 24
    assert plan24.videos_too_short == 0


def test_plan_buckets_without_a_frame_rate_leaves_videos_out(tmp_path: Path) -> None:
    _clips(tmp_path)
    plan = plan_buckets(_dataset(tmp_path), tmp_path, 1)
    assert [(b.frames, [bi.item.path.name for bi in b.items]) for b in plan.buckets] == [(1, ["still.png"])]
    assert plan.videos_ignored == 8 and any("8 video(s) not bucketed" in w for w in plan.warnings)


def test_image_batch_size_applies_to_frame_1_buckets(tmp_path: Path) -> None:
    _clips(tmp_path)
    plan = plan_buckets(_dataset(tmp_path), tmp_path, 1, framerate=16, global_batch_image=2)
    counts = {b.frames: (b.count, b.dropped) for b in plan.buckets if b.width == 64}
    assert counts[1] == (2, 0) and plan.steps_per_epoch == 1 + 3  # one image step, three video steps
    odd = plan_buckets(_dataset(tmp_path), tmp_path, 1, framerate=16, global_batch_image=3)
    assert {b.frames: b.dropped for b in odd.buckets if b.width == 64}[1] == 2


def test_scan_directory_video_items_carry_model_frames(tmp_path: Path) -> None:
    d = _clips(tmp_path)
    result = scan_directory(d, framerate=16)
    frames = {i.path.name: i.frames for i in result.items}
    assert frames == {"still.png": 1, "long.mp4": 81, "mid.mov": 48, "short.mp4": 20, "one.mp4": 1, "wide.webm": 80}
    assert scan_directory(d).videos_ignored == 8 and all(i.frames == 1 for i in scan_directory(d).items)


def test_model_framerate_per_model_type(tmp_path: Path) -> None:
    assert model_framerate({"type": "hunyuan-video"}) == 24 and model_framerate({"type": "ltx-video"}) == 25
    assert model_framerate({"type": "flux"}) is None and model_framerate(None) is None
    wan = tmp_path / "Wan2.1-T2V-14B"
    wan.mkdir()
    (wan / "config.json").write_text('{"model_type": "t2v", "dim": 5120}', encoding="utf-8")
    assert model_framerate({"type": "wan", "ckpt_path": str(wan)}) == 16
    five_b = tmp_path / "Wan2.2-TI2V-5B"
    five_b.mkdir()
    (five_b / "config.json").write_text('{"model_type": "ti2v", "dim": 3072}', encoding="utf-8")
    assert model_framerate({"type": "wan", "ckpt_path": "Wan2.2-TI2V-5B"}, tmp_path) == 24
    assert model_framerate({"type": "wan", "ckpt_path": str(tmp_path / "SkyReels-V2-T2V-14B-540P")}) == 24


def test_cli_buckets_json_shows_frames(tmp_path: Path) -> None:
    _clips(tmp_path)
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "resolutions = [64]\nenable_ar_bucket = true\nar_buckets = [1.0, 2.0]\nframe_buckets = [1, 33, 65]\n"
        '[[directory]]\npath = "clips"\n',
        encoding="utf-8",
    )
    main = tmp_path / "main.toml"
    main.write_text(
        'output_dir = "/tmp/o"\ndataset = "dataset.toml"\nepochs = 1\nmicro_batch_size_per_gpu = 1\n'
        '[model]\ntype = "hunyuan-video"\ndtype = "bfloat16"\n',
        encoding="utf-8",
    )
    preview = bucket_preview(toml, str(main), 1)
    assert preview["framerate"] == 24
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "buckets", str(toml), "--profile", str(main), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # At 24 fps: long 81 -> 121, mid 90/30 s -> 72, short 20 -> 30 (too short), one -> 1 (image), webm -> 120.
    got = sorted((b["width"], b["height"], b["frames"], b["items"]) for b in data["buckets"])
    assert got == [(64, 64, 1, 2), (64, 64, 65, 2), (96, 48, 65, 1)]
    assert data["videos_too_short"] == 1 and data["videos_unknown_frames"] == 1 and data == preview
    text = subprocess.run(
        [sys.executable, "-m", "tui.cli", "dataset", "buckets", str(toml), "--profile", str(main)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert text.returncode == 0 and "frames" in text.stdout and "24 fps" in text.stdout
