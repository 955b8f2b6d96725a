"""Read-only TOML parsing: tomllib on 3.11+, its backport tomli on 3.10 (Ubuntu 22.04's Python).

Editing that must keep comments and layout goes through tomlkit (profiles.document); this is for data that
is only read, where tomllib is several times faster.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib as _parser  # novermin (guarded by the version check above)
else:  # the same parser, as a package (declared for python_version < '3.11')
    import tomli as _parser

TOMLDecodeError = _parser.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    table: dict[str, Any] = _parser.loads(text)
    return table


def load_file(path: Path) -> dict[str, Any]:
    """The file's table; OSError and TOMLDecodeError propagate so the caller can name the file."""
    return loads(path.read_text(encoding="utf-8"))
