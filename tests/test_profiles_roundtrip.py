"""Byte-for-byte round-trip of every template and every corpus config; one edit changes one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiles.document import TomlFile, find_line, load_profile
from profiles.templates import TEMPLATES_DIR

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.rglob("*.toml")) + sorted(TEMPLATES_DIR.rglob("*.toml"))
MAINS = sorted((CORPUS / "main").glob("*.toml")) + sorted(TEMPLATES_DIR.glob("*/main.toml"))


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(p.parents[1])) for p in paths]


def test_corpus_covers_every_model_type() -> None:
    from profiles.model_types import ALL_TYPES

    types = {load_profile(p).model_type for p in (CORPUS / "main").glob("*.toml")}
    assert types == set(ALL_TYPES)


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_load_dumps_is_byte_identical(path: Path) -> None:
    raw = path.read_bytes()
    assert TomlFile.load(path).dumps().encode("utf-8") == raw


@pytest.mark.parametrize("path", MAINS, ids=ids(MAINS))
def test_one_edit_changes_only_its_line(path: Path) -> None:
    toml = TomlFile.load(path)
    before = toml.dumps()
    for key, wanted in (("epochs", (7, 8)), ("model.dtype", ("float16", "float32")), ("optimizer.lr", (3e-4, 4e-4))):
        # A value the file does not hold already, so the edit has a line to change.
        value = next(v for v in wanted if toml.get(key) != v)
        edited = TomlFile.from_text(before)
        old_line = find_line(before, key)
        assert old_line is not None and edited.has(key)
        edited.set(key, value)
        after = edited.dumps()
        a, b = before.splitlines(), after.splitlines()
        assert len(a) == len(b), key
        diff = [i + 1 for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert diff == [old_line], (key, diff)
        assert TomlFile.from_text(after).get(key) == value
        # Comments and order survive: every other line is untouched.
        assert [x for i, x in enumerate(a) if i + 1 != old_line] == [
            y for i, y in enumerate(b) if i + 1 != old_line
        ]


@pytest.mark.parametrize("path", MAINS, ids=ids(MAINS))
def test_dataset_edit_changes_only_its_line(path: Path) -> None:
    profile = load_profile(path)
    assert profile.dataset is not None, f"{path}: dataset not found"
    before = profile.dataset.dumps()
    key = "directory[0].path"
    line = find_line(before, key)
    profile.dataset.set(key, "/elsewhere/images")
    after = profile.dataset.dumps()
    diff = [
        i + 1 for i, (x, y) in enumerate(zip(before.splitlines(), after.splitlines(), strict=False)) if x != y
    ]
    assert diff == [line] and len(before.splitlines()) == len(after.splitlines())


def test_trailing_comment_survives_a_value_change(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("epochs = 10  # long run\n[model]\ntype = 'sdxl'\n")
    toml = TomlFile.load(path)
    toml.set("epochs", 20)
    assert toml.dumps() == "epochs = 20  # long run\n[model]\ntype = 'sdxl'\n"


def test_delete_removes_only_that_key() -> None:
    path = TEMPLATES_DIR / "chroma-e6ai-512" / "main.toml"
    toml = TomlFile.load(path)
    before = toml.dumps().splitlines()
    line = find_line(toml.dumps(), "model.flux_shift")
    assert toml.delete("model.flux_shift")
    after = toml.dumps().splitlines()
    assert after == before[: line - 1] + before[line:]  # type: ignore[operator]


def _keys(node: object, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append(path)
            out.extend(_keys(v, path))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, dict):
                out.extend(_keys(v, f"{prefix}[{i}]"))
    return out


PROFILE_FILES = [
    p for p in FILES if p.name != "index.toml"
]  # the index's quoted dotted keys are not key paths


@pytest.mark.parametrize("path", PROFILE_FILES, ids=ids(PROFILE_FILES))
def test_find_line_points_at_every_key(path: Path) -> None:
    """Every key of every realistic file is located on a line that names it (headers included)."""
    text = path.read_text()
    lines = text.splitlines()
    for key in _keys(TomlFile.from_text(text).data()):
        line = find_line(text, key)
        assert line is not None, key
        leaf = key.rsplit(".", 1)[-1].split("[")[0]
        assert leaf in lines[line - 1], (key, line, lines[line - 1])
