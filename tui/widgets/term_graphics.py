"""Terminal graphics for the image preview: which protocol to use, and the kitty and sixel encoders.

Pure functions, no Textual: the preview widget (tui.widgets.image_preview) decides when to write what.

- Detection is conservative: kitty graphics only where the terminal is known to draw kitty Unicode
  placeholders (kitty, Ghostty), sixel only where it is known to draw sixel (foot, mlterm, WezTerm), and
  half blocks everywhere else, tmux and GNU screen included: graphics there need a passthrough setting
  (`allow-passthrough on`) or a sixel-enabled tmux >= 3.4 that dpdeck cannot see from the environment.
  A forced protocol (`DPDECK_IMAGE_PROTOCOL`, else the `tui.image_protocol` setting) is always honoured.
- Kitty: the image is transmitted once with a *virtual* placement (`U=1`), then shown by ordinary text
  cells of U+10EEEE whose foreground colour is the image id and whose combining marks give the cell's row
  and column. The cells are plain text to Textual, so its layout, overdraw and repaint need no help.
  Written here, not taken from textual-image: its kitty renderable writes the transmission to sys.__stdout__
  itself, from the render path, outside Textual's driver (so out of order with frames) and again per render;
  dpdeck's goes through the driver once per image, as raw RGB on a local terminal (no PNG encode).
- Sixel: textual-image's encoder, on an image quantised once and cut into cell rows. Sixel is pixels, not
  text: each row's sixel travels inside that row's strip as a zero-width control segment, so Textual draws it
  whenever (and only when) it writes that row, with no hook into its frames.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

HALFBLOCK, KITTY, SIXEL = "halfblock", "kitty", "sixel"
PROTOCOLS = ("auto", HALFBLOCK, KITTY, SIXEL)
ENV_OVERRIDE = "DPDECK_IMAGE_PROTOCOL"
SETTING = "tui.image_protocol"
# Cell size in pixels where the terminal does not report one (TIOCGWINSZ gives 0 in many terminals).
DEFAULT_CELL = (10, 20)


@dataclass(frozen=True)
class Choice:
    protocol: str  # HALFBLOCK | KITTY | SIXEL
    forced: bool  # set by the user: honoured even where detection would say no
    tmux: bool  # escapes that tmux must pass through get wrapped
    reason: str  # shown in docs and logs: why this protocol


def choose(setting: str | None, env: Mapping[str, str]) -> Choice:
    """The protocol for this terminal: the env override, else the setting, else detection ("auto")."""
    tmux = bool(env.get("TMUX"))
    for source, raw in ((ENV_OVERRIDE, env.get(ENV_OVERRIDE)), (SETTING, setting)):
        value = (raw or "").strip().lower()
        if value and value != "auto":
            if value in PROTOCOLS:
                return Choice(value, True, tmux, f"forced by {source}")
            return Choice(HALFBLOCK, False, tmux, f"{source}={raw!r} is not one of {', '.join(PROTOCOLS)}")
        if value == "auto":
            break  # an explicit "auto" in the env var overrides a forced setting
    protocol, reason = detect(env)
    return Choice(protocol, False, tmux, reason)


def detect(env: Mapping[str, str]) -> tuple[str, str]:
    """(protocol, reason) from the environment alone; anything unknown gets half blocks."""
    term = env.get("TERM", "").lower()
    program = env.get("TERM_PROGRAM", "").lower()
    if env.get("TMUX") or env.get("STY") or term.startswith(("tmux", "screen")):
        return (
            HALFBLOCK,
            "inside tmux/screen: graphics need passthrough, so set tui.image_protocol to force them",
        )
    if term == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return KITTY, "kitty"
    if term == "xterm-ghostty" or program == "ghostty" or env.get("GHOSTTY_RESOURCES_DIR"):
        return KITTY, "Ghostty"
    # WezTerm speaks kitty graphics but does not draw Unicode placeholders; its sixel is solid.
    if program == "wezterm" or term == "wezterm" or env.get("WEZTERM_EXECUTABLE"):
        return SIXEL, "WezTerm"
    if term.startswith("foot"):
        return SIXEL, "foot"
    if term.startswith("mlterm") or env.get("MLTERM"):
        return SIXEL, "mlterm"
    return HALFBLOCK, f"no graphics known for TERM={term or '?'} TERM_PROGRAM={program or '?'}"


def tmux_passthrough(sequence: str) -> str:
    """Wrap an escape sequence so tmux hands it to the outer terminal (needs `allow-passthrough on`)."""
    return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"


def remote(env: Mapping[str, str]) -> bool:
    """Whether the terminal is at the other end of ssh (bytes cost more than encode time there)."""
    return any(env.get(name) for name in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"))


def cell_pixels(fd: int) -> tuple[int, int] | None:
    """(width, height) of one cell in pixels from TIOCGWINSZ, or None where the terminal reports none."""
    try:
        import fcntl
        import struct
        import termios

        rows, cols, xpixel, ypixel = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (ImportError, OSError, ValueError):
        return None
    if not (rows and cols and xpixel and ypixel):
        return None
    return max(1, xpixel // cols), max(1, ypixel // rows)


def fit_pixels(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled (up or down, aspect kept) to fit `box`, at least 1x1."""
    w, h = size
    scale = min(box[0] / w, box[1] / h)
    return max(1, min(box[0], round(w * scale))), max(1, min(box[1], round(h * scale)))


