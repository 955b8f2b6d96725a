"""Video scan speed: the dataset scan over a folder of clips in every container, hand-written parser vs PyAV.

Usage: python bench/bench_video_headers.py [--per-container 150] [--frames 48]

Encodes one clip per container with PyAV (MP4, fragmented MP4, MOV, MKV, WebM, AVI, MPEG-TS; 320x240 MPEG-4
Part 2 / VP9), copies each --per-container times with a caption, then times engine.datasets.scan.scan over the
folder (median of 3, warm page cache) with DPDECK_VIDEO_PROBE=builtin (the hand-written parser alone: what the
scan did before PyAV) and with PyAV (the pre-check plus FFmpeg's demuxers), and says how many clips each left
with an unknown frame count. Needs the `video` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPECS = {
    "mp4": ("mp4", "mpeg4", {}),
    "frag.mp4": ("mp4", "mpeg4", {"movflags": "frag_keyframe+empty_moov"}),
    "mov": ("mov", "mpeg4", {}),
    "mkv": ("matroska", "mpeg4", {}),
    "webm": ("webm", "libvpx-vp9", {}),
    "avi": ("avi", "mpeg4", {}),
    "ts": ("mpegts", "mpeg4", {}),
}


def encode(path: Path, muxer: str, codec: str, options: dict[str, str], frames: int) -> None:
    import av
    from PIL import Image

    with av.open(str(path), "w", format=muxer, options=options) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height = 320, 240
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (320, 240), (i % 255, 90, 160)))))
        out.mux(stream.encode(None))


def timed_scan(folder: Path, probe: str) -> tuple[float, int, int]:
    from engine.datasets import video_av
    from engine.datasets.scan import scan

    os.environ[video_av.ENV] = probe
    times = []
    rep = None
    for _ in range(3):
        t = time.perf_counter()
        rep = scan(folder).directories[0]
        times.append(time.perf_counter() - t)
    assert rep is not None
    return statistics.median(times), len(rep.video_unknown_frames), len(rep.unreadable)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-container", type=int, default=150)
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpdeck-bench-video-") as tmp:
        src, folder = Path(tmp) / "src", Path(tmp) / "clips"
        src.mkdir()
        folder.mkdir()
        for name, (muxer, codec, options) in SPECS.items():
            encode(src / f"clip.{name}", muxer, codec, options, args.frames)
        for seed in src.iterdir():
            for i in range(args.per_container):
                target = folder / f"{seed.name.replace('.', '_')}_{i:04d}{''.join(seed.suffixes[-1:])}"
                shutil.copyfile(seed, target)
                target.with_suffix(".txt").write_text("a clip, tag")
        n = args.per_container * len(SPECS)
        print(
            f"{n} clips ({args.per_container} per container, {args.frames} frames 320x240); median of 3 scans"
        )
        for label, probe in (("hand-written parser", "builtin"), ("PyAV (pre-check + FFmpeg)", "auto")):
            secs, unknown, unreadable = timed_scan(folder, probe)
            print(
                f"  {label:<28} {secs * 1000:8.0f} ms  {secs / n * 1e6:7.0f} us/clip  "
                f"frame count unknown: {unknown:5d}  unreadable: {unreadable}"
            )
    print("(a shared 2-core box under other load: figures are pessimistic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
