"""Check a profile the way diffusion-pipe (or the built-in trainer) would, before a GPU hour is spent on it.

Every finding is a `Problem` naming the file, the key path, the line, what was found and what is expected.
Bad content never raises: only an unreadable or unparseable file does, earlier, in `profiles.document`.
The checks work on plain data with type guards, so one wrong value never hides the rest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from profiles import model_types as mt
from profiles.document import Profile, TomlFile, find_line, join_keypath, resolve_ref
from profiles.schema import (
    AdapterConfig,
    DatasetConfig,
    DirectoryConfig,
    MainConfig,
    ModelConfig,
    MonitoringConfig,
)
from profiles.templates import field_help

Severity = Literal["error", "warning"]
CheckPaths = Literal["error", "warn", "off"]

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2")
BUILTIN_TRAINER_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
# diffusion-pipe train.py get_optimizer: matched case-insensitively.
DP_OPTIMIZERS: tuple[str, ...] = (
    "adamw",
    "adamw8bit",
    "adamw_optimi",
    "stableadamw",
    "sgd",
    "adamw8bitkahan",
    "offload",
    "automagic",
    "genericoptim",
)
BUILTIN_TRAINER_OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_optimi", "adamw8bit")
# pytorch_optimizer classes people use for LoRAs; anything else is looked up by exact name at run time.
KNOWN_PYTORCH_OPTIMIZERS: tuple[str, ...] = (
    "Prodigy",
    "DAdaptAdam",
    "DAdaptAdan",
    "DAdaptAdaGrad",
    "DAdaptLion",
    "DAdaptSGD",
    "Lion",
    "CAME",
    "AdaFactor",
    "AdaBelief",
    "AdaBound",
    "AdamP",
    "Adan",
    "ADOPT",
    "AdEMAMix",
    "Lamb",
    "LaProp",
    "MADGRAD",
    "Muon",
    "NovoGrad",
    "Ranger",
    "Ranger21",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "SOAP",
    "SophiaH",
    "StableAdamW",
    "Tiger",
)
LR_SCHEDULERS = {"diffusion-pipe": ("constant", "linear"), "builtin": ("constant", "linear", "cosine")}
SAVE_KEYS = ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
MAX_RESOLUTIONS = 3
# `<PATH TO flux_schnell_diffusers FOLDER>`, `<DEMO_MODEL_DIR>`: template values the user must replace.
# Deliberately narrow: `<sks>` or `<TRIGGER>` in a caption prefix is real content, not a placeholder.
PLACEHOLDER = re.compile(r"^\s*<(?:PATH TO|FILL IN|YOUR |DEMO_|REDACTED)[^<>\n]*>\s*$")
SECRET_KEYS = ("wandb_api_key",)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    file: str
    key: str
    line: int | None
    found: str | None
    expected: str | None
    message: str
    code: str = ""  # which check, for programs: type, required, unknown_key, path, placeholder, ...

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json output (the text form is included as `text`)."""
        return {
            "severity": self.severity,
            "file": self.file,
            "key": self.key,
            "line": self.line,
            "found": self.found,
            "expected": self.expected,
            "message": self.message,
            "code": self.code,
            "text": str(self),
        }

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"
        details = [
            f"found {self.found}" if self.found is not None else "",
            f"expected {self.expected}" if self.expected else "",
        ]
        shown = ", ".join(d for d in details if d)
        return f"{text} ({shown})" if shown else text


def has_errors(problems: list[Problem]) -> bool:
    return any(getattr(p, "severity", "") == "error" for p in problems)