def cells_for(pixels: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
    """Cells (columns, rows) that an image of `pixels` covers."""
    return math.ceil(pixels[0] / cell[0]), math.ceil(pixels[1] / cell[1])


# --- kitty ------------------------------------------------------------------------------------------------

PLACEHOLDER = "\U0010eeee"
KITTY_CHUNK = 4096  # base64 bytes per escape; a multiple of 4 as the protocol requires of all but the last
# Row/column diacritics of kitty's Unicode placeholders (gen/rowcolumn-diacritics.txt in kitty): combining
# marks of class 230 without decompositions, from Unicode 6.0. Index n is the number n.
_DIACRITIC_RANGES = (
    (0x0305, 0x0305), (0x030D, 0x030E), (0x0310, 0x0310), (0x0312, 0x0312), (0x033D, 0x033F),
    (0x0346, 0x0346), (0x034A, 0x034C), (0x0350, 0x0352), (0x0357, 0x0357), (0x035B, 0x035B),
    (0x0363, 0x036F), (0x0483, 0x0487), (0x0592, 0x0595), (0x0597, 0x0599), (0x059C, 0x05A1),
    (0x05A8, 0x05A9), (0x05AB, 0x05AC), (0x05AF, 0x05AF), (0x05C4, 0x05C4), (0x0610, 0x0617),
    (0x0657, 0x065B), (0x065D, 0x065E), (0x06D6, 0x06DC), (0x06DF, 0x06E2), (0x06E4, 0x06E4),
    (0x06E7, 0x06E8), (0x06EB, 0x06EC), (0x0730, 0x0730), (0x0732, 0x0733), (0x0735, 0x0736),
    (0x073A, 0x073A), (0x073D, 0x073D), (0x073F, 0x0741), (0x0743, 0x0743), (0x0745, 0x0745),
    (0x0747, 0x0747), (0x0749, 0x074A), (0x07EB, 0x07F1), (0x07F3, 0x07F3), (0x0816, 0x0819),
    (0x081B, 0x0823), (0x0825, 0x0827), (0x0829, 0x082D), (0x0951, 0x0951), (0x0953, 0x0954),
    (0x0F82, 0x0F83), (0x0F86, 0x0F87), (0x135D, 0x135F), (0x17DD, 0x17DD), (0x193A, 0x193A),
    (0x1A17, 0x1A17), (0x1A75, 0x1A7C), (0x1B6B, 0x1B6B), (0x1B6D, 0x1B73), (0x1CD0, 0x1CD2),
    (0x1CDA, 0x1CDB), (0x1CE0, 0x1CE0), (0x1DC0, 0x1DC1), (0x1DC3, 0x1DC9), (0x1DCB, 0x1DCC),
    (0x1DD1, 0x1DE6), (0x1DFE, 0x1DFE), (0x20D0, 0x20D1), (0x20D4, 0x20D7), (0x20DB, 0x20DC),
    (0x20E1, 0x20E1), (0x20E7, 0x20E7), (0x20E9, 0x20E9), (0x20F0, 0x20F0), (0x2CEF, 0x2CF1),
    (0x2DE0, 0x2DFF), (0xA66F, 0xA66F), (0xA67C, 0xA67D), (0xA6F0, 0xA6F1), (0xA8E0, 0xA8F1),
    (0xAAB0, 0xAAB0), (0xAAB2, 0xAAB3), (0xAAB7, 0xAAB8), (0xAABE, 0xAABF), (0xAAC1, 0xAAC1),
    (0xFE20, 0xFE26), (0x10A0F, 0x10A0F), (0x10A38, 0x10A38), (0x1D185, 0x1D189), (0x1D1AA, 0x1D1AD),
    (0x1D242, 0x1D244),
)  # fmt: skip
DIACRITICS = tuple(chr(c) for first, last in _DIACRITIC_RANGES for c in range(first, last + 1))
MAX_CELLS = len(DIACRITICS)  # a placement spans at most this many rows and columns
MAX_IMAGE_ID = (1 << 24) - 1  # the id travels as a 24-bit truecolour foreground


def id_rgb(image_id: int) -> tuple[int, int, int]:
    """The foreground colour that names image `image_id` (1..2^24-1) in placeholder cells."""
    return (image_id >> 16) & 0xFF, (image_id >> 8) & 0xFF, image_id & 0xFF


def placeholder_row(row: int, cols: int) -> str:
    """One row of placeholder cells; every cell carries both diacritics, so a cut line still maps right."""
    mark = DIACRITICS[row]
    return "".join(PLACEHOLDER + mark + DIACRITICS[col] for col in range(cols))


def kitty_transmit(
    pixels: bytes,
    image_id: int,
    cols: int,
    rows: int,
    *,
    size: tuple[int, int] | None = None,
    tmux: bool = False,
) -> str:
    """Transmit image `image_id` with a virtual placement of cols x rows cells, replies off (q=2).

    `pixels` is a PNG, or raw RGB of `size` (width, height). The terminal fits the image into the placement
    keeping its aspect ratio.
    """
    data = base64.standard_b64encode(pixels).decode("ascii")
    chunks = [data[i : i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    form = f"f=24,s={size[0]},v={size[1]}" if size else "f=100"
    parts = []
    for n, chunk in enumerate(chunks):
        more = int(n < len(chunks) - 1)
        # q=2 on every chunk: some kitty versions reply to continuation chunks that omit it.
        keys = (
            f"a=T,U=1,{form},t=d,i={image_id},c={cols},r={rows},C=1,q=2,m={more}"
            if n == 0
            else f"m={more},q=2"
        )
        escape = f"\x1b_G{keys};{chunk}\x1b\\"
        parts.append(tmux_passthrough(escape) if tmux else escape)
    return "".join(parts)


def kitty_delete(image_id: int, *, tmux: bool = False) -> str:
    """Delete image `image_id` and free its data in the terminal (its virtual placement goes with it)."""
    escape = f"\x1b_Ga=d,d=I,i={image_id},q=2\x1b\\"
    return tmux_passthrough(escape) if tmux else escape


def png_bytes(im: Image.Image) -> bytes:
    """PNG at the fastest compression: encoding time is on the key-to-preview path, bytes are cheap locally."""
    import io

    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=1)
    return out.getvalue()


# --- sixel ------------------------------------------------------------------------------------------------

# 128 colours: photos keep smooth gradients without dithering, and the encoder's cost grows with the colours
# present per 6-pixel band.
SIXEL_COLORS = 128
# textual-image writes P2=0 (unset pixels drawn in the background colour); dpdeck draws one slice per cell row
# (tui.widgets.image_preview), and a slice whose height is not a multiple of 6 must not blank the row below.
_LIBRARY_HEAD = '\x1bP0;0;0q"'
_TRANSPARENT_HEAD = '\x1bP0;1;0q"'


def sixel_quantize(im: Image.Image, colors: int = SIXEL_COLORS) -> Image.Image:
    """The image as a palette image of at most `colors` (<= 256) entries, without dithering.

    Done once per image, before it is cut into cell rows, so every row is drawn from the same palette.
    Dithering would break up the runs the encoding lives on. Fast octree: median cut costs 50x more.
    """
    return im.convert("RGB").quantize(
        colors=max(1, min(colors, 256)), method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )


def sixel_encode(palette_image: Image.Image, colors: int = 256) -> str:
    """A palette image (sixel_quantize's) as one sixel DCS sequence (textual-image's encoder): square pixels,
    unset pixels left transparent. A palette of at most `colors` entries is encoded as it is, not quantised
    again."""
    from textual_image._sixel import SixelOptions, image_to_sixels

    seq = image_to_sixels(palette_image, SixelOptions(colors=max(1, min(colors, 256))))
    if not seq.startswith(_LIBRARY_HEAD):
        raise RuntimeError(f"textual-image's sixel header changed: {seq[:12]!r} (expected {_LIBRARY_HEAD!r})")
    return _TRANSPARENT_HEAD + seq[len(_LIBRARY_HEAD) :]


def sixel_image(im: Image.Image, colors: int = SIXEL_COLORS) -> str:
    return sixel_encode(sixel_quantize(im, colors), colors)


def sixel_rows(im: Image.Image, cell_height: int, colors: int = SIXEL_COLORS) -> tuple[str, ...]:
    """The image as one sixel per cell row (`cell_height` pixels each, the last one shorter), one palette."""
    quantised = sixel_quantize(im, colors)
    w, h = quantised.size
    return tuple(
        sixel_encode(quantised.crop((0, top, w, min(h, top + cell_height))), colors)
        for top in range(0, h, max(1, cell_height))
    )
