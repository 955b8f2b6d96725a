"""TOML files that round-trip byte for byte: load, read/write values by key path, find a key's line.

A key path is dotted with list indexes, e.g. `model.transformer_path`, `directory[0].path`,
`optimizer.betas[1]`. Everything here keeps comments, order and formatting (tomlkit).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError as TomlKitParseError
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, String, StringType

from profiles.errors import ProfileError, ProfileParseError

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
MAX_PROFILE_BYTES = 4 * 1024 * 1024


def split_keypath(keypath: str) -> list[str | int]:
    """`directory[0].path` -> ['directory', 0, 'path']."""
    parts: list[str | int] = []
    for name, index in _SEGMENT.findall(keypath):
        parts.append(int(index) if index else name)
    return parts


def join_keypath(parts: list[str | int] | tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_text(path: Path) -> str:
    """Read a TOML file as text, refusing binaries and unreadable files with a clear message."""
    try:
        if path.is_dir():
            raise ProfileError(f"{path}: is a directory, expected a TOML file")
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path}: {size} bytes is too large for a profile (limit {MAX_PROFILE_BYTES})")
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ProfileError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise ProfileError(f"{path}: permission denied (cannot read the file)") from exc
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if b"\x00" in raw[:8192]:
        raise ProfileParseError(str(path), None, "binary file, expected a TOML text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProfileParseError(str(path), line, "not valid UTF-8 text, expected a TOML text file") from exc


def parse_text(text: str, source: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TomlKitParseError as exc:
        raise ProfileParseError(source, exc.line, f"invalid TOML: {exc}") from exc
    except TOMLKitError as exc:
        raise ProfileParseError(source, None, f"invalid TOML: {exc}") from exc


@dataclass
class TomlFile:
    """One TOML file: its document (which keeps formatting) and where it lives."""

    doc: tomlkit.TOMLDocument
    path: Path | None = None
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path | str) -> TomlFile:
        path = Path(path)
        text = read_text(path)
        return cls(doc=parse_text(text, str(path)), path=path, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<memory>", path: Path | None = None) -> TomlFile:
        return cls(doc=parse_text(text, source), path=path, source=source)

    def dumps(self) -> str:
        return tomlkit.dumps(self.doc)

    def data(self) -> dict[str, Any]:
        """Plain Python values (no tomlkit wrappers) for validation and computation."""
        return self.doc.unwrap()

    def get(self, keypath: str, default: Any = None) -> Any:
        node: Any = self.doc
        for part in split_keypath(keypath):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node.unwrap() if hasattr(node, "unwrap") else node

    def has(self, keypath: str) -> bool:
        sentinel = object()
        return self.get(keypath, sentinel) is not sentinel

    def set(self, keypath: str, value: Any) -> None:
        """Set one value; only that line changes. Missing tables are created at the end.

        Raises ProfileError (and leaves the document as it was) when the path runs through a value that
        is not a table or an array, or would put a non-table into an array of tables.
        """
        parts = split_keypath(keypath)
        if not parts:
            raise ProfileError("empty key path")
        node: Any = self.doc
        for depth, part in enumerate(parts[:-1]):
            where = join_keypath(parts[: depth + 1])
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    raise ProfileError(f"{keypath}: {where} does not exist")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ProfileError(f"{keypath}: {join_keypath(parts[:depth])} is not a table")
            if part not in node:
                node[part] = tomlkit.table()
            node = node[part]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise ProfileError(f"{keypath}: no such array element")
            if isinstance(node, AoT) and not isinstance(value, dict):
                raise ProfileError(f"{keypath}: an entry of an array of tables must be a table")
        elif not isinstance(node, dict):
            raise ProfileError(f"{keypath}: {join_keypath(parts[:-1])} is not a table")
        if isinstance(last, str) and last in node:
            old = node[last]
            # Keep the trailing comment of a value we replace.
            comment = getattr(getattr(old, "trivia", None), "comment", "")
            node[last] = _quoted_like(old, value)
            if comment:
                new = node[last]
                if hasattr(new, "trivia"):
                    new.trivia.comment = comment
                    new.trivia.comment_ws = old.trivia.comment_ws
        else:
            node[last] = value

    def delete(self, keypath: str) -> bool:
        parts = split_keypath(keypath)
        node: Any = self.doc
        for part in parts[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return False
        try:
            del node[parts[-1]]
        except (KeyError, IndexError, TypeError):
            return False
        return True

    def line_of(self, keypath: str) -> int | None:
        """1-based line of a key (or of its table header when the key itself is absent)."""
        return find_line(self.dumps(), keypath)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_ASSIGN = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-.]+)\s*=""")


