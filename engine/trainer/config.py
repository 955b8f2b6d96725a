"""Read a diffusion-pipe style profile (main TOML + dataset TOML) into plain, checked settings.

Uses profiles.document only (not profiles.schema): the trainer must accept exactly what diffusion-pipe
accepts, and every bad value is reported with file, key and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles import lr_schedulers
from profiles.document import Profile, TomlFile, load_profile, resolve_ref
from profiles.model_types import BUILTIN_TYPES, MODEL_SPECS
from profiles.rules.backends import BUILTIN_UNET_TYPES
from profiles.rules.dtypes import DTYPES as STORAGE_DTYPES

SUPPORTED_TYPES = tuple(sorted(BUILTIN_TYPES))  # engine/trainer/families.py has a class for each
DTYPES = ("float32", "float16", "bfloat16")
SCHEDULERS = lr_schedulers.allowed("builtin")  # what engine.trainer.optim implements
# adapter.targets -> the model types that offer it (engine/trainer/sd15.py reads it): every family takes every
# Linear of its blocks (the default, as diffusion-pipe); only the UNet families have attention-only.
LORA_TARGETS = {"all_linear": SUPPORTED_TYPES, "attention": ("sd15", "sdxl")}


class TrainConfigError(ValueError):
    """A profile value the trainer cannot use; the message says file, key and expectation."""


@dataclass
class TrainConfig:
    main_path: Path
    dataset_path: Path
    main: dict[str, Any]
    dataset: dict[str, Any]
    output_dir: Path
    epochs: int
    micro_batch_size: int
    grad_accum: int
    gradient_clipping: float
    warmup_steps: int
    lr_scheduler: str
    seed: int
    zero_stage: int
    activation_checkpointing: bool
    save_every_n_epochs: int | None
    save_every_n_steps: int | None
    save_every_n_examples: int | None
    checkpoint_every_n_epochs: int | None
    checkpoint_every_n_steps: int | None
    checkpoint_every_n_minutes: float | None
    model_type: str
    model: dict[str, Any]
    dtype: str
    save_dtype: str
    adapter: dict[str, Any]
    rank: int
    lora_dropout: float
    optimizer: dict[str, Any]
    monitoring: dict[str, Any] = field(default_factory=dict)
    caching_batch_size: int = 1
    # Storage dtype of the frozen transformer Linears (engine/trainer/memory.py); None = model.dtype.
    transformer_dtype: str | None = None
    blocks_to_swap: int = 0
    lora_targets: str = "all_linear"
    uncond_fraction: float = 0.0  # the chance a caption is trained as "" (diffusion-pipe's top-level key)
    # Steps between host reads of loss / grad norm (engine/trainer/speed.py); None = the device's default.
    logging_steps: int | None = None
    plain_step: bool = False  # the step without the speed work (engine/trainer/speed.py), for debugging
    warnings: list[str] = field(default_factory=list)  # keys nothing reads, as `profile validate` words them


def _err(file: Path, key: str, message: str, found: Any = None) -> TrainConfigError:
    extra = f" (found {found!r})" if found is not None else ""
    return TrainConfigError(f"{file}: {key}: {message}{extra}")


def _int(data: dict[str, Any], key: str, file: Path, default: int | None, minimum: int = 0) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(file, key, f"expected an integer >= {minimum}", value)
    return value


def _float(data: dict[str, Any], key: str, file: Path, default: float | None) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(file, key, "expected a number", value)
    return float(value)


def load_train_config(main_path: Path | str) -> TrainConfig:
    main_path = Path(main_path).resolve()
    profile = load_profile(main_path)
    main = profile.main.data()
    f = main_path
    ref = main.get("dataset")
    if not isinstance(ref, str):
        raise _err(f, "dataset", "required: path to the dataset TOML", ref)
    dataset_path = resolve_ref(ref, main_path)
    if dataset_path is None or not dataset_path.is_file():
        raise _err(
            f, "dataset", "file not found (relative paths are tried beside the main TOML and in the cwd)", ref
        )
    dataset = TomlFile.load(dataset_path).data()
    if not isinstance(main.get("output_dir"), str):
        raise _err(f, "output_dir", "required: a directory for run folders", main.get("output_dir"))
    model = main.get("model")
    if not isinstance(model, dict):
        raise _err(f, "model", "required: a [model] table with type and dtype")
    mtype = model.get("type")
    if mtype not in SUPPORTED_TYPES:
        raise _err(f, "model.type", f"the built-in trainer trains {', '.join(SUPPORTED_TYPES)}", mtype)
    dtype = model.get("dtype", "bfloat16")
    if dtype not in DTYPES:
        raise _err(
            f,
            "model.dtype",
            f"expected one of {', '.join(DTYPES)} (the compute dtype; for float8 weights keep dtype and set "
            "transformer_dtype = 'float8')",
            dtype,
        )
    lacking = MODEL_SPECS[mtype].missing({k for k, v in model.items() if v}, "builtin")
    if lacking:  # the type's own paths (profiles.model_types): a folder, one file, or lumina_2's three files
        raise _err(
            f, f"model.{lacking[0]}", f"{mtype} needs {MODEL_SPECS[mtype].requirement_text('builtin')}"
        )
    adapter = main.get("adapter")
    if not isinstance(adapter, dict) or adapter.get("type", "lora") != "lora":
        raise _err(
            f, "adapter", "a [adapter] table with type = 'lora' is required (full fine-tune is not built in)"
        )
    if "alpha" in adapter:
        raise _err(
            f,
            "adapter.alpha",
            "not allowed: alpha is always equal to rank (as in diffusion-pipe)",
            adapter["alpha"],
        )
    optimizer = main.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("type"), str):
        raise _err(f, "optimizer.type", "required, e.g. type = 'adamw'")
    if not isinstance(optimizer.get("lr"), (int, float)) or isinstance(optimizer.get("lr"), bool):
        raise _err(f, "optimizer.lr", "required: a number", optimizer.get("lr"))
    sched = main.get("lr_scheduler", "constant")
    if sched not in SCHEDULERS:
        raise _err(f, "lr_scheduler", f"expected one of {', '.join(SCHEDULERS)}", sched)
    saves = [main.get(k) for k in ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")]
    if all(s is None for s in saves):
        raise _err(
            f,
            "save_every_n_epochs",
            "one of save_every_n_epochs / save_every_n_steps / save_every_n_examples is required",
        )
    if _int(main, "pipeline_stages", f, 1, 1) != 1:
        raise _err(
            f,
            "pipeline_stages",
            "the built-in trainer is data-parallel only; expected 1",
            main.get("pipeline_stages"),
        )
    zero = _int(main, "zero_stage", f, 0, 0)
    assert zero is not None
    if zero > 2:
        raise _err(f, "zero_stage", "expected 0, 1 or 2", zero)
    save_dtype = adapter.get(
        "save_dtype", main.get("save_dtype", "float32" if dtype == "float32" else "bfloat16")
    )
    if save_dtype not in DTYPES:
        raise _err(f, "save_dtype", f"expected one of {', '.join(DTYPES)}", save_dtype)
    rank = _int(adapter, "rank", f, None, 1)
    if rank is None:
        raise _err(f, "adapter.rank", "required: a positive integer")
    dropout = _float(adapter, "dropout", f, 0.0) or 0.0
    targets = adapter.get("targets", "all_linear")
    if targets not in LORA_TARGETS:
        raise _err(f, "adapter.targets", f"expected one of {', '.join(LORA_TARGETS)}", targets)
    if mtype not in LORA_TARGETS[targets]:
        raise _err(f, "adapter.targets", f"'{targets}' is for {', '.join(LORA_TARGETS[targets])} only", mtype)
    epochs = _int(main, "epochs", f, None, 1)
    if epochs is None:
        raise _err(f, "epochs", "required: a positive integer")
    minutes = _float(main, "checkpoint_every_n_minutes", f, None)
    transformer_dtype, blocks_to_swap = _memory_options(main, model, mtype, dtype, f)
    return TrainConfig(
        uncond_fraction=_uncond_fraction(main, model, f),
        lora_targets=targets,
        warnings=unread_keys(profile),
        main_path=main_path,
        dataset_path=dataset_path.resolve(),
        main=main,
        dataset=dataset,
        output_dir=Path(main["output_dir"]).expanduser(),
        epochs=epochs,
        micro_batch_size=_int(main, "micro_batch_size_per_gpu", f, 1, 1) or 1,
        grad_accum=_int(main, "gradient_accumulation_steps", f, 1, 1) or 1,
        gradient_clipping=_float(main, "gradient_clipping", f, 1.0) or 0.0,
        warmup_steps=_int(main, "warmup_steps", f, 0, 0) or 0,
        lr_scheduler=sched,
        seed=_int(main, "seed", f, 42, 0) or 0,
        zero_stage=zero,
        activation_checkpointing=_activation_checkpointing(main, f),
        transformer_dtype=transformer_dtype,
        blocks_to_swap=blocks_to_swap,
        save_every_n_epochs=_int(main, "save_every_n_epochs", f, None, 1),
        save_every_n_steps=_int(main, "save_every_n_steps", f, None, 1),
        save_every_n_examples=_int(main, "save_every_n_examples", f, None, 1),
        checkpoint_every_n_epochs=_int(main, "checkpoint_every_n_epochs", f, None, 1),
        checkpoint_every_n_steps=_int(main, "checkpoint_every_n_steps", f, None, 1),
        checkpoint_every_n_minutes=minutes,
        model_type=mtype,
        model=model,
        dtype=dtype,
        save_dtype=save_dtype,
        adapter=adapter,
        rank=rank,
        lora_dropout=dropout,
        optimizer=optimizer,
        monitoring=main.get("monitoring") if isinstance(main.get("monitoring"), dict) else {},
        caching_batch_size=_int(main, "caching_batch_size", f, 1, 1) or 1,
        logging_steps=_int(main, "logging_steps", f, None, 1),
        plain_step=_bool(main, "plain_step", f),
    )


def _bool(data: dict[str, Any], key: str, file: Path) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _err(file, key, "expected true or false", value)
    return value


def _memory_options(
    main: dict[str, Any], model: dict[str, Any], mtype: str, dtype: str, f: Path
) -> tuple[str | None, int]:
    """transformer_dtype and blocks_to_swap: what engine/trainer/memory.py does for the transformer families."""
    storage = model.get("transformer_dtype")
    if storage is not None and storage not in STORAGE_DTYPES:
        raise _err(f, "model.transformer_dtype", f"expected one of {', '.join(STORAGE_DTYPES)}", storage)
    if storage == dtype:
        storage = None
    if storage is not None and mtype in BUILTIN_UNET_TYPES:
        raise _err(
            f,
            "model.transformer_dtype",
            f"{mtype}'s UNet is kept at model.dtype (diffusion-pipe's {mtype} does not read transformer_dtype "
            f"either); remove it or set it to '{dtype}'",
            storage,
        )
    swap = _int(main, "blocks_to_swap", f, 0, 0) or 0
    if swap and mtype in BUILTIN_UNET_TYPES:
        raise _err(
            f,
            "blocks_to_swap",
            f"block swapping is for the transformer families, not {mtype}'s UNet; expected 0",
            swap,
        )
    return storage, swap


def _activation_checkpointing(main: dict[str, Any], f: Path) -> bool:
    value = main.get("activation_checkpointing", False)
    if value == "unsloth":
        raise _err(
            f,
            "activation_checkpointing",
            "'unsloth' (activations offloaded to the CPU) is not built in; use true (each block checkpointed)",
            value,
        )
    if not isinstance(value, bool):
        raise _err(f, "activation_checkpointing", "expected true or false", value)
    if main.get("reentrant_activation_checkpointing"):
        raise _err(
            f,
            "reentrant_activation_checkpointing",
            "not built in: the built-in trainer checkpoints non-reentrantly (diffusers' default); expected false",
            main["reentrant_activation_checkpointing"],
        )
    return value


def _uncond_fraction(main: dict[str, Any], model: dict[str, Any], f: Path) -> float:
    """diffusion-pipe reads a top-level `uncond_fraction`; dpdeck's trainer also took `model.caption_dropout`
    or `model.uncond_fraction` before it did. One value: two that disagree is an error, not a silent pick."""
    given = {
        k: v
        for k, v in (
            ("uncond_fraction", main.get("uncond_fraction")),
            ("model.caption_dropout", model.get("caption_dropout")),
            ("model.uncond_fraction", model.get("uncond_fraction")),
        )
        if v is not None
    }
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise _err(f, key, "expected a number from 0 to 1", value)
    if len({float(v) for v in given.values()}) > 1:
        raise _err(
            f,
            next(iter(given)),
            "set once: "
            + ", ".join(f"{k} = {v}" for k, v in given.items())
            + " disagree (uncond_fraction at the top level is diffusion-pipe's key)",
        )
    return float(next(iter(given.values()), 0.0))


def unread_keys(profile: Profile) -> list[str]:
    """The unknown-key warnings `dpdeck profile validate --backend builtin` gives, worded the same: the trainer
    never ignores a key silently."""
    from profiles.validate import validate_profile

    return [
        f"{p.file}:{p.line or '?'}: {p.key}: {p.message}"
        for p in validate_profile(profile, backend="builtin", check_paths="off")
        if p.code == "unknown_key"
    ]
