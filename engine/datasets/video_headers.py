"""Video frame size, frame count, frame rate, duration and rotation from container headers only.

With PyAV installed (the `video` extra), the numbers come from FFmpeg's demuxers (engine.datasets.video_av): every
container FFmpeg reads, fragmented MP4, AVI and MPEG-TS included. The hand-written parser below runs first in any
case: it is the pre-check that turns a broken MP4/MOV/MKV/WebM into a specific VideoHeaderError before FFmpeg
sees it (and AVI / MPEG-TS files are checked for their signature), the source of the MP4 rotation (tkhd's
matrix; PyAV has no reader for a stream's display matrix), and the whole answer without PyAV.

MP4 / MOV / M4V / 3GP (ISO BMFF boxes) and MKV / WebM (Matroska EBML) are parsed here; the container is told by
the first bytes, not the file name. Every read is a positioned read of what the walk needs next (box and element
headers, a few small tables), so a multi-GB clip whose index sits at the end of the file costs a few kilobytes, and
no probe ever reads more than MAX_READ bytes. Broken input raises VideoHeaderError naming the file and what is
wrong; other containers (AVI, MPEG-TS, ...) give a VideoInfo without a frame count and the reason in `note`.

The numbers are the ones diffusion-pipe's loader gets through FFmpeg (PyAV):
- size: the stored frame size of the first video track (ISO: the visual sample entry in stsd, else tkhd;
  Matroska: PixelWidth x PixelHeight). Decoded frames are not rotated, so a tkhd rotation is reported in
  `rotation`, never applied to width/height.
- MP4 frames: the sample count of the stts table (FFmpeg's nb_frames; stsz's count when stts is missing);
  fps = frames * timescale / total stts duration (FFmpeg's avg_frame_rate); duration from mdhd.
- Matroska stores no frame count: frames = round(Duration * TimestampScale * fps) with fps = 1e9 /
  DefaultDuration, flagged `frames_estimated`.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine.datasets import video_av

MAX_READ = 4 << 20  # bytes one probe may read in total
MAX_CHILDREN = 10_000  # boxes / elements in one parent before the file is taken for garbage
STTS_MAX_ENTRIES = 262_144  # 2 MiB of (count, delta) pairs; a longer table (hours of VFR) gives an estimate
MKV_ELEMENT_MAX = 1 << 20  # an Info or Tracks element larger than this is not a header
ISO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".3gp"})
MATROSKA_EXTENSIONS = frozenset({".mkv", ".webm"})
# Box types an ISO BMFF / QuickTime file may start with.
_ISO_FIRST = frozenset(
    {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"pdin", b"meta"}
)
_NESTED = frozenset({b"mdia", b"minf", b"stbl"})  # trak children walked for the boxes below
_STBL = b"mdia/minf/stbl/"
# Top-level boxes looked at after moov: enough to see a normal file's mdat end, few enough for fragmented files.
_AFTER_MOOV = 8

# Matroska element ids (with their length marker, as the spec writes them).
_EBML, _DOCTYPE, _SEGMENT = 0x1A45DFA3, 0x4282, 0x18538067
_SEEKHEAD, _SEEK, _SEEK_ID, _SEEK_POS = 0x114D9B74, 0x4DBB, 0x53AB, 0x53AC
_INFO, _TIMESTAMP_SCALE, _DURATION = 0x1549A966, 0x2AD7B1, 0x4489
_TRACKS, _TRACK_ENTRY, _TRACK_TYPE, _DEFAULT_DURATION = 0x1654AE6B, 0xAE, 0x83, 0x23E383
_VIDEO, _PIXEL_WIDTH, _PIXEL_HEIGHT = 0xE0, 0xB0, 0xBA
_CLUSTER = 0x1F43B675
_TRACK_TYPE_VIDEO = 1


class VideoHeaderError(ValueError):
    """The file's header cannot be read; the message names the file and what is wrong (`reason` alone)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class EmptyVideoError(VideoHeaderError):
    """The file has zero bytes."""


