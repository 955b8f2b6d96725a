"""Paths in the main file: model files and folders, output_dir, adapter init, each of the expected kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from profiles import model_types as mt
from profiles.document import Profile, TomlFile, resolve_ref
from profiles.rules.base import Ctx


def check_path(
    ctx: Ctx, toml: TomlFile, key: str, value: Any, kind: mt.PathKind, relative_to: Path | None
) -> None:
    if ctx.check_paths == "off" or not isinstance(value, str) or ctx.holds_placeholder(toml, key):
        return
    if not value.strip():
        ctx.add("error", toml, key, "empty path", found=value, expected=kind_text(kind), code="path")
        return
    found = resolve_ref(value, relative_to, ctx.roots)
    if found is None:
        where = (
            ""
            if Path(value).expanduser().is_absolute()
            else " (relative paths are tried beside the file and in the current folder)"
        )
        ctx.add(
            ctx.path_severity,
            toml,
            key,
            f"not found on this machine{where}",
            found=value,
            expected=kind_text(kind),
            code="path",
        )
        return
    if kind == "file" and not found.is_file():
        ctx.add(
            ctx.path_severity,
            toml,
            key,
            "is a folder, not a file",
            found=value,
            expected=kind_text(kind),
            code="path",
        )
    elif kind == "folder" and not found.is_dir():
        ctx.add(
            ctx.path_severity,
            toml,
            key,
            "is a file, not a folder",
            found=value,
            expected=kind_text(kind),
            code="path",
        )


def kind_text(kind: mt.PathKind) -> str:
    return {"file": "an existing file", "folder": "an existing folder", "any": "an existing file or folder"}[
        kind
    ]


def check_main(ctx: Ctx, profile: Profile, data: dict[str, Any], mtype: str | None) -> None:
    toml = profile.main
    base = toml.path
    out = data.get("output_dir")
    if ctx.check_paths != "off" and isinstance(out, str) and not ctx.holds_placeholder(toml, "output_dir"):
        found = resolve_ref(out, base, ctx.roots) if out.strip() else None
        if found is not None and not found.is_dir():
            ctx.add(
                ctx.path_severity,
                toml,
                "output_dir",
                "is a file, not a folder",
                found=out,
                expected="a folder (created when missing)",
                code="path",
            )
    model = data.get("model")
    spec = mt.get_spec(mtype) if mtype else None
    if isinstance(model, dict) and spec is not None:
        for key, kind in spec.paths.items():
            if key in model:
                check_path(ctx, toml, f"model.{key}", model[key], kind, base)
        encoders = model.get("text_encoders")
        for i, entry in enumerate(encoders if isinstance(encoders, list) else []):
            if not isinstance(entry, dict):
                continue
            for key in ("path", "paths"):
                value = entry.get(key)
                values = value if isinstance(value, list) else [value]
                for j, v in enumerate(values):
                    suffix = f"[{j}]" if isinstance(value, list) else ""
                    check_path(ctx, toml, f"model.text_encoders[{i}].{key}{suffix}", v, "file", base)
        merges = model.get("merge_adapters")
        for i, v in enumerate(merges if isinstance(merges, list) else []):
            check_path(ctx, toml, f"model.merge_adapters[{i}]", v, "file", base)
    adapter = data.get("adapter")
    if isinstance(adapter, dict) and "init_from_existing" in adapter:
        check_path(ctx, toml, "adapter.init_from_existing", adapter["init_from_existing"], "folder", base)
