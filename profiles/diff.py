"""Semantic diff of two profiles: key by key across the main and dataset files (and eval datasets).

Formatting and comments are ignored; values are compared as data. A list of plain values is one value
(`resolutions = [512]` vs `[1024]` is one change); arrays of tables are compared entry by entry
(`directory[0].path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from profiles.document import Profile, TomlFile, join_keypath

ABSENT = "<absent>"


@dataclass(frozen=True)
class DiffEntry:
    file: str  # "main", "dataset" or "eval:<name>"
    key: str
    left: Any  # None when absent on that side (see left_present)
    right: Any
    left_present: bool = True
    right_present: bool = True

    @property
    def change(self) -> str:
        if not self.left_present:
            return "added"
        if not self.right_present:
            return "removed"
        return "changed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "key": self.key,
            "change": self.change,
            "left": self.left if self.left_present else None,
            "right": self.right if self.right_present else None,
        }


def _is_table_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, dict) for v in value)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{'model': {'type': 'x'}} -> {'model.type': 'x'}; arrays of tables by index."""
    out: dict[str, Any] = {}

    def walk(node: Any, parts: list[str | int]) -> None:
        if isinstance(node, dict) and (node or not parts):
            for key, value in node.items():
                walk(value, [*parts, str(key)])
        elif isinstance(node, list) and _is_table_list(node):
            for index, value in enumerate(node):
                walk(value, [*parts, index])
        else:
            out[join_keypath(parts)] = node

    walk(data, [])
    return out


def _files(profile: Profile) -> dict[str, TomlFile]:
    files: dict[str, TomlFile] = {"main": profile.main}
    if profile.dataset is not None:
        files["dataset"] = profile.dataset
    for name, toml in profile.eval_datasets.items():
        files[f"eval:{name}"] = toml
    return files


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; TOML tells them apart, so the diff does too.
    return type(a) is type(b) and a == b


def diff_profiles(left: Profile, right: Profile) -> list[DiffEntry]:
    """Every key whose value differs, grouped by file (main first), in key order."""
    lf, rf = _files(left), _files(right)
    order = ["main", "dataset"] + sorted(k for k in set(lf) | set(rf) if k not in ("main", "dataset"))
    entries: list[DiffEntry] = []
    for fname in order:
        a = flatten(lf[fname].data()) if fname in lf else {}
        b = flatten(rf[fname].data()) if fname in rf else {}
        for key in sorted(set(a) | set(b)):
            if key in a and key in b and _same(a[key], b[key]):
                continue
            entries.append(DiffEntry(fname, key, a.get(key), b.get(key), key in a, key in b))
    return entries


def render_value(value: Any, present: bool = True) -> str:
    if not present:
        return ABSENT
    return json.dumps(value, default=str, ensure_ascii=False)
