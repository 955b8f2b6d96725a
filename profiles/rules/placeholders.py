"""Template values the user must replace (`<PATH TO ... FOLDER>`), wherever they sit in a file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from profiles.document import TomlFile, join_keypath
from profiles.rules.base import Ctx, Severity, help_expectation, label

# `<PATH TO flux_schnell_diffusers FOLDER>`, `<DEMO_MODEL_DIR>`: template values the user must replace.
# Deliberately narrow: `<sks>` or `<TRIGGER>` in a caption prefix is real content, not a placeholder.
PLACEHOLDER = re.compile(r"^\s*<(?:PATH TO|FILL IN|YOUR |DEMO_|REDACTED)[^<>\n]*>\s*$")


def _walk(node: Any, prefix: list[str | int]) -> Iterator[tuple[list[str | int], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, [*prefix, str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, [*prefix, i])
    else:
        yield prefix, node


# What a placeholder at a key should become, by the key's pattern (first match wins).
WANTED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^directory\[\d+\]\.path$"), "set it to your images folder"),
    (re.compile(r"^directory\[\d+\]\.mask_path$"), "set it to your masks folder or remove the key"),
    (re.compile(r"^(dataset|eval_datasets\[\d+\]\.config)$"), "set it to your dataset TOML file"),
    (re.compile(r"^output_dir$"), "set it to the folder this run's saves go to"),
    (re.compile(r"^model\..*(path|_dir)$"), "set it to the model's file or folder on this machine"),
)


def wanted(key: str) -> str:
    return next((text for pattern, text in WANTED if pattern.search(key)), "replace it with a real value")


def check(ctx: Ctx, toml: TomlFile, data: dict[str, Any]) -> None:
    """Record every placeholder (later path checks skip those keys: one finding per value is enough)."""
    for parts, value in _walk(data, []):
        if isinstance(value, str) and PLACEHOLDER.search(value):
            key = join_keypath(parts)
            ctx.placeholders.add((label(toml), key))
            severity: Severity = "error" if ctx.check_paths == "error" else "warning"
            ctx.add(
                severity,
                toml,
                key,
                f"still the template's placeholder {value.strip()!r}; {wanted(key)}",
                expected=help_expectation(key) or "a real value",
                code="placeholder",
            )