def _norm_key(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _statement_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line that starts a TOML statement.

    Skips continuation lines of multi-line arrays, inline tables and multi-line strings, so that a line
    like `    [1024, 1]` inside `micro_batch_size_per_gpu = [...]` is never mistaken for a table header.
    """
    depth = 0
    in_str: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if depth == 0 and in_str is None:
            yield lineno, line
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if in_str is not None:
                if in_str in ('"""', "'''") and line.startswith(in_str, i):
                    in_str, i = None, i + 3
                elif c == "\\" and in_str in ('"', '"""'):
                    i += 2
                else:
                    if c == in_str:
                        in_str = None
                    i += 1
                continue
            if c == "#":
                break
            if line.startswith('"""', i) or line.startswith("'''", i):
                in_str, i = line[i : i + 3], i + 3
                continue
            if c in "\"'":
                in_str = c
            elif c in "[{":
                depth += 1
            elif c in "]}":
                depth = max(0, depth - 1)
            i += 1
        if in_str in ('"', "'"):
            in_str = None  # a one-line string cannot continue on the next line


def find_line(text: str, keypath: str) -> int | None:
    """Locate `keypath` in TOML source text by scanning headers and assignments.

    Handles top-level keys, `[table]`, `[[array.of.tables]]` (by index) and dotted keys well enough to
    point a user at the right line. An index into a value (`optimizer.betas[1]`, `resolutions[2]`) points
    at the value's line; a key inside an inline table points at the line of the enclosing key. Falls back
    to the nearest enclosing table's header line.
    """
    parts = split_keypath(keypath)
    if parts and isinstance(parts[-1], int):
        as_table = _find_line(text, parts)  # `directory[1]`: the header of an array of tables
        if as_table is not None:
            return as_table
    element: int | None = None
    while parts and isinstance(last := parts[-1], int):
        parts.pop()
        element = last  # ends as the outermost index: the element of the array value
    found = _find_line(text, parts)
    if found is not None and element is not None:
        return _element_line(text, found, element) or found
    if found is None and len(parts) > 1:
        return find_line(text, join_keypath(parts[:-1]))
    return found


def _element_line(text: str, lineno: int, index: int) -> int | None:
    """The line where element `index` of the array assigned on line `lineno` starts (multi-line arrays)."""
    lines = text.splitlines()
    if not 0 < lineno <= len(lines):
        return None
    first = _ASSIGN.match(lines[lineno - 1])
    if first is None:
        return None
    depth, count, pending = 0, 0, False
    in_str: str | None = None
    for number in range(lineno, len(lines) + 1):
        line = lines[number - 1]
        i = first.end() if number == lineno else 0
        while i < len(line):
            c = line[i]
            if in_str is not None:
                if len(in_str) == 3 and line.startswith(in_str, i):
                    in_str, i = None, i + 3
                    continue
                if c == "\\" and in_str[0] == '"':
                    i += 2
                    continue
                if len(in_str) == 1 and c == in_str:
                    in_str = None
                i += 1
                continue
            if c == "#":
                break
            if depth == 1 and pending and not c.isspace() and c not in ",]":
                if count == index:
                    return number
                pending = False
            if line.startswith('"""', i) or line.startswith("\'\'\'", i):
                in_str, i = line[i : i + 3], i + 3
                continue
            if c in "\"\'":
                in_str = c
            elif c in "[{":
                depth += 1
                if depth == 1:
                    pending = True
            elif c in "]}":
                depth -= 1
                if depth <= 0:
                    return None
            elif c == "," and depth == 1:
                count += 1
                pending = True
            i += 1
        if in_str is not None and len(in_str) == 1:
            in_str = None
        if depth == 0:
            return None
    return None


def _find_line(text: str, parts: list[str | int]) -> int | None:
    names = [p for p in parts if isinstance(p, str)]
    if not names:
        return None
    # The table the key lives in, as (path-without-indexes, array index or None), and the leaf key.
    table_parts: list[str] = []
    array_index: int | None = None
    leaf: str | None = None
    for i, part in enumerate(parts):
        if isinstance(part, int):
            array_index = part
            continue
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        if nxt is None:
            leaf = part
        else:
            table_parts.append(part)
    current: list[str] = []
    current_array_counts: dict[str, int] = {}
    current_index: int | None = None
    header_line: int | None = None if table_parts else 0
    target_table = ".".join(table_parts)
    for lineno, line in _statement_lines(text):
        header = _HEADER.match(line)
        if header and not _ASSIGN.match(line):
            name = ".".join(_norm_key(p) for p in header.group(2).split("."))
            current = name.split(".") if name else []
            if header.group(1) == "[[":
                current_index = current_array_counts.get(name, -1) + 1
                current_array_counts[name] = current_index
            else:
                current_index = None
            if name == target_table and (array_index is None or current_index == array_index):
                header_line = lineno
                if leaf is None:
                    return lineno
            if leaf is not None and name == ".".join(names) and array_index is None:
                return lineno  # the key is itself a table: `model` -> `[model]`, `directory` -> first `[[directory]]`
            continue
        assign = _ASSIGN.match(line)
        if not assign or leaf is None:
            continue
        key = ".".join(_norm_key(p) for p in assign.group(1).split("."))
        full = ".".join(current + [key]) if current else key
        in_target = ".".join(current) == target_table and (
            array_index is None or current_index == array_index or not current_array_counts
        )
        if in_target and key == leaf:
            return lineno
        if full == ".".join(names) and (array_index is None or current_index == array_index):
            return lineno
    return header_line or None


@dataclass
class Profile:
    """A training profile: the main TOML and, when found, the dataset TOML it references."""

    main: TomlFile
    dataset: TomlFile | None = None
    eval_datasets: dict[str, TomlFile] = field(default_factory=dict)
    name: str | None = None

    @property
    def dataset_ref(self) -> str | None:
        ref = self.main.get("dataset")
        return ref if isinstance(ref, str) else None

    @property
    def model_type(self) -> str | None:
        value = self.main.get("model.type")
        return value if isinstance(value, str) else None


def resolve_ref(ref: str, main_path: Path | None, extra_roots: list[Path] | None = None) -> Path | None:
    """Find a file referenced from a main TOML.

    diffusion-pipe resolves relative paths against the working directory of train.py (usually its
    checkout), so we try: absolute, next to the main file, the current directory, then extra roots
    (the configured diffusion-pipe checkout).
    """
    candidate = Path(ref).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    roots: list[Path] = []
    if main_path is not None:
        roots.append(main_path.parent)
    roots.append(Path.cwd())
    roots.extend(extra_roots or [])
    for root in roots:
        path = root / candidate
        if path.exists():
            return path
    return None


def load_profile(path: Path | str, extra_roots: list[Path] | None = None) -> Profile:
    """Load a main TOML and the dataset / eval dataset TOMLs it references (when they exist).

    A missing dataset file is not an error here: validation reports it with file and line.
    """
    main = TomlFile.load(path)
    profile = Profile(main=main)
    ref = profile.dataset_ref
    if ref:
        found = resolve_ref(ref, main.path, extra_roots)
        if found is not None and found.is_file():
            profile.dataset = TomlFile.load(found)
    evals = main.get("eval_datasets") or []
    if isinstance(evals, list):
        for entry in evals:
            # diffusion-pipe also accepts a bare path string (it names that eval set `eval<i>`).
            if isinstance(entry, str):
                entry = {"config": entry}
            if isinstance(entry, dict) and isinstance(entry.get("config"), str):
                found = resolve_ref(entry["config"], main.path, extra_roots)
                if found is not None and found.is_file():
                    profile.eval_datasets[str(entry.get("name", entry["config"]))] = TomlFile.load(found)
    return profile


# Which quoting a new string may take: literal strings cannot hold a quote of their own kind or (single-line) a
# newline; basic strings escape anything.
_LITERAL_FORBIDS: dict[StringType, tuple[str, ...]] = {
    StringType.SLL: ("'", "\n", "\r"),
    StringType.MLL: ("'''",),
}


# How each kind of string opens, longest first (String.type is not public before tomlkit 0.14).
_OPENINGS: tuple[tuple[str, StringType], ...] = (
    ("'''", StringType.MLL),
    ('"""', StringType.MLB),
    ("'", StringType.SLL),
    ('"', StringType.SLB),
)


def _quoted_like(old: Any, value: Any) -> Any:
    """A string replacing a string keeps its quoting ('x' stays 'x'), so an edit changes only the value.

    tomlkit 0.15 does this itself and 0.13/0.14 wrote every new string double-quoted; doing it here makes a
    saved profile's bytes the same whichever tomlkit is installed.
    """
    if not isinstance(old, String) or not isinstance(value, str) or isinstance(value, String):
        return value
    raw = old.as_string()
    kind = next((k for prefix, k in _OPENINGS if raw.startswith(prefix)), StringType.SLB)
    if any(bad in value for bad in _LITERAL_FORBIDS.get(kind, ())):
        return value
    return String.from_raw(value, kind)

