"""Keys the configured diffusion-pipe checkout itself reads unguarded that upstream 8f83dbf did not require.

The per-type requirements (profiles.model_types) and the schema's required keys were read from 8f83dbf. A newer
checkout that subscripts a new key with no guard stops with a KeyError without it, so that is an error too,
naming where the checkout reads it. Only the checkout's own unguarded reads count (profiles.dp_keys merges
requiredness from the checkout alone), and only keys 8f83dbf did not already require: those are reported by
the other rules, with their alternatives.
"""

from __future__ import annotations

from typing import Any

from profiles import dp_keys
from profiles import model_types as mt
from profiles.document import TomlFile
from profiles.rules.base import Ctx

# Tables of the main file checked here; "model" goes per type. A sub-table absent from the profile is not
# required through its keys ([adapter] absent = a full fine-tune).
_TABLES: tuple[str, ...] = ("main", "adapter", "optimizer")


def check(ctx: Ctx, toml: TomlFile, data: dict[str, Any], model_type: str | None) -> None:
    keys = ctx.keys
    base = dp_keys.builtin()
    if ctx.backend == "builtin" or keys.source == base.source:
        return
    for table in _TABLES:
        section = data if table == "main" else data.get(table)
        if isinstance(section, dict):
            for key, info in keys.tables.get(table, {}).items():
                known = base.key(table, key)
                if info.required and key not in section and not (known and known.required):
                    _report(ctx, toml, key if table == "main" else f"{table}.{key}", info.where, keys)
    model = data.get("model")
    spec = mt.get_spec(model_type) if model_type else None
    if spec is None or not isinstance(model, dict):
        return
    for key, info in keys.model_keys(spec.name).items():
        known = base.key("model", key, spec.name)
        if (
            info.required
            and key not in model
            and key not in spec.known_keys
            and not (known and known.required)
        ):
            _report(ctx, toml, f"model.{key}", info.where, keys)


def _report(ctx: Ctx, toml: TomlFile, key: str, where: str, keys: dp_keys.DpKeys) -> None:
    commit = f" at {keys.commit}" if keys.commit else ""
    ctx.add(
        "error",
        toml,
        key,
        f"required by the configured diffusion-pipe checkout{commit}: {where} reads it unguarded "
        "(KeyError when absent)",
        expected=f"a value for {key} (see {where} in {keys.source})",
        code="required",
    )
