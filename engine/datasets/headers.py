"""Image width and height from the first bytes of the file, without decoding pixels.

PNG, JPEG, GIF, BMP and WebP are parsed here in pure Python (one open + one small read; a JPEG whose EXIF block
pushes the frame header further in costs a second positioned read). Any other format, or a header these parsers do
not recognise, falls back to PIL's lazy `Image.open`, so the answer always equals PIL's `Image.size` (a test
compares the two). A 100k-image scan is dominated by these reads, which is why PIL is not the first choice: its
`Image.open` costs ~10x more per file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from PIL import Image

HEAD_BYTES = 512
# JPEG frame markers that carry the image size (SOF0..SOF15 minus DHT, JPG and DAC, which are not frames).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


class EmptyImageError(ValueError):
    """The file has zero bytes."""


def _png(head: bytes) -> tuple[int, int] | None:
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    return struct.unpack(">II", head[16:24])


def _gif(head: bytes) -> tuple[int, int] | None:
    if head[:6] not in (b"GIF87a", b"GIF89a") or len(head) < 10:
        return None
    return struct.unpack("<HH", head[6:10])


def _bmp(head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"BM" or len(head) < 26:
        return None
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        return struct.unpack("<HH", head[18:22])
    if dib < 40:
        return None
    width, height = struct.unpack("<ii", head[18:26])
    return width, abs(height)  # a negative height only means rows are stored top-down


def _webp(head: bytes) -> tuple[int, int] | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg(head: bytes, fd: int) -> tuple[int, int] | None:
    if head[:2] != b"\xff\xd8":
        return None
    buf, base, pos = head, 0, 2  # buf holds the file's bytes from offset `base`

    def need(n: int) -> bool:
        nonlocal buf, base
        if pos + n <= base + len(buf):
            return True
        buf, base = os.pread(fd, max(n, 4096), pos), pos
        return len(buf) >= n

    while True:
        if not need(2):
            return None
        i = pos - base
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker in _STANDALONE:
            continue
        if marker == 0xD9 or not need(2):  # end of image before any frame
            return None
        i = pos - base
        (length,) = struct.unpack(">H", buf[i : i + 2])
        if marker in _SOF:
            if not need(7):
                return None
            i = pos - base
            height, width = struct.unpack(">HH", buf[i + 3 : i + 7])
            return width, height
        if length < 2:
            return None
        pos += length


_PARSERS = (_png, _gif, _bmp, _webp)


def _pil_size(path: Path | str) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def read_image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the header only; raises OSError/ValueError (PIL's errors included) for broken files."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.read(fd, HEAD_BYTES)
        if not head:
            raise EmptyImageError(f"{path}: zero-byte file")
        size = _jpeg(head, fd) if head[:2] == b"\xff\xd8" else None
        if size is None:
            for parse in _PARSERS:
                size = parse(head)
                if size is not None:
                    break
    finally:
        os.close(fd)
    if size is None or size[0] <= 0 or size[1] <= 0:
        # Unknown format, or a header ours cannot read: PIL decides (and names the error).
        return _pil_size(path)
    if size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
        # Same guard PIL's open applies, so a decompression bomb is "unreadable" here as it would be in training.
        raise Image.DecompressionBombError(f"{path}: {size[0]}x{size[1]} pixels exceeds the safety limit")
    return size
