"""File names and caption text made safe to print: one name can never become two lines or a terminal command.

A file name may hold any byte but `/` and NUL: a newline in one forged lines of the dry-run diff and of the scan
listing, an escape sequence could repaint the terminal, and bytes that are not UTF-8 (decoded by Python as lone
surrogates) made print() raise. Names are printed as they are when they hold none of that, else quoted the way
git quotes paths: `"a\\nb.png"` (backslash escapes, `"` and `\\` escaped too, so a quoted name is unambiguous).
"""

from __future__ import annotations

import re

# C0/C1 controls and DEL, line/paragraph separators, bidi overrides and marks (they reorder what is shown),
# and lone surrogates (bytes that were not UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str, keep_tab: bool = False) -> str:
    """`text` with every unsafe character written as a backslash escape (tabs kept when asked)."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(
        lambda m: m.group() if keep_tab and m.group() == "\t" else _escape_char(m.group()), text
    )


def quote_name(name: str) -> str:
    """The name as is when it is safe to print, else in double quotes with backslash escapes."""
    if not _UNSAFE.search(name):
        return name
    return '"' + escape(name.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def printable(line: str) -> str:
    """One output line made safe: embedded control characters escaped (tabs kept), nothing quoted."""
    return escape(line, keep_tab=True)
