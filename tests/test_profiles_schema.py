"""The schema: model types and their [model] keys, pydantic models with diffusion-pipe's defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from profiles import model_types as mt
from profiles.schema import DatasetConfig, MainConfig, ModelConfig, field_default

DESIGN_TYPES = (
    "sdxl flux ltx-video hunyuan-video cosmos lumina_2 wan chroma hidream sd3 cosmos_predict2 anima omnigen2 "
    "qwen_image hunyuan_image auraflow z_image hunyuan_video_15 flux2 ernie_image ltx2 ideogram4 krea2 minimax_h3"
).split()


def minimal(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "output_dir": "/out",
        "dataset": "dataset.toml",
        "epochs": 10,
        "save_every_n_epochs": 1,
        "model": {"type": "sdxl", "dtype": "bfloat16", "checkpoint_path": "/m.safetensors"},
        "optimizer": {"type": "adamw", "lr": 1e-4},
    }
    data.update(extra)
    return data


def test_model_type_lists() -> None:
    assert list(mt.MODEL_TYPES) == DESIGN_TYPES and len(mt.MODEL_TYPES) == 24
    assert mt.DPDECK_ONLY_TYPES == {"sd15"} and mt.BUILTIN_TYPES <= set(mt.MODEL_SPECS)
    assert set(mt.MODEL_SPECS) == set(DESIGN_TYPES) | {"sd15"}
    assert not mt.backend_supports("diffusion-pipe", "sd15") and mt.backend_supports("builtin", "sd15")
    assert mt.backend_supports("builtin", "chroma") and not mt.backend_supports("builtin", "wan")


@pytest.mark.parametrize("name", sorted(mt.MODEL_SPECS))
def test_every_type_has_a_coherent_spec(name: str) -> None:
    spec = mt.MODEL_SPECS[name]
    assert spec.requires and all(spec.requires)
    assert set(spec.paths.values()) <= {"file", "folder", "any"}
    # Every required key is a known [model] field, so type errors in it are reported too.
    for alternative in spec.requires:
        for key in alternative:
            assert key in ModelConfig.model_fields, key
    assert spec.missing({k for alt in spec.requires for k in alt}) is None
    assert spec.missing(set()) is not None


def test_per_type_keys_from_diffusion_pipe_docs() -> None:
    assert mt.get_spec("chroma").requires == (("diffusers_path", "transformer_path"),)  # type: ignore[union-attr]
    sdxl = mt.get_spec("sdxl")
    # upstream's models/sdxl.py reads only checkpoint_path; the built-in trainer also loads a diffusers folder.
    assert sdxl is not None and sdxl.missing({"checkpoint_path"}) is None
    assert sdxl.missing({"diffusers_path"}) == ("checkpoint_path",)
    assert sdxl.missing({"diffusers_path"}, "builtin") is None
    assert {"v_pred", "min_snr_gamma", "unet_lr", "text_encoder_1_lr", "text_encoder_2_lr"} <= sdxl.optional
    assert sdxl.paths == {"checkpoint_path": "file", "diffusers_path": "folder"}
    hv = mt.get_spec("hunyuan-video")
    assert hv is not None and hv.missing({"ckpt_path"}) is None
    assert hv.missing({"transformer_path", "vae_path"}) == ("llm_path", "clip_path")
    assert mt.get_spec("wan").requires == (("ckpt_path",),)  # type: ignore[union-attr]
    assert mt.get_spec("z_image").paths["diffusion_model"] == "file"  # type: ignore[union-attr]


def test_defaults_are_diffusion_pipes() -> None:
    config = MainConfig.model_validate(minimal())
    assert config.pipeline_stages == 1 and config.gradient_accumulation_steps == 1
    assert config.gradient_clipping == 1.0 and config.warmup_steps == 0
    assert config.micro_batch_size_per_gpu == 1 and config.lr_scheduler == "constant"
    assert config.activation_checkpointing is False and config.eval_before_first_step is True
    assert config.eval_gradient_accumulation_steps == 1 and config.caching_batch_size == 1
    assert config.partition_method == "parameters" and config.video_clip_mode == "single_beginning"
    assert config.compile is False and config.x_axis_examples is False and config.eval_datasets == []
    assert config.blocks_to_swap == 0 and config.steps_per_print == 1 and config.adapter is None
    assert config.model.guidance == 1.0
    assert field_default(DatasetConfig, "enable_ar_bucket") is False
    assert field_default(DatasetConfig, "skip_empty_caption") is True
    assert field_default(DatasetConfig, "frame_buckets") == [1]


def test_unknown_keys_are_kept_not_dropped() -> None:
    config = MainConfig.model_validate(
        minimal(new_upstream_key=3, model={"type": "sdxl", "dtype": "bfloat16", "x": 1})
    )
    assert config.extra_keys() == ["new_upstream_key"] and config.model.extra_keys() == ["x"]
    assert config.model_dump()["new_upstream_key"] == 3


def test_strict_types_but_int_for_float() -> None:
    assert MainConfig.model_validate(minimal(optimizer={"type": "Prodigy", "lr": 1})).optimizer.lr == 1.0
    for bad in ({"epochs": "10"}, {"epochs": True}, {"epochs": 0}, {"gradient_clipping": "1"}):
        with pytest.raises(ValidationError):
            MainConfig.model_validate(minimal(**bad))


def test_union_shapes() -> None:
    config = MainConfig.model_validate(
        minimal(
            micro_batch_size_per_gpu=[[512, 4], [1024, 1]],
            activation_checkpointing="unsloth",
            eval_datasets=[{"name": "a", "config": "a.toml"}, "b.toml"],
        )
    )
    assert config.micro_batch_size_per_gpu == [[512, 4], [1024, 1]]
    with pytest.raises(ValidationError):
        MainConfig.model_validate(minimal(activation_checkpointing="always"))
    with pytest.raises(ValidationError):
        MainConfig.model_validate(minimal(micro_batch_size_per_gpu=[[512, 4, 1]]))


def test_dataset_model() -> None:
    data = {
        "resolutions": [512, [1280, 720]],
        "enable_ar_bucket": True,
        "ar_buckets": [1.0, [448, 576]],
        "frame_buckets": [1, 33],
        "directory": [{"path": "/d", "mask_path": "/m", "num_repeats": 2, "resolutions": [[448, 576]]}],
    }
    config = DatasetConfig.model_validate(data)
    assert config.directory[0].num_repeats == 2 and config.directory[0].caption_prefix is None
    with pytest.raises(ValidationError):
        DatasetConfig.model_validate({**data, "directory": []})
    with pytest.raises(ValidationError):
        DatasetConfig.model_validate({**data, "directory": [{"num_repeats": 1}]})


def test_importing_validation_and_templates_does_not_import_torch() -> None:
    """Run in a fresh interpreter: this test process may already hold torch from other tests."""
    import subprocess
    import sys

    heavy = ["torch", "diffusers", "deepspeed", "peft", "transformers", "accelerate", "engine", "tui"]
    code = (
        "import sys, profiles.validate, profiles.templates, profiles.schema, profiles.model_types\n"
        "profiles.templates.list_templates(); profiles.templates.field_help('model.type')\n"
        "from profiles.validate import validate_profile\n"
        "validate_profile(profiles.templates.load_template('chroma-e6ai-512'), check_paths='off')\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


# Which table each name holds in engine/trainer's code (family.cfg / model_cfg are the [model] table).
_TRAINER_TABLE_NAMES = {
    "main": "main",
    "cfg.main": "main",
    "model": "model",
    "cfg.model": "model",
    "model_cfg": "model",
    "self.cfg": "model",
    "adapter": "adapter",
    "cfg.adapter": "adapter",
}


def test_builtin_trainer_keys_cover_what_engine_trainer_reads() -> None:
    """Every literal key engine/trainer reads from a profile table is known for builtin-backend profiles:
    in profiles.builtin_keys or among diffusion-pipe's keys (so a new trainer option cannot warn as unknown)."""
    import re
    from pathlib import Path

    from profiles import dp_keys
    from profiles.builtin_keys import BUILTIN_TRAINER_KEYS

    names = "|".join(re.escape(n) for n in sorted(_TRAINER_TABLE_NAMES, key=len, reverse=True))
    read = re.compile(
        rf"(?<![\w.])({names})(?:\.get\(|\[)\"(\w+)\"|_(?:int|float)\((main|adapter), \"(\w+)\""
    )
    dp = dp_keys.builtin()
    found: set[tuple[str, str]] = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "engine/trainer").glob("*.py")):
        for m in read.finditer(path.read_text(encoding="utf-8")):
            table = _TRAINER_TABLE_NAMES[m[1]] if m[1] else m[3]
            found.add((table, m[2] or m[4]))
    assert ("model", "zero_terminal_snr") in found and ("main", "seed") in found  # the scan sees the code
    tables = {"main", "model", "adapter", "optimizer", "monitoring", "dataset", "directory", "eval_dataset"}
    lacking = sorted(
        f"{t}.{k}"
        for t, k in found
        if k not in tables and k not in BUILTIN_TRAINER_KEYS.get(t, frozenset()) and not dp.reads(t, k)
    )
    assert lacking == []


@pytest.mark.parametrize("name", sorted(mt.MODEL_TYPES))
def test_required_keys_agree_with_the_scan_of_upstream(name: str) -> None:
    """Two sources, one answer: the hand-read alternatives of model_types and the static scan of 8f83dbf
    (profiles/data): a key the scan finds read unguarded for the type is in every alternative, and every key
    the spec requires in all alternatives is one the type's code reads."""
    from profiles import dp_keys
    from profiles.builtin_keys import BUILTIN_TRAINER_KEYS

    keys = dp_keys.builtin().model_keys(name)
    spec = mt.MODEL_SPECS[name]
    always = set.intersection(*(set(alt) for alt in spec.requires))
    scanned = {k for k, info in keys.items() if info.required} - {"type", "dtype"}
    assert scanned <= always
    assert {k for alt in spec.requires for k in alt} <= set(keys), "a required key upstream never reads"
    builtin_only = BUILTIN_TRAINER_KEYS["model"] if spec.builtin else frozenset()
    assert set(spec.paths) - builtin_only <= set(keys), "a path key upstream never reads"
