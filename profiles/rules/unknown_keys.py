"""Keys nothing reads: a warning (kept as is), with a close known key suggested when there is one.

"Reads" is what the diffusion-pipe in use reads (`ctx.keys`: the configured checkout's scan merged over the
built-in knowledge of upstream 8f83dbf) and, for a profile on the built-in backend, what the built-in trainer
reads (`profiles.builtin_keys`). Known keys are never hand-listed here, so the warning cannot go stale.
"""

from __future__ import annotations

import difflib
from typing import Any

from profiles.builtin_keys import BUILTIN_TRAINER_KEYS
from profiles.document import TomlFile, join_keypath
from profiles.rules.base import Ctx


def _known(ctx: Ctx, table: str, model_type: str | None) -> set[str]:
    """Every key that counts as read in `table`: the pool suggestions are drawn from."""
    keys = ctx.keys
    if table == "model":
        if model_type is not None and model_type in keys.model_types:
            known = set(keys.model_keys(model_type))
        else:
            known = set(keys.tables.get("model", {})).union(*keys.model_types.values())
    else:
        known = set(keys.tables.get(table, {}))
    if ctx.backend == "builtin":
        known |= BUILTIN_TRAINER_KEYS.get(table, frozenset())
    return known


def check_table(
    ctx: Ctx,
    toml: TomlFile,
    section: Any,
    table: str,
    prefix: list[str | int],
    *,
    model_type: str | None = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Warn about each key of `section` (the profile's `table`) that nothing in use reads."""
    if not isinstance(section, dict) or table in ctx.keys.open_tables:
        return
    known = _known(ctx, table, model_type)
    reader = (
        "neither diffusion-pipe nor the built-in trainer reads it"
        if ctx.backend == "builtin"
        else ("diffusion-pipe does not read it")
    )
    if table == "model" and model_type is not None:
        reader += f" for type {model_type!r}"
    for key in section:
        if key in known or key in skip:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ctx.add(
            "warning",
            toml,
            join_keypath([*prefix, str(key)]),
            f"unknown key: {reader} (kept as is){hint}",
            code="unknown_key",
        )
