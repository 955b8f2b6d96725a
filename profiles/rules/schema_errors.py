"""Pydantic errors turned into problems with real key paths (a union's branch tags dropped)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from profiles.document import TomlFile, join_keypath
from profiles.rules.base import Ctx, help_expectation, type_name

_EXPECT_BY_KEY: dict[str, str] = {
    "micro_batch_size_per_gpu": "a positive integer, or per-resolution pairs like [[512, 4], [1024, 1]]",
    "image_micro_batch_size_per_gpu": "a positive integer, or per-resolution pairs like [[512, 4], [1024, 1]]",
    "eval_micro_batch_size_per_gpu": "a positive integer, or per-resolution pairs like [[512, 4], [1024, 1]]",
    "eval_image_micro_batch_size_per_gpu": "a positive integer, or per-resolution pairs like [[512, 4]]",
    "resolutions": "side lengths like [512] or [width, height] pairs like [[1280, 720]]",
    "ar_buckets": "width/height ratios like [1.0, 1.5] or [width, height] pairs like [[448, 576]]",
    "size_buckets": "[width, height, frames] triples",
    "activation_checkpointing": "true, false or 'unsloth'",
    "eval_datasets": "an array of {name = '...', config = 'eval_dataset.toml'} tables",
    "rank": "a positive integer",
    "resume_from_checkpoint": "true, false or a run folder name",
    "text_encoders": "an array of {path = '...', type = '...'} tables",
}
_EXPECT_BY_TYPE: dict[str, str] = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _real_path(loc: tuple[Any, ...], data: Any) -> tuple[list[str | int], bool]:
    """Follow a pydantic error location through the data, dropping union branch tags.

    Returns the key path and whether it reached the end (False: a missing key at the last step).
    """
    parts: list[str | int] = []
    node = data
    for seg in loc:
        if isinstance(seg, int) and isinstance(node, list) and 0 <= seg < len(node):
            parts.append(seg)
            node = node[seg]
        elif isinstance(seg, str) and isinstance(node, dict):
            parts.append(seg)
            if seg not in node:
                return parts, False
            node = node[seg]
        # anything else is a union branch tag like 'constrained-int' or 'list[...]'
    return parts, True


def _leaf_name(parts: list[str | int]) -> str:
    names = [p for p in parts if isinstance(p, str)]
    return names[-1] if names else ""


def _value_at(data: Any, parts: list[str | int]) -> Any:
    node = data
    for part in parts:
        node = node[part]
    return node


def schema_problems(ctx: Ctx, toml: TomlFile, data: dict[str, Any], model: type[BaseModel]) -> None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        located: list[tuple[str, list[str | int], bool, Any]] = []
        for err in exc.errors():
            parts, present = _real_path(tuple(err["loc"]), data)
            if parts:
                located.append((join_keypath(parts), parts, present, err))
        keys = {key for key, *_ in located}
        seen: set[str] = set()
        for key, parts, present, err in located:
            # A union reports every branch; an error deeper inside the value says more than "wrong type".
            deeper = any(k != key and (k.startswith(key + ".") or k.startswith(key + "[")) for k in keys)
            if key in seen or (deeper and present):
                continue
            seen.add(key)
            name = _leaf_name(parts)
            if err["type"] == "missing" or not present:
                expected = _EXPECT_BY_KEY.get(name) or help_expectation(key) or None
                ctx.add("error", toml, key, "required key is missing", expected=expected, code="required")
                continue
            value = _value_at(data, parts)
            if isinstance(parts[-1], int):  # an element: its own constraint is the useful part
                expected = _expectation(err) or _EXPECT_BY_KEY.get(name)
            else:
                expected = _EXPECT_BY_KEY.get(name) or _expectation(err)
            if err["type"] in _EXPECT_BY_TYPE and name in _EXPECT_BY_KEY and not isinstance(parts[-1], int):
                # A key of several accepted shapes: "wrong type" would be misleading for 'always' vs 'unsloth'.
                message, code = f"not an accepted value ({type_name(value)})", "type"
            elif err["type"] in _EXPECT_BY_TYPE:
                message, code = f"wrong type: {type_name(value)}", "type"
            else:
                message, code = _clean_msg(err["msg"]), "value"
            ctx.add("error", toml, key, message, found=value, expected=expected, code=code)


def _expectation(err: Any) -> str | None:
    kind = err["type"]
    if kind in _EXPECT_BY_TYPE:
        return _EXPECT_BY_TYPE[kind]
    ctx = err.get("ctx") or {}
    if kind == "literal_error" and "expected" in ctx:
        return "one of " + str(ctx["expected"]).replace(" or ", ", ")
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        return _clean_msg(err["msg"]).replace("Input should be ", "")
    return None


def _clean_msg(msg: str) -> str:
    return msg.replace("Input should be", "should be").replace("List should", "should")
