"""Video headers through PyAV (engine/datasets/video_av.py) on real files that PyAV itself encodes here: MP4,
fragmented MP4, MOV, MKV, WebM, AVI and MPEG-TS; the guards around FFmpeg (pre-check, watchdog) and a fuzz run of
mutated files in a child process, so a crash or a hang inside FFmpeg fails the test instead of killing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from engine.datasets import video_av
from engine.datasets.scan import scan
from engine.datasets.video_headers import VideoHeaderError, read_builtin, read_video_info

av = pytest.importorskip("av", reason="PyAV is the optional `video` extra")

REPO = Path(__file__).resolve().parent.parent
FRAMES, RATE, SIZE = 24, 16, (64, 48)
# name -> (FFmpeg muxer, codec, muxer options)
SPECS = {
    "a.mp4": ("mp4", "mpeg4", {}),
    "frag.mp4": ("mp4", "mpeg4", {"movflags": "frag_keyframe+empty_moov"}),
    "a.mov": ("mov", "mpeg4", {}),
    "a.mkv": ("matroska", "mpeg4", {}),
    "a.webm": ("webm", "libvpx-vp9", {}),
    "a.avi": ("avi", "mpeg4", {}),
    "a.ts": ("mpegts", "mpeg4", {}),
    "a.m2ts": (
        "mpegts",
        "mpeg4",
        {"mpegts_m2ts_mode": "1"},
    ),  # Blu-ray / AVCHD: a timestamp before each packet
}
# name -> (container as reported, frames estimated from duration x rate)
EXPECTED = {
    "a.mp4": ("mp4", False),
    "frag.mp4": ("mp4", False),  # counted from the fragments FFmpeg indexed
    "a.mov": ("mp4", False),
    "a.mkv": ("matroska", True),  # Matroska stores no frame count
    "a.webm": ("webm", True),
    "a.avi": ("avi", False),  # the AVI header's frame count
    "a.ts": ("ts", True),  # MPEG-TS has no header with a count: PTS duration x rate
    "a.m2ts": ("m2ts", True),
}


def encode(path: Path, muxer: str, codec: str, options: dict[str, str], rotation: int | None = None) -> None:
    with av.open(str(path), "w", format=muxer, options=options) as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)  # FFmpeg's convention: degrees counter-clockwise
        for i in range(FRAMES):
            frame = av.VideoFrame.from_image(Image.new("RGB", SIZE, (i * 10, 80, 200 - i * 5)))
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    for name, (muxer, codec, options) in SPECS.items():
        encode(d / name, muxer, codec, options)
    return d


@pytest.fixture(autouse=True)
def _pyav_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(video_av.ENV, raising=False)


@pytest.mark.parametrize("name", list(SPECS))
def test_every_container_gives_frames_rate_size_duration(videos: Path, name: str) -> None:
    info = read_video_info(videos / name)
    container, estimated = EXPECTED[name]
    assert (info.container, info.width, info.height) == (container, *SIZE)
    assert info.frames == FRAMES and info.frames_estimated is estimated, info
    assert info.fps == pytest.approx(RATE) and info.duration == pytest.approx(FRAMES / RATE, abs=0.01)
    assert info.rotation == 0 and info.frames_at(8) == FRAMES // 2
    assert ("duration x frame rate" in info.note) is estimated


def test_the_builtin_parser_agrees_where_it_reads_and_pyav_fills_the_rest(videos: Path) -> None:
    for name in ("a.mp4", "a.mov", "a.mkv", "a.webm"):
        own, pyav = read_builtin(videos / name), read_video_info(videos / name)
        assert (own.width, own.height, own.frames, own.frames_estimated) == (
            pyav.width,
            pyav.height,
            pyav.frames,
            pyav.frames_estimated,
        ), name
    # What PyAV adds: the hand-written parser has no frame count for these
    for name in ("frag.mp4", "a.avi", "a.ts", "a.m2ts"):
        assert read_builtin(videos / name).frames is None and read_video_info(videos / name).frames == FRAMES


def test_builtin_only_when_asked(videos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(video_av.ENV, "builtin")
    assert not video_av.available()
    assert read_video_info(videos / "a.avi").frames is None


def test_rotation_from_the_display_matrix(tmp_path: Path) -> None:
    encode(tmp_path / "phone.mp4", "mp4", "mpeg4", {}, rotation=90)
    info = read_video_info(tmp_path / "phone.mp4")
    assert info.rotation == 270 and (info.width, info.height) == SIZE  # 90 counter-clockwise = 270 clockwise
    assert info.display_size == (SIZE[1], SIZE[0])
    (tmp_path / "phone.txt").write_text("a phone clip")
    rep = scan(tmp_path).directories[0]
    assert any("rotated 270" in w for w in rep.warnings)


def test_scan_counts_every_container(videos: Path) -> None:
    from engine.datasets.items import VIDEO_EXTENSIONS

    listed = [name for name in SPECS if Path(name).suffix in VIDEO_EXTENSIONS]  # .m2ts is no dataset video
    rep = scan(videos).directories[0]
    assert rep.videos == len(listed) >= 7
    assert rep.unreadable == [] and rep.video_unknown_frames == []
    assert rep.video_frames == FRAMES * len(listed)


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("bad.avi", b"RIFX" + bytes(60), "not an AVI file"),
        ("bad.ts", b"\x00" * 376, "not an MPEG-TS file"),
        (
            "bad.m2ts",
            b"\x47" + bytes(191),
            "not an M2TS file",
        ),  # sync byte where .ts has it, not after a timestamp
        ("cut.avi", None, "FFmpeg cannot read it"),  # a real AVI header, then nothing
        ("noise.mpg", os.urandom(4096), "FFmpeg cannot read it"),
    ],
)
def test_broken_files_give_a_specific_error(
    tmp_path: Path, videos: Path, name: str, data: bytes | None, needle: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data if data is not None else (videos / "a.avi").read_bytes()[:64])
    with pytest.raises(VideoHeaderError) as exc:
        read_video_info(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_audio_only_file_names_what_ffmpeg_sees(tmp_path: Path) -> None:
    path = tmp_path / "voice.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame(format="s16", layout="mono", samples=800)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoHeaderError, match="no video"):
        read_video_info(path)


def test_watchdog_gives_up_on_a_probe_that_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.ts"
    os.mkfifo(fifo)
    opened = threading.Event()
    holder: list[int] = []

    def writer() -> None:  # writes a few bytes, then holds the pipe open without writing more
        fd = os.open(fifo, os.O_WRONLY)
        holder.append(fd)
        os.write(fd, b"\x47" + bytes(187))
        opened.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        with pytest.raises(video_av.ProbeError, match=r"did not finish reading the headers within 1 s"):
            video_av.probe(fifo, deadline_s=1.0)
        assert opened.wait(5)
    finally:
        t.join(5)
        for fd in holder:
            os.close(fd)  # FFmpeg's read sees the end and the stuck probe thread finishes


FUZZ = r"""
import json, random, sys
from pathlib import Path
from engine.datasets.video_headers import VideoHeaderError, read_video_info
src, work, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rng = random.Random(20261206)
counts = {"ok": 0, "error": 0}
for seed in sorted(src.iterdir()):
    original = seed.read_bytes()
    for i in range(rounds):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.15:
                del data[pos:]
                data = data or bytearray(b"\x00")
            elif roll < 0.3:
                data[pos:pos + 8] = rng.randbytes(8)
            else:
                data[pos] = rng.randrange(256)
        path = work / seed.name
        path.write_bytes(bytes(data))
        try:
            info = read_video_info(path)
        except VideoHeaderError as exc:
            assert exc.reason and str(path) in str(exc), exc
            counts["error"] += 1
        else:
            assert info.frames is None or info.frames >= 0, info
            counts["ok"] += 1
print(json.dumps(counts))
"""


def test_mutated_files_give_an_error_never_a_crash_or_a_hang(videos: Path, tmp_path: Path) -> None:
    rounds = 200  # x 8 containers: 1600 mutated files, a few seconds
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(video_av.ENV, None)
    try:
        out = subprocess.run(
            [sys.executable, "-c", FUZZ, str(videos), str(tmp_path), str(rounds)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the fuzz run hung: {exc.stderr!r}") from None
    assert out.returncode == 0, f"the fuzz run died (rc {out.returncode}): {out.stderr[-2000:]}"
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["ok"] + counts["error"] == rounds * len(SPECS)
    assert counts["error"] > 0 and counts["ok"] > 0  # both paths were exercised