@dataclass(frozen=True)
class VideoInfo:
    container: str  # "mp4", "webm" / "matroska" (the DocType), else the extension of a format not parsed
    width: int | None = None  # stored frame size: what a decoder returns, before any display rotation
    height: int | None = None
    frames: int | None = None  # frames in the file at its own rate
    fps: float | None = None
    duration: float | None = None  # seconds
    frames_estimated: bool = False  # frames derived from duration x frame rate, not counted
    rotation: int | None = 0  # degrees clockwise a player turns the picture; None: not a plain rotation
    note: str = ""  # why a value is unknown or estimated

    @property
    def display_size(self) -> tuple[int, int] | None:
        if self.width is None or self.height is None:
            return None
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height

    def frames_at(self, framerate: float) -> int | None:
        """Frames once resampled to `framerate`, as diffusion-pipe counts them: int(frames * framerate / fps)."""
        if self.frames is None or not self.fps:
            return None
        return int(self.frames * framerate / self.fps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Reader:
    """Positioned reads of one open file, counted against MAX_READ."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.fd, self.size, self.name = fd, size, name
        self.spent = 0

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        self.spent += n
        if self.spent > MAX_READ:
            raise self.error(f"headers need more than {MAX_READ >> 20} MiB of reads; not probed further")
        return os.pread(self.fd, n, offset) if n else b""

    def error(self, what: str) -> VideoHeaderError:
        return VideoHeaderError(self.name, what)


def read_video_info(path: Path | str) -> VideoInfo:
    """Header facts of one video; raises VideoHeaderError (EmptyVideoError for zero bytes) or OSError.

    Through PyAV where it is installed (and DPDECK_VIDEO_PROBE is not "builtin"), after the built-in pre-check.
    """
    checked = read_builtin(path)
    if not video_av.available():
        return checked
    return _with_pyav(os.fspath(path), checked)


def _with_pyav(name: str, checked: VideoInfo) -> VideoInfo:
    try:
        p = video_av.probe(name)
    except video_av.ProbeError as exc:
        raise VideoHeaderError(name, exc.reason) from exc
    fps = p.fps or checked.fps
    duration = p.duration if p.duration is not None else checked.duration
    frames, estimated, note = p.frames, False, ""
    if frames is None and p.index_frames and fps and duration and abs(p.index_frames - duration * fps) <= 1:
        frames = p.index_frames  # fragmented MP4: FFmpeg indexed every fragment's samples while opening
    if frames is None:
        if fps and duration:
            frames, estimated = round(duration * fps), True
            note = f"{checked.container} stores no frame count: frames = duration x frame rate"
        else:
            note = "frame count unknown: FFmpeg reports neither a frame count nor a duration and frame rate"
    return VideoInfo(
        container=checked.container,
        width=p.width or checked.width,
        height=p.height or checked.height,
        frames=frames,
        fps=fps,
        duration=duration,
        frames_estimated=estimated,
        rotation=checked.rotation,
        note=note,
    )


def read_builtin(path: Path | str) -> VideoInfo:
    """The hand-written parser alone (no PyAV); raises like read_video_info."""
    name = os.fspath(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise EmptyVideoError(name, "zero-byte file")
        r = _Reader(fd, size, name)
        head = r.read(0, 12)
        try:
            if head[:4] == b"\x1a\x45\xdf\xa3":
                return _matroska(r)
            if head[4:8] in _ISO_FIRST:
                return _iso(r)
        except (struct.error, IndexError, OverflowError, UnicodeDecodeError) as exc:
            # Defence in depth: every read above is bounds-checked, but a scan must never die on one file.
            raise r.error(f"malformed header ({exc.__class__.__name__}: {exc})") from exc
    finally:
        os.close(fd)
    ext = os.path.splitext(name)[1].lower()
    if ext in ISO_EXTENSIONS:
        raise VideoHeaderError(name, f"not an MP4/MOV file (starts with {head[:8]!r}, no 'ftyp' or 'moov' box)")
    if ext in MATROSKA_EXTENSIONS:
        raise VideoHeaderError(name, f"not a Matroska/WebM file (starts with {head[:4]!r}, no EBML header)")
    for extensions, signed, what in _SIGNATURES:
        if ext in extensions and not signed(head):
            raise VideoHeaderError(name, f"not {what} (starts with {head[:8]!r})")
    return VideoInfo(
        container=ext.lstrip(".") or "unknown",
        note=f"frame count unknown: {ext or 'this'} headers are not read (only MP4/MOV/M4V and MKV/WebM are)",
    )


# Containers this module does not parse, checked for their signature (the pre-check before FFmpeg sees them):
# (extensions, test on the first 12 bytes, what the file should be)
_SIGNATURES: tuple[tuple[frozenset[str], Callable[[bytes], bool], str], ...] = (
    (
        frozenset({".avi"}),
        lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ",
        "an AVI file: no 'RIFF....AVI ' header",
    ),
    # 188-byte TS packets start with the sync byte 0x47; .m2ts / .mts put a 4-byte timestamp before each
    (frozenset({".ts"}), lambda h: h[:1] == b"\x47", "an MPEG-TS file: no 0x47 sync byte"),
    (
        frozenset({".m2ts", ".mts"}),
        lambda h: h[4:5] == b"\x47",
        "an M2TS file: no 0x47 sync byte after the timestamp",
    ),
)


# ---- ISO BMFF (MP4, MOV, M4V, 3GP) -------------------------------------------------------------------------


def _box_name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))


def _boxes(r: _Reader, start: int, end: int, parent: str | None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, end offset) of each box in [start, end). parent None = the file's top level.

    Size 0 runs to the end of the parent; size 1 means a 64-bit size follows the type. A box reaching past its
    parent is an error: the file is cut short (top level) or the size is corrupt.
    """
    pos = start
    for _ in range(MAX_CHILDREN):
        if pos + 8 > end:
            return
        head = r.read(pos, 16)
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1:
            if len(head) < 16:
                raise r.error(f"truncated: box {_box_name(kind)} at byte {pos} ends inside its 64-bit size")
            (size,) = struct.unpack_from(">Q", head, 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise r.error(f"box {_box_name(kind)} at byte {pos} has size {size}, smaller than its own header")
        if pos + size > end:
            if parent is None:
                raise r.error(
                    f"truncated: box {_box_name(kind)} at byte {pos} declares {size} bytes, the file ends at byte {end}"
                )
            raise r.error(
                f"box {_box_name(kind)} at byte {pos} declares {size} bytes, past the end of its parent "
                f"{parent} at byte {end}"
            )
        yield kind, pos + header, pos + size
        pos += size
    raise r.error(f"more than {MAX_CHILDREN} boxes in {parent or 'the file'}; not a plausible MP4/MOV")


def _locate(r: _Reader, start: int, end: int, parent: str, prefix: bytes = b"") -> dict[bytes, tuple[int, int]]:
    """Payload ranges of a trak's boxes by path (b"tkhd", b"mdia/mdhd", ...); the first of each name wins."""
    found: dict[bytes, tuple[int, int]] = {}
    for kind, p, e in _boxes(r, start, end, parent):
        key = prefix + kind
        if key in found:
            continue
        found[key] = (p, e)
        if kind in _NESTED:
            for k, v in _locate(r, p, e, _box_name(kind), key + b"/").items():
                found.setdefault(k, v)
    return found


def _payload(r: _Reader, boxes: dict[bytes, tuple[int, int]], key: bytes, n: int) -> bytes:
    where = boxes.get(key)
    return r.read(where[0], min(n, where[1] - where[0])) if where else b""


def _iso(r: _Reader) -> VideoInfo:
    moov: tuple[int, int] | None = None
    after = 0
    for kind, start, end in _boxes(r, 0, r.size, None):
        if moov is not None:
            after += 1
            if after >= _AFTER_MOOV:
                break
        elif kind == b"moov":
            moov = (start, end)
    if moov is None:
        raise r.error("no 'moov' box (the index): the file is cut short or not an MP4/MOV")
    tracks: list[tuple[int, int]] = []
    fragmented = False
    for kind, start, end in _boxes(r, moov[0], moov[1], "'moov'"):
        if kind == b"trak":
            tracks.append((start, end))
        elif kind == b"mvex":
            fragmented = True
    for start, end in tracks:
        boxes = _locate(r, start, end, "'trak'")
        hdlr = boxes.get(b"mdia/hdlr")
        # hdlr payload: version/flags, pre_defined (QuickTime: component type), handler type.
        if hdlr and r.read(hdlr[0] + 8, 4) == b"vide":
            return _iso_video(r, boxes, fragmented)
    raise r.error(f"no video track among {len(tracks)} track(s) (no 'trak' whose handler is 'vide')")


def _rotation(matrix: tuple[int, ...]) -> int | None:
    """Clockwise display rotation of a tkhd matrix (a b u / c d v / x y w, 16.16 fixed point)."""
    a, b, _, c, d = matrix[:5]
    one = 1 << 16
    for degrees, abcd in (
        (0, (one, 0, 0, one)),
        (90, (0, one, -one, 0)),
        (180, (-one, 0, 0, -one)),
        (270, (0, -one, one, 0)),
    ):
        if (a, b, c, d) == abcd:
            return degrees
    return None  # a flip, a scale or an odd angle


def _mdhd(data: bytes) -> tuple[int | None, int | None]:
    """(timescale, duration) of an mdhd payload; None where missing or marked unknown (all ones)."""
    if data[:1] == b"\x01" and len(data) >= 32:
        timescale, duration = struct.unpack_from(">IQ", data, 20)
        unknown = (1 << 64) - 1
    elif data[:1] == b"\x00" and len(data) >= 20:
        timescale, duration = struct.unpack_from(">II", data, 12)
        unknown = (1 << 32) - 1
    else:
        return None, None
    return timescale or None, None if duration == unknown else duration


def _stts(r: _Reader, where: tuple[int, int]) -> tuple[int, int] | None:
    """(frames, total duration in timescale units) from the stts table; None when it is too long to read."""
    head = r.read(where[0], 8)
    if len(head) < 8:
        raise r.error("'stts' box too short for its entry count")
    (entries,) = struct.unpack_from(">I", head, 4)
    room = (where[1] - where[0] - 8) // 8
    if entries > room:
        raise r.error(f"'stts' lists {entries} entries but has room for {room}")
    if entries > STTS_MAX_ENTRIES:
        return None
    frames = ticks = 0
    for count, delta in struct.iter_unpack(">II", r.read(where[0] + 8, entries * 8)):
        frames += count
        ticks += count * delta
    return frames, ticks


def _iso_video(r: _Reader, boxes: dict[bytes, tuple[int, int]], fragmented: bool) -> VideoInfo:
    width = height = None
    rotation: int | None = 0
    tkhd = _payload(r, boxes, b"tkhd", 96)
    offset = 52 if tkhd[:1] == b"\x01" else 40  # the matrix follows the version's time fields
    if len(tkhd) >= offset + 44:
        rotation = _rotation(struct.unpack_from(">9i", tkhd, offset))
        w, h = struct.unpack_from(">II", tkhd, offset + 36)
        width, height = (w >> 16) or None, (h >> 16) or None
    stsd = _payload(r, boxes, _STBL + b"stsd", 44)
    # First sample entry: size, format, 6 reserved, data ref index, 16 bytes of pre_defined, then width, height.
    if len(stsd) >= 44 and struct.unpack_from(">II", stsd, 4)[0] >= 1 and struct.unpack_from(">I", stsd, 8)[0] >= 36:
        w, h = struct.unpack_from(">HH", stsd, 40)
        if w and h:
            width, height = w, h
    timescale, media_duration = _mdhd(_payload(r, boxes, b"mdia/mdhd", 32))
    has_stts = _STBL + b"stts" in boxes
    counted = _stts(r, boxes[_STBL + b"stts"]) if has_stts else None
    frames, ticks = counted if counted else (None, None)
    if not frames:
        sizes = boxes.get(_STBL + b"stsz") or boxes.get(_STBL + b"stz2")
        data = r.read(sizes[0], 12) if sizes else b""
        if len(data) == 12:
            (frames,) = struct.unpack_from(">I", data, 8)
    fps = None
    estimated = False
    if frames and timescale and ticks:
        fps = float(Fraction(frames * timescale, ticks))
    elif frames and timescale and media_duration:
        fps = frames * timescale / media_duration
        estimated = True
    notes = []
    if not frames and fragmented:
        frames, fps = None, None
        notes.append("fragmented MP4: the frames are listed per fragment ('moof'), which is not read")
    elif frames == 0:
        notes.append("the video track holds no frames")
    elif frames is None:
        notes.append("no sample table ('stts' / 'stsz'): frame count unknown")
    elif estimated:
        why = "is too long to read" if has_stts else "is missing"
        notes.append(f"frame rate estimated from the track duration (the 'stts' table {why})")
    if rotation is None:
        notes.append("the track matrix is not a plain rotation (flipped or scaled)")
    if timescale and media_duration is not None:
        duration: float | None = media_duration / timescale
    else:
        duration = ticks / timescale if ticks and timescale else None
    return VideoInfo(
        container="mp4",
        width=width,
        height=height,
        frames=frames,
        fps=fps,
        duration=duration,
        frames_estimated=estimated,
        rotation=rotation,
        note="; ".join(notes),
    )


# ---- Matroska / WebM (EBML) --------------------------------------------------------------------------------


def _element_header(r: _Reader, buf: bytes, pos: int, end: int, where: str) -> tuple[int, int, int | None]:
    """(id, data offset, data size or None for an unknown size) of the element at buf[pos:end]."""
    if pos >= end:
        raise r.error(f"truncated: {where} ends inside an element header")
    first = buf[pos]
    id_len = 9 - first.bit_length()
    if first == 0 or id_len > 4:
        raise r.error(f"invalid EBML element id (byte 0x{first:02x}) in {where}")
    if pos + id_len >= end:
        raise r.error(f"truncated: {where} ends inside an element header")
    element = int.from_bytes(buf[pos : pos + id_len], "big")
    pos += id_len
    first = buf[pos]
    size_len = 9 - first.bit_length()
    if first == 0:
        raise r.error(f"invalid EBML size (byte 0x00) for element 0x{element:X} in {where}")
    if pos + size_len > end:
        raise r.error(f"truncated: {where} ends inside the size of element 0x{element:X}")
    ones = (1 << (7 * size_len)) - 1
    size = int.from_bytes(buf[pos : pos + size_len], "big") & ones
    return element, pos + size_len, None if size == ones else size


def _file_element(r: _Reader, pos: int, where: str) -> tuple[int, int, int | None]:
    head = r.read(pos, 12)
    element, data, size = _element_header(r, head, 0, len(head), where)
    return element, pos + data, size


def _children(r: _Reader, buf: bytes, start: int, end: int, where: str) -> Iterator[tuple[int, int, int]]:
    """(id, data start, data end) of each element in buf[start:end]; an unknown size runs to `end`."""
    pos = start
    for _ in range(MAX_CHILDREN):
        if pos >= end:
            return
        element, data, size = _element_header(r, buf, pos, end, where)
        stop = end if size is None else data + size
        if stop > end:
            raise r.error(f"element 0x{element:X} in {where} declares {size} bytes, past the end of {where}")
        yield element, data, stop
        pos = stop
    raise r.error(f"more than {MAX_CHILDREN} elements in {where}; not a plausible Matroska file")


def _uint(r: _Reader, data: bytes, what: str) -> int:
    if len(data) > 8:
        raise r.error(f"{what}: an unsigned integer of {len(data)} bytes")
    return int.from_bytes(data, "big")


def _float(r: _Reader, data: bytes, what: str) -> float:
    if len(data) == 0:
        return 0.0
    if len(data) not in (4, 8):
        raise r.error(f"{what}: a float of {len(data)} bytes")
    return struct.unpack(">f" if len(data) == 4 else ">d", data)[0]


def _element_bytes(r: _Reader, element: int, data: int, size: int | None, end: int, name: str) -> bytes:
    if size is None:
        raise r.error(f"{name} element of unknown size (Matroska allows that only for Segment and Cluster)")
    if size > MKV_ELEMENT_MAX:
        raise r.error(f"{name} element of {size} bytes is too large for a header")
    if data + size > end:
        raise r.error(f"truncated: {name} element at byte {data} declares {size} bytes past the Segment's end")
    return r.read(data, size)


def _segment(r: _Reader) -> tuple[str, int, int]:
    """(DocType, Segment data start, Segment data end) after checking the EBML header."""
    element, data, size = _file_element(r, 0, "the file")
    if element != _EBML or size is None or size > 4096:
        raise r.error(f"EBML header of {'unknown' if size is None else size} bytes: not a Matroska file")
    header = r.read(data, size)
    if len(header) < size:
        raise r.error("truncated: the file ends inside its EBML header")
    doctype = "matroska"
    for child, s, e in _children(r, header, 0, size, "the EBML header"):
        if child == _DOCTYPE:
            doctype = header[s:e].rstrip(b"\0").decode("ascii", "replace") or doctype
    pos = data + size
    for _ in range(MAX_CHILDREN):
        if pos >= r.size:
            raise r.error("no Segment element: the file is cut short or not a Matroska file")
        element, data, size = _file_element(r, pos, "the file")
        if element == _SEGMENT:
            if size is None:  # live recordings: the Segment runs to the end of the file
                return doctype, data, r.size
            if data + size > r.size:
                raise r.error(
                    f"truncated: the Segment declares {size} bytes, the file holds {r.size - data} after its header"
                )
            return doctype, data, data + size
        if size is None:
            raise r.error(f"top-level element 0x{element:X} of unknown size before the Segment")
        pos = data + size
    raise r.error(f"more than {MAX_CHILDREN} elements before the Segment; not a plausible Matroska file")


def _seek_entries(r: _Reader, seekhead: bytes) -> Iterator[tuple[int, int]]:
    """(element id, position from the Segment's data start) of each SeekHead entry."""
    for child, s, e in _children(r, seekhead, 0, len(seekhead), "the SeekHead"):
        if child != _SEEK:
            continue
        target = position = None
        for field, fs, fe in _children(r, seekhead, s, e, "a Seek entry"):
            if field == _SEEK_ID:
                target = int.from_bytes(seekhead[fs:fe], "big")
            elif field == _SEEK_POS:
                position = _uint(r, seekhead[fs:fe], "SeekPosition")
        if target is not None and position is not None:
            yield target, position


def _segment_parts(r: _Reader, start: int, end: int) -> dict[int, bytes]:
    """The Info and Tracks elements' bytes: read in place before the first Cluster, else found via the SeekHead."""
    names = {_INFO: "Info", _TRACKS: "Tracks", _SEEKHEAD: "SeekHead"}
    parts: dict[int, bytes] = {}
    pos = start
    for _ in range(MAX_CHILDREN):
        if pos >= end or (_INFO in parts and _TRACKS in parts):
            break
        element, data, size = _file_element(r, pos, "the Segment")
        if element == _CLUSTER:
            break
        if element in names and element not in parts:
            parts[element] = _element_bytes(r, element, data, size, end, names[element])
        if size is None:
            break  # an unknown-size element ends only where its parent does: nothing further can be found
        pos = data + size
    if _SEEKHEAD in parts:
        for target, offset in _seek_entries(r, parts[_SEEKHEAD]):
            if target in (_INFO, _TRACKS) and target not in parts and start + offset < end:
                element, data, size = _file_element(r, start + offset, "the Segment")
                if element == target:
                    parts[target] = _element_bytes(r, element, data, size, end, names[target])
    return parts


def _mkv_video_track(r: _Reader, tracks: bytes) -> tuple[int | None, int | None, int | None]:
    """(PixelWidth, PixelHeight, DefaultDuration in ns) of the first video TrackEntry."""
    for child, s, e in _children(r, tracks, 0, len(tracks), "Tracks"):
        if child != _TRACK_ENTRY:
            continue
        kind = width = height = default_duration = None
        for field, fs, fe in _children(r, tracks, s, e, "a TrackEntry"):
            if field == _TRACK_TYPE:
                kind = _uint(r, tracks[fs:fe], "TrackType")
            elif field == _DEFAULT_DURATION:
                default_duration = _uint(r, tracks[fs:fe], "DefaultDuration") or None
            elif field == _VIDEO:
                for v, vs, ve in _children(r, tracks, fs, fe, "a Video element"):
                    if v == _PIXEL_WIDTH:
                        width = _uint(r, tracks[vs:ve], "PixelWidth") or None
                    elif v == _PIXEL_HEIGHT:
                        height = _uint(r, tracks[vs:ve], "PixelHeight") or None
        if kind == _TRACK_TYPE_VIDEO:
            return width, height, default_duration
    raise r.error("no video track (no TrackEntry with TrackType 1)")


def _matroska(r: _Reader) -> VideoInfo:
    doctype, start, end = _segment(r)
    parts = _segment_parts(r, start, end)
    if _TRACKS not in parts:
        raise r.error("no Tracks element before the first Cluster, nor one the SeekHead points to")
    width, height, default_duration = _mkv_video_track(r, parts[_TRACKS])
    scale, duration_units = 1_000_000, None
    info = parts.get(_INFO, b"")
    for child, s, e in _children(r, info, 0, len(info), "Info"):
        if child == _TIMESTAMP_SCALE:
            scale = _uint(r, info[s:e], "TimestampScale") or scale
        elif child == _DURATION:
            duration_units = _float(r, info[s:e], "Duration")
    duration = duration_units * scale / 1e9 if duration_units is not None else None
    fps = 1e9 / default_duration if default_duration else None
    # A corrupt float (NaN, infinite, negative, absurdly long) must read as "unknown", not as a frame count.
    bad_duration = duration is not None and not (0 < duration and math.isfinite(duration * (fps or 1.0)))
    if bad_duration:
        duration = None
    frames = round(duration * fps) if duration and fps else None
    if bad_duration:
        note = f"the Segment Info Duration is {duration_units}, not a positive number: frame count unknown"
    elif duration is None:
        note = "no Duration in the Segment Info (usual for browser-recorded WebM): frame count unknown"
    elif fps is None:
        note = "no DefaultDuration on the video track: frame rate and frame count unknown"
    else:
        note = "Matroska stores no frame count: frames = duration x frame rate"
    return VideoInfo(
        container=doctype,
        width=width,
        height=height,
        frames=frames,
        fps=fps,
        duration=duration,
        frames_estimated=frames is not None,
        note=note,
    )