def show(value: Any, limit: int = 80) -> str:
    """A TOML-ish rendering of a found value, cut short so messages stay one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


@dataclass
class _Ctx:
    backend: str
    check_paths: CheckPaths
    roots: list[Path]
    problems: list[Problem] = field(default_factory=list)
    placeholders: set[tuple[str, str]] = field(default_factory=set)  # (file, key) holding a placeholder
    _texts: dict[int, str] = field(default_factory=dict)

    def add(
        self,
        severity: Severity,
        toml: TomlFile,
        key: str,
        message: str,
        *,
        found: Any = None,
        expected: str | None = None,
        code: str = "",
        raw_found: str | None = None,
        at: str | None = None,
    ) -> None:
        """Record a problem. `at`: a related key to point at when `key` itself is absent from the file."""
        text = self._texts.get(id(toml))
        if text is None:
            text = self._texts[id(toml)] = toml.dumps()
        line = find_line(text, key) if key else None
        if line is None and at:
            line = find_line(text, at)
        shown = raw_found if raw_found is not None else (None if found is None else show(found))
        if shown is not None and _is_secret_key(key):
            shown = "***"
        self.problems.append(Problem(severity, _label(toml), key, line, shown, expected, message, code))

    @property
    def path_severity(self) -> Severity:
        return "error" if self.check_paths == "error" else "warning"


def _is_secret_key(keypath: str) -> bool:
    """Never echo these values, whatever the check (a key pasted as a number is still a key)."""
    leaf = keypath.rsplit(".", 1)[-1].split("[", 1)[0].lower()
    return (
        leaf in SECRET_KEYS or leaf.endswith(("api_key", "_token", "secret", "password")) or leaf == "token"
    )


def _label(toml: TomlFile) -> str:
    return str(toml.path) if toml.path is not None else toml.source


# Pydantic errors -> problems with real key paths.

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


def _schema_problems(ctx: _Ctx, toml: TomlFile, data: dict[str, Any], model: type[BaseModel]) -> None:
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
                expected = _EXPECT_BY_KEY.get(name) or _as_expectation(field_help(key)) or None
                ctx.add("error", toml, key, "required key is missing", expected=expected, code="required")
                continue
            value = _value_at(data, parts)
            if isinstance(parts[-1], int):  # an element: its own constraint is the useful part
                expected = _expectation(err) or _EXPECT_BY_KEY.get(name)
            else:
                expected = _EXPECT_BY_KEY.get(name) or _expectation(err)
            if err["type"] in _EXPECT_BY_TYPE and name in _EXPECT_BY_KEY and not isinstance(parts[-1], int):
                # A key of several accepted shapes: "wrong type" would be misleading for 'always' vs 'unsloth'.
                message, code = f"not an accepted value ({_type_name(value)})", "type"
            elif err["type"] in _EXPECT_BY_TYPE:
                message, code = f"wrong type: {_type_name(value)}", "type"
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


# Walking values.


def _walk(node: Any, prefix: list[str | int]) -> Iterator[tuple[list[str | int], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, [*prefix, str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, [*prefix, i])
    else:
        yield prefix, node


def _check_placeholders(ctx: _Ctx, toml: TomlFile, data: dict[str, Any]) -> None:
    for parts, value in _walk(data, []):
        if isinstance(value, str) and PLACEHOLDER.search(value):
            key = join_keypath(parts)
            ctx.placeholders.add((_label(toml), key))
            severity: Severity = "error" if ctx.check_paths == "error" else "warning"
            ctx.add(
                severity,
                toml,
                key,
                "placeholder from a template: replace it with a real value",
                found=value,
                expected=_as_expectation(field_help(key)) or "a real value",
                code="placeholder",
            )


def _as_expectation(help_line: str) -> str:
    """A help sentence reused after "expected": lower-case start, no final full stop."""
    text = help_line.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else ""


# Unknown keys.


def _unknown_keys(
    ctx: _Ctx,
    toml: TomlFile,
    section: Any,
    known: frozenset[str],
    prefix: list[str | int],
    what: str,
    skip: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(section, dict):
        return
    for key in section:
        if key in known or key in skip:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ctx.add(
            "warning",
            toml,
            join_keypath([*prefix, str(key)]),
            f"unknown key: {what} does not read it (kept as is){hint}",
            code="unknown_key",
        )


# Paths.


def _check_path(
    ctx: _Ctx, toml: TomlFile, key: str, value: Any, kind: mt.PathKind, relative_to: Path | None
) -> None:
    if ctx.check_paths == "off" or not isinstance(value, str) or (_label(toml), key) in ctx.placeholders:
        return
    if not value.strip():
        ctx.add("error", toml, key, "empty path", found=value, expected=_kind_text(kind), code="path")
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
            expected=_kind_text(kind),
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
            expected=_kind_text(kind),
            code="path",
        )
    elif kind == "folder" and not found.is_dir():
        ctx.add(
            ctx.path_severity,
            toml,
            key,
            "is a file, not a folder",
            found=value,
            expected=_kind_text(kind),
            code="path",
        )


def _kind_text(kind: mt.PathKind) -> str:
    return {"file": "an existing file", "folder": "an existing folder", "any": "an existing file or folder"}[
        kind
    ]


# The main file.


def _check_main(ctx: _Ctx, profile: Profile, num_gpus: int | None) -> None:
    toml = profile.main
    data = toml.data()
    _schema_problems(ctx, toml, data, MainConfig)
    _unknown_keys(ctx, toml, data, frozenset(MainConfig.model_fields), [], "diffusion-pipe")
    _check_placeholders(ctx, toml, data)

    if not any(k in data for k in SAVE_KEYS):
        ctx.add(
            "error",
            toml,
            "save_every_n_epochs",
            "no save frequency: diffusion-pipe refuses to start without one",
            expected="one of " + ", ".join(SAVE_KEYS),
            code="required",
            at="epochs",
        )
    checkpoints = [
        k
        for k in ("checkpoint_every_n_epochs", "checkpoint_every_n_minutes", "checkpoint_every_n_steps")
        if k in data
    ]
    if len(checkpoints) > 1:
        ctx.add(
            "warning",
            toml,
            checkpoints[1],
            f"set only one checkpoint frequency (also set: {checkpoints[0]})",
            code="value",
        )

    model = data.get("model")
    mtype = _check_model(ctx, toml, model)
    _check_adapter(ctx, toml, data.get("adapter"))
    _check_optimizer(ctx, toml, data.get("optimizer"))
    _check_monitoring(ctx, toml, data.get("monitoring"))
    _check_training(ctx, toml, data, num_gpus)
    if isinstance(data.get("save_dtype"), str):
        _check_dtype(ctx, toml, "save_dtype", data["save_dtype"])
    _check_backend(ctx, toml, data, mtype)
    _check_main_paths(ctx, profile, data, mtype)


def _did_you_mean(value: str, choices: tuple[str, ...]) -> str:
    lowered = {c.lower().replace("-", "_"): c for c in choices}
    exact = lowered.get(value.lower().replace("-", "_").replace(" ", "_"))
    if exact:
        return exact
    close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else ""


def _check_model(ctx: _Ctx, toml: TomlFile, model: Any) -> str | None:
    """Type-specific checks; returns the type when it is a known one."""
    if not isinstance(model, dict):
        return None
    _check_model_values(ctx, toml, model)  # whatever the type: one typo must not hide another
    mtype = model.get("type")
    if not isinstance(mtype, str):
        return None
    spec = mt.get_spec(mtype)
    if spec is None:
        guess = _did_you_mean(mtype, mt.ALL_TYPES)
        hint = f"did you mean {guess!r}?" if guess else "see `dpdeck profile templates` for examples"
        ctx.add(
            "error",
            toml,
            "model.type",
            f"unknown model type; {hint}",
            found=mtype,
            expected="one of " + ", ".join(mt.ALL_TYPES),
            code="model_type",
        )
        _unknown_keys(ctx, toml, model, frozenset(ModelConfig.model_fields), ["model"], "diffusion-pipe")
        return None
    present = {k for k, v in model.items() if v is not None}
    for key in spec.missing(present) or ():
        ctx.add(
            "error",
            toml,
            f"model.{key}",
            f"required for type {mtype!r}",
            expected=f"{spec.requirement_text()} (for {spec.label})",
            code="required",
        )
    _unknown_keys(ctx, toml, model, spec.known_keys, ["model"], f"model type {mtype!r}")
    return mtype


def _check_model_values(ctx: _Ctx, toml: TomlFile, model: dict[str, Any]) -> None:
    for key in ("dtype", "transformer_dtype", "diffusion_model_dtype"):
        if isinstance(model.get(key), str):
            _check_dtype(ctx, toml, f"model.{key}", model[key], allow_nf4=key == "transformer_dtype")
    encoders = model.get("text_encoders")
    if isinstance(encoders, list):
        for i, entry in enumerate(encoders):
            if isinstance(entry, dict) and "path" not in entry and "paths" not in entry:
                ctx.add(
                    "error",
                    toml,
                    f"model.text_encoders[{i}]",
                    "text encoder entry without a path",
                    expected="path = '...' (or paths = [...])",
                    code="required",
                )
    low, high = model.get("min_t"), model.get("max_t")
    if _num(low) and _num(high) and low >= high:
        ctx.add(
            "error",
            toml,
            "model.min_t",
            f"must be below max_t ({high})",
            found=low,
            expected=f"a value < {high}",
            code="value",
        )


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_dtype(ctx: _Ctx, toml: TomlFile, key: str, value: str, allow_nf4: bool = False) -> None:
    allowed = (*DTYPES, "nf4") if allow_nf4 else DTYPES
    if value in allowed:
        return
    guess = _did_you_mean(
        value.replace("bf16", "bfloat16").replace("fp16", "float16").replace("fp32", "float32"), allowed
    )
    hint = f"; did you mean {guess!r}?" if guess else ""
    ctx.add(
        "error",
        toml,
        key,
        f"unknown dtype{hint}",
        found=value,
        expected="one of " + ", ".join(allowed),
        code="dtype",
    )


def _check_adapter(ctx: _Ctx, toml: TomlFile, adapter: Any) -> None:
    if not isinstance(adapter, dict):
        return
    if "alpha" in adapter:
        ctx.add(
            "error",
            toml,
            "adapter.alpha",
            "not allowed: diffusion-pipe always uses alpha = rank (remove the line)",
            found=adapter["alpha"],
            expected="no alpha key",
            code="alpha",
        )
    rank = adapter.get("rank")
    if adapter.get("type", "lora") == "lora" and isinstance(rank, float):
        ctx.add(
            "error",
            toml,
            "adapter.rank",
            "LoRA rank must be a whole number",
            found=rank,
            expected="a positive integer like 32",
            code="type",
        )
    _unknown_keys(
        ctx,
        toml,
        adapter,
        frozenset(AdapterConfig.model_fields),
        ["adapter"],
        "diffusion-pipe",
        skip=frozenset({"alpha"}),
    )
    if isinstance(adapter.get("dtype"), str):
        _check_dtype(ctx, toml, "adapter.dtype", adapter["dtype"])


def _check_optimizer(ctx: _Ctx, toml: TomlFile, optimizer: Any) -> None:
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("type"), str):
        return
    name = optimizer["type"]
    builtin = BUILTIN_TRAINER_OPTIMIZERS if ctx.backend == "builtin" else DP_OPTIMIZERS
    trainer = "the built-in trainer" if ctx.backend == "builtin" else "diffusion-pipe"
    if name.lower() in builtin:
        return
    if name.lower() in DP_OPTIMIZERS:  # a diffusion-pipe optimizer the built-in trainer lacks
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"{trainer} has no {name!r} optimizer",
            found=name,
            expected="one of " + ", ".join(builtin) + " or a pytorch_optimizer class like 'Prodigy'",
            code="optimizer",
        )
        return
    if name in KNOWN_PYTORCH_OPTIMIZERS:
        return
    by_lower = {n.lower(): n for n in KNOWN_PYTORCH_OPTIMIZERS}
    if name.lower() in by_lower:
        right = by_lower[name.lower()]
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"pytorch_optimizer class names are case-sensitive: write {right!r}",
            found=name,
            expected=repr(right),
            code="optimizer",
        )
        return
    if not name.isidentifier():
        guess = _did_you_mean(name, (*builtin, *KNOWN_PYTORCH_OPTIMIZERS))
        hint = f"; did you mean {guess!r}?" if guess else ""
        ctx.add(
            "error",
            toml,
            "optimizer.type",
            f"not an optimizer name{hint}",
            found=name,
            expected="one of " + ", ".join(builtin) + " (any case) or a pytorch_optimizer class name",
            code="optimizer",
        )
        return
    guess = difflib.get_close_matches(name, [*builtin, *KNOWN_PYTORCH_OPTIMIZERS], n=1, cutoff=0.75)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    ctx.add(
        "warning",
        toml,
        "optimizer.type",
        f"not a built-in optimizer: {trainer} will look up pytorch_optimizer.{name} (exact, case-sensitive){hint}",
        found=name,
        code="optimizer",
    )


def _check_monitoring(ctx: _Ctx, toml: TomlFile, monitoring: Any) -> None:
    if not isinstance(monitoring, dict):
        return
    _unknown_keys(
        ctx, toml, monitoring, frozenset(MonitoringConfig.model_fields), ["monitoring"], "diffusion-pipe"
    )
    for key in SECRET_KEYS:
        value = monitoring.get(key)
        if isinstance(value, str) and value.strip() and not PLACEHOLDER.search(value) and set(value) != {"*"}:
            ctx.add(
                "warning",
                toml,
                f"monitoring.{key}",
                "a W&B API key is stored in the profile: move it to the secrets store "
                f"(`dpdeck secrets set {key}`) and delete this line",
                raw_found="***",
                expected="no key in the profile",
                code="secret",
            )
    if monitoring.get("enable_wandb") is True:
        for key in ("wandb_tracker_name", "wandb_run_name"):
            if not isinstance(monitoring.get(key), str) or not monitoring.get(key):
                # A warning, not an error: the launcher fills monitoring keys in the frozen job copy.
                ctx.add(
                    "warning",
                    toml,
                    f"monitoring.{key}",
                    "diffusion-pipe reads this when enable_wandb = true (a KeyError when absent)",
                    found=monitoring.get(key),
                    expected="a W&B project / run name",
                    code="required",
                )


def _check_training(ctx: _Ctx, toml: TomlFile, data: dict[str, Any], num_gpus: int | None) -> None:
    stages = data.get("pipeline_stages", 1)
    if num_gpus is not None and isinstance(stages, int) and not isinstance(stages, bool) and stages >= 1:
        if num_gpus % stages != 0:
            ctx.add(
                "error",
                toml,
                "pipeline_stages",
                f"{num_gpus} GPU(s) cannot be split into pipelines of {stages} stage(s)",
                found=stages,
                expected=f"a divisor of the GPU count {num_gpus}",
                code="gpus",
            )
    swap = data.get("blocks_to_swap", 0)
    if _num(swap) and swap > 0:
        if stages != 1:
            ctx.add(
                "error",
                toml,
                "blocks_to_swap",
                "block swapping needs pipeline_stages = 1",
                found=swap,
                expected="0 when pipeline_stages > 1",
                code="value",
            )
        if "adapter" not in data:
            ctx.add(
                "error",
                toml,
                "blocks_to_swap",
                "block swapping only works when training a LoRA ([adapter])",
                found=swap,
                expected="0 for a full fine-tune",
                code="value",
            )
    if data.get("partition_method") == "manual" and isinstance(stages, int) and not isinstance(stages, bool):
        split = data.get("partition_split")
        if not isinstance(split, list):
            ctx.add(
                "error",
                toml,
                "partition_split",
                "required with partition_method = 'manual'",
                expected=f"{max(stages - 1, 0)} layer index(es) where the model is split, e.g. [10]",
                code="required",
            )
        elif len(split) != stages - 1:
            ctx.add(
                "error",
                toml,
                "partition_split",
                f"{len(split)} split point(s) for {stages} pipeline stage(s)",
                found=split,
                expected=f"{stages - 1} entries (pipeline_stages - 1)",
                code="value",
            )
    sched = data.get("lr_scheduler")
    allowed = LR_SCHEDULERS.get(ctx.backend, LR_SCHEDULERS["diffusion-pipe"])
    if isinstance(sched, str) and sched not in allowed:
        ctx.add(
            "error",
            toml,
            "lr_scheduler",
            "unknown learning-rate scheduler",
            found=sched,
            expected="one of " + ", ".join(allowed),
            code="value",
        )


def _check_backend(ctx: _Ctx, toml: TomlFile, data: dict[str, Any], mtype: str | None) -> None:
    if mtype is None:
        return
    if not mt.backend_supports(ctx.backend, mtype):
        if ctx.backend == "builtin":
            message = f"the built-in trainer cannot train {mtype!r}; use the diffusion-pipe backend"
            expected = "one of " + ", ".join(sorted(mt.BUILTIN_TYPES))
        else:
            message = (
                f"{mtype!r} is dpdeck's own type: diffusion-pipe cannot train it; use the built-in backend"
            )
            expected = "one of diffusion-pipe's types, e.g. sdxl"
        ctx.add("error", toml, "model.type", message, found=mtype, expected=expected, code="backend")
        return
    if ctx.backend != "builtin":
        return
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    dtype = model.get("dtype")
    if isinstance(dtype, str) and dtype in DTYPES and dtype not in BUILTIN_TRAINER_DTYPES:
        ctx.add(
            "error",
            toml,
            "model.dtype",
            "the built-in trainer does not train in float8",
            found=dtype,
            expected="one of " + ", ".join(BUILTIN_TRAINER_DTYPES),
            code="backend",
        )
    if not isinstance(data.get("adapter"), dict):
        ctx.add(
            "error",
            toml,
            "adapter",
            "the built-in trainer trains LoRAs only: an [adapter] table is required",
            expected="[adapter] with type = 'lora' and rank",
            code="backend",
        )
    stages = data.get("pipeline_stages", 1)
    if stages != 1:
        ctx.add(
            "error",
            toml,
            "pipeline_stages",
            "the built-in trainer is data-parallel only",
            found=stages,
            expected="1",
            code="backend",
        )
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and "type" in optimizer and not _num(optimizer.get("lr")):
        ctx.add(
            "error",
            toml,
            "optimizer.lr",
            "the built-in trainer needs a learning rate",
            found=optimizer.get("lr"),
            expected="a number like 1e-4",
            code="required",
        )


def _check_main_paths(ctx: _Ctx, profile: Profile, data: dict[str, Any], mtype: str | None) -> None:
    toml = profile.main
    base = toml.path
    out = data.get("output_dir")
    if (
        ctx.check_paths != "off"
        and isinstance(out, str)
        and (_label(toml), "output_dir") not in ctx.placeholders
    ):
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
                _check_path(ctx, toml, f"model.{key}", model[key], kind, base)
        encoders = model.get("text_encoders")
        for i, entry in enumerate(encoders if isinstance(encoders, list) else []):
            if not isinstance(entry, dict):
                continue
            for key in ("path", "paths"):
                value = entry.get(key)
                values = value if isinstance(value, list) else [value]
                for j, v in enumerate(values):
                    suffix = f"[{j}]" if isinstance(value, list) else ""
                    _check_path(ctx, toml, f"model.text_encoders[{i}].{key}{suffix}", v, "file", base)
        merges = model.get("merge_adapters")
        for i, v in enumerate(merges if isinstance(merges, list) else []):
            _check_path(ctx, toml, f"model.merge_adapters[{i}]", v, "file", base)
    adapter = data.get("adapter")
    if isinstance(adapter, dict) and "init_from_existing" in adapter:
        _check_path(ctx, toml, "adapter.init_from_existing", adapter["init_from_existing"], "folder", base)


# Dataset files.


def _check_dataset_refs(ctx: _Ctx, profile: Profile, model_type: str | None) -> None:
    toml = profile.main
    data = toml.data()
    ref = data.get("dataset")
    if isinstance(ref, str) and (_label(toml), "dataset") not in ctx.placeholders:
        if profile.dataset is not None:
            _check_dataset(ctx, profile.dataset, model_type)
        elif ctx.check_paths != "off":
            ctx.add(
                "error",
                toml,
                "dataset",
                "dataset TOML not found (relative paths are tried beside this file and in the current folder)",
                found=ref,
                expected="the path of an existing dataset TOML",
                code="path",
            )
    evals = data.get("eval_datasets")
    if not isinstance(evals, list):
        return
    for i, entry in enumerate(evals):
        if isinstance(entry, dict):
            name, config = entry.get("name"), entry.get("config")
            key = f"eval_datasets[{i}].config"
        else:
            name, config, key = None, entry, f"eval_datasets[{i}]"
        if not isinstance(config, str) or (_label(toml), key) in ctx.placeholders:
            continue
        loaded = profile.eval_datasets.get(str(name if name is not None else config))
        if loaded is not None:
            _check_dataset(ctx, loaded, model_type)
        elif ctx.check_paths != "off":
            ctx.add(
                "error",
                toml,
                key,
                "eval dataset TOML not found",
                found=config,
                expected="the path of an existing dataset TOML",
                code="path",
            )


def _check_dataset(ctx: _Ctx, toml: TomlFile, model_type: str | None) -> None:
    data = toml.data()
    _schema_problems(ctx, toml, data, DatasetConfig)
    _unknown_keys(
        ctx, toml, data, frozenset(DatasetConfig.model_fields), [], "diffusion-pipe's dataset loader"
    )
    _check_placeholders(ctx, toml, data)
    top_sizes = data.get("size_buckets")
    if "resolutions" not in data and top_sizes is None:
        ctx.add(
            "error",
            toml,
            "resolutions",
            "required at the top of the dataset file (diffusion-pipe reads it even when directories set their own)",
            expected="e.g. resolutions = [512]",
            code="required",
        )
    _check_resolutions(ctx, toml, data.get("resolutions"), "resolutions")
    spec = mt.get_spec(model_type) if model_type else None
    frames = data.get("frame_buckets")
    if spec is not None and not spec.video and isinstance(frames, list) and any(f != 1 for f in frames):
        ctx.add(
            "warning",
            toml,
            "frame_buckets",
            f"{model_type!r} trains on images only: frame buckets above 1 are not used",
            found=frames,
            expected="[1] (or leave it out)",
            code="value",
        )
    directories = data.get("directory")
    entries = directories if isinstance(directories, list) else []
    _check_buckets(ctx, toml, data, {}, None)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        prefix = f"directory[{i}]"
        _unknown_keys(
            ctx,
            toml,
            entry,
            frozenset(DirectoryConfig.model_fields),
            ["directory", i],
            "diffusion-pipe's dataset loader",
        )
        _check_resolutions(ctx, toml, entry.get("resolutions"), f"{prefix}.resolutions")
        _check_buckets(ctx, toml, data, entry, prefix)
        for key in ("path", "mask_path", "control_path"):
            if key in entry:
                _check_path(ctx, toml, f"{prefix}.{key}", entry[key], "folder", toml.path)


def _check_resolutions(ctx: _Ctx, toml: TomlFile, value: Any, key: str) -> None:
    if isinstance(value, list) and len(value) > MAX_RESOLUTIONS:
        ctx.add(
            "error",
            toml,
            key,
            f"{len(value)} resolutions: diffusion-pipe quits (with exit status 0) above {MAX_RESOLUTIONS}, "
            "since each one duplicates the dataset",
            found=value,
            expected=f"at most {MAX_RESOLUTIONS} entries",
            code="resolutions",
        )
    if isinstance(value, list) and not value:
        ctx.add(
            "error",
            toml,
            key,
            "empty list",
            found=value,
            expected="at least one resolution, e.g. [512]",
            code="resolutions",
        )


def _check_buckets(
    ctx: _Ctx, toml: TomlFile, top: dict[str, Any], entry: dict[str, Any], prefix: str | None
) -> None:
    """Aspect-ratio bucketing by range needs min_ar, max_ar and num_ar_buckets (here or at the top)."""

    def effective(key: str, default: Any = None) -> Any:
        return entry[key] if key in entry else top.get(key, default)

    if effective("enable_ar_bucket", False) is not True:
        return
    if effective("ar_buckets") is not None or effective("size_buckets") is not None:
        return
    if prefix is not None and not any(
        k in entry for k in ("enable_ar_bucket", "min_ar", "max_ar", "num_ar_buckets")
    ):
        return  # inherits everything from the top level, which is checked (and reported) once
    for key in ("min_ar", "max_ar", "num_ar_buckets"):
        if effective(key) is None:
            where = f"{prefix}.{key}" if prefix is not None and "enable_ar_bucket" in entry else key
            ctx.add(
                "error",
                toml,
                where,
                "required when enable_ar_bucket = true and no ar_buckets are listed",
                expected="min_ar, max_ar and num_ar_buckets (e.g. 0.5, 2.0, 7), or ar_buckets = [...]",
                code="buckets",
                at=f"{prefix}.enable_ar_bucket"
                if prefix is not None and "enable_ar_bucket" in entry
                else "enable_ar_bucket",
            )
    lo, hi = effective("min_ar"), effective("max_ar")
    if _num(lo) and _num(hi) and lo > hi:
        key = f"{prefix}.min_ar" if prefix is not None and "min_ar" in entry else "min_ar"
        ctx.add(
            "error",
            toml,
            key,
            f"min_ar is above max_ar ({hi})",
            found=lo,
            expected=f"a ratio <= {hi}",
            code="buckets",
        )


def validate_profile(
    profile: Profile,
    *,
    backend: str = "diffusion-pipe",
    check_paths: str = "error",
    num_gpus: int | None = None,
    roots: list[Path] | None = None,
) -> list[Problem]:
    """All problems of a profile, errors first, in file/line order within each severity.

    backend: "diffusion-pipe", "builtin" or "auto" (the type's default backend).
    check_paths: "error" on the GPU box, "warn" away from it (paths reported as warnings), "off".
    roots: extra folders to resolve relative paths against (e.g. the diffusion-pipe checkout).
    """
    if check_paths not in ("error", "warn", "off"):
        raise ValueError(f"check_paths must be 'error', 'warn' or 'off', not {check_paths!r}")
    if backend == "auto":
        mtype = profile.model_type
        backend = mt.default_backend(mtype) if mtype else "diffusion-pipe"
    if backend not in mt.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(mt.BACKENDS)} or 'auto', not {backend!r}")
    ctx = _Ctx(backend=backend, check_paths=check_paths, roots=list(roots or []))  # type: ignore[arg-type]
    _check_main(ctx, profile, num_gpus)
    _check_dataset_refs(ctx, profile, profile.model_type)
    order = {"error": 0, "warning": 1}
    return sorted(
        ctx.problems, key=lambda p: (order[p.severity], p.file != _label(profile.main), p.file, p.line or 0)
    )
