"""Video stream facts through PyAV (FFmpeg's demuxers): what diffusion-pipe's own loader sees.

Optional: PyAV is the `video` extra (a 35 MB wheel with its own FFmpeg). engine.datasets.video_headers calls
`probe` when `available()` and keeps its hand-written MP4/Matroska parser as the pre-check and the fallback.

Only container and stream headers are read (avformat_open_input + find_stream_info, which may look at the first
packets); nothing is decoded into frames here. FFmpeg can spin or block on some input, so every probe has a
bounded probe size, FFmpeg's own interrupt deadline (PyAV's `timeout`, checked inside its loops), and a watchdog:
the probe runs on its own thread, and a probe not done in DEADLINE_S is given up with a ProbeError (the thread,
stuck in C, is left behind as a daemon thread; the scan goes on). A crash inside FFmpeg cannot be caught in
process: tests/test_video_pyav.py runs mutated files of every container through it in a child process.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

# Seconds FFmpeg may block in one open or read before PyAV's interrupt callback stops it.
OPEN_TIMEOUT_S = 5.0
# Bytes / microseconds find_stream_info may read for a stream's parameters (FFmpeg's defaults: 5 MB, 5 s).
PROBE_OPTIONS = {"probesize": str(2 << 20), "analyzeduration": str(2_000_000)}
DEADLINE_S = 10.0  # the watchdog: a probe still running after this is reported as stuck
ENV = "DPDECK_VIDEO_PROBE"  # "builtin" turns PyAV off (a bench, or a PyAV that misbehaves on someone's files)


class ProbeError(Exception):
    """FFmpeg could not read the file's headers; `reason` says what it said."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    format_name: str  # FFmpeg's demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    width: int | None
    height: int | None
    frames: int | None  # counted by the container (nb_frames) or from its index: None where it holds neither
    fps: float | None
    duration: float | None  # seconds
    index_frames: int  # packets in the demuxer's index after opening (MP4 fragments, AVI idx1)


def available() -> bool:
    if os.environ.get(ENV, "").strip().lower() == "builtin":
        return False
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _rate(*rates: Fraction | None) -> float | None:
    for rate in rates:
        if rate and rate > 0:
            return float(rate)
    return None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None or value <= 0:
        return None
    seconds = float(value * time_base)
    return seconds if math.isfinite(seconds) else None


def probe(path: Path | str, deadline_s: float = DEADLINE_S) -> Probe:
    """The first video stream's facts; ProbeError where FFmpeg cannot open it, has no video stream, or does not
    finish within `deadline_s`."""
    result: list[Probe | BaseException] = []

    def run() -> None:
        try:
            result.append(_probe(path))
        except BaseException as exc:  # handed to the caller's thread, raised there
            result.append(exc)

    worker = threading.Thread(target=run, name="dpdeck-video-probe", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if not result:
        raise ProbeError(
            f"FFmpeg did not finish reading the headers within {deadline_s:g} s; not probed further"
        )
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _probe(path: Path | str) -> Probe:
    import av

    try:
        with av.open(os.fspath(path), options=PROBE_OPTIONS, timeout=OPEN_TIMEOUT_S) as container:
            streams = container.streams.video
            if not streams:
                raise ProbeError("no video stream (FFmpeg sees only " + _kinds(container) + ")")
            stream = streams[0]
            ctx = stream.codec_context  # None where FFmpeg has no decoder for the codec: size unknown
            duration = _seconds(stream.duration, stream.time_base)
            if duration is None and container.duration and container.duration > 0:
                duration = container.duration / 1_000_000  # AV_TIME_BASE
            return Probe(
                format_name=container.format.name,
                width=(ctx.width if ctx is not None else 0) or None,
                height=(ctx.height if ctx is not None else 0) or None,
                frames=stream.frames or None,
                fps=_rate(stream.average_rate, stream.guessed_rate, stream.base_rate),
                duration=duration,
                index_frames=len(getattr(stream, "index_entries", ())),  # newer PyAVs only
            )
    except av.FFmpegError as exc:
        raise ProbeError(f"FFmpeg cannot read it: {exc.strerror or exc}") from exc
    # Defence in depth, as in the hand-written parser: a scan must never die on one file's odd values.
    except (OSError, ValueError, OverflowError, ZeroDivisionError, AttributeError, TypeError) as exc:
        raise ProbeError(f"FFmpeg cannot read it: {exc.__class__.__name__}: {exc}") from exc


def _kinds(container: object) -> str:
    streams = getattr(container, "streams", ())
    kinds = sorted({getattr(s, "type", "?") for s in streams})
    return ", ".join(kinds) + " streams" if kinds else "no streams"
