"""Trainer pieces in-process (no launcher): SGM names, cache invalidation, checks of saved files, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import build_tiny_sd15, build_tiny_sdxl, write_profile

from engine.datasets.buckets import plan_buckets
from engine.demo import build_synthetic_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("units")
    return {"sd15": build_tiny_sd15(root / "sd15"), "sdxl": build_tiny_sdxl(root / "sdxl")}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_sgm_names_match_diffusers_ldm_converter(models: dict[str, Path], kind: str) -> None:
    """Our diffusers->SGM map, fed to diffusers' own LDM->diffusers converter, must give every key back."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from engine.trainer.sgm import diffusers_to_sgm

    unet = UNet2DConditionModel.from_pretrained(models[kind], subfolder="unet")
    sd = unet.state_dict()
    ldm = {"model.diffusion_model." + diffusers_to_sgm(k, unet.config): v for k, v in sd.items()}
    assert len(ldm) == len(sd)
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def _family(model: Path, kind: str):  # noqa: ANN202
    from engine.trainer.families import get_family

    fam = get_family(kind)({"diffusers_path": str(model)}, torch.float32, torch.device("cpu"))
    fam.load()
    return fam


def _stamp(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}


def test_cache_invalidates_exactly_what_changed(models: dict[str, Path], tmp_path: Path) -> None:
    from engine.trainer.cache import TrainingCache

    data = build_synthetic_dataset(tmp_path / "data", count=4)
    ds = {"resolutions": [32], "directory": [{"path": str(data)}]}
    fam = _family(models["sd15"], "sd15")
    cache = TrainingCache(fam, tmp_path / "dataset.toml")
    first = cache.build(plan_buckets(ds, tmp_path, 1))
    assert (first.encoded_latents, first.encoded_text) == (4, 5)  # 4 captions + the empty one
    lat0, txt0 = _stamp(cache.latent_dir), _stamp(cache.text_dir)

    again = cache.build(plan_buckets(ds, tmp_path, 1))
    assert (again.encoded_latents, again.encoded_text, again.reused_latents, again.removed) == (0, 0, 4, 0)
    assert _stamp(cache.latent_dir) == lat0 and _stamp(cache.text_dir) == txt0

    Image.new("RGB", (32, 32), (0, 0, 0)).save(data / "img000.png")  # new content, new mtime
    (data / "img001.txt").write_text("a different caption")
    stats = cache.build(plan_buckets(ds, tmp_path, 1))
    assert (stats.encoded_latents, stats.encoded_text, stats.removed) == (1, 1, 2)
    lat1, txt1 = _stamp(cache.latent_dir), _stamp(cache.text_dir)
    assert len(set(lat1) - set(lat0)) == 1 and len(set(lat0) - set(lat1)) == 1
    assert all(lat1[k] == lat0[k] for k in set(lat0) & set(lat1))
    assert len(set(txt1) - set(txt0)) == 1 and all(txt1[k] == txt0[k] for k in set(txt0) & set(txt1))

    ds48 = {**ds, "resolutions": [48]}  # bucket settings: every latent again, no caption again
    moved = cache.build(plan_buckets(ds48, tmp_path, 1))
    assert (moved.encoded_latents, moved.encoded_text, moved.reused_text) == (4, 0, 5)

    forced = cache.build(plan_buckets(ds48, tmp_path, 1), regenerate=True)
    assert (forced.encoded_latents, forced.encoded_text) == (4, 5)


def test_truncated_image_is_skipped_with_a_warning(models: dict[str, Path], tmp_path: Path) -> None:
    from engine.trainer.cache import TrainingCache

    data = build_synthetic_dataset(tmp_path / "data", count=3)
    raw = (data / "img002.png").read_bytes()
    (data / "img002.png").write_bytes(raw[: len(raw) // 2])  # header intact, pixels cut off
    plan = plan_buckets({"resolutions": [32], "directory": [{"path": str(data)}]}, tmp_path, 1)
    assert plan.num_examples == 3  # the header still reads: only decoding finds it
    stats = TrainingCache(_family(models["sd15"], "sd15"), tmp_path / "d.toml").build(plan)
    assert stats.encoded_latents == 2
    assert len(stats.unreadable) == 1 and "img002.png" in stats.unreadable[0]


def test_kohya_check_catches_a_wrong_scale(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from engine.trainer.lora_io import LoraSaveError, add_lora, save_lora, verify_kohya_file

    fam = _family(models["sdxl"], "sdxl")
    cfg = add_lora(fam.unet, fam, rank=4, dropout=0.0, init_random_b=True)
    files = save_lora(tmp_path, fam.unet, fam, cfg, "float32")
    assert [f.name for f in files] == ["pytorch_lora_weights.safetensors", "lora_kohya.safetensors"]
    kohya = load_file(str(tmp_path / "lora_kohya.safetensors"))
    alpha_key = next(k for k in kohya if k.endswith(".alpha"))
    assert alpha_key.startswith("lora_unet_input_blocks_") or alpha_key.startswith(
        ("lora_unet_output", "lora_unet_middle")
    )
    kohya[alpha_key] = torch.tensor(8.0)  # alpha != rank: the scale ComfyUI would apply is now wrong
    save_file(kohya, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraSaveError, match="different output"):
        verify_kohya_file(tmp_path / "bad.safetensors", fam.unet, fam)


def _run_trainer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return subprocess.run(
        [sys.executable, "-m", "engine.trainer", "--deepspeed", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wrong_family_says_what_was_found(models: dict[str, Path], tmp_path: Path) -> None:
    data = build_synthetic_dataset(tmp_path / "data", count=2)
    config = write_profile(
        tmp_path / "p", model_type="sdxl", model_dir=models["sd15"], directories=[{"path": str(data)}]
    )
    res = _run_trainer(config)
    assert res.returncode == 1
    assert f"model.type = 'sdxl' but {models['sd15']} holds a sd15 model" in res.stderr


def test_empty_dataset_says_which_buckets_dropped(models: dict[str, Path], tmp_path: Path) -> None:
    data = build_synthetic_dataset(tmp_path / "data", count=3)
    config = write_profile(
        tmp_path / "p",
        model_type="sd15",
        model_dir=models["sd15"],
        directories=[{"path": str(data)}],
        micro_batch_size_per_gpu=4,
    )
    res = _run_trainer(config)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "the dataset is empty after bucketing (global batch 4" in res.stderr
    assert "bucket 32x32 (ar 1.0): 3 examples after repeats, 3 dropped" in res.stderr


def test_profile_errors_name_file_and_key(tmp_path: Path, models: dict[str, Path]) -> None:
    from engine.trainer.config import TrainConfigError, load_train_config

    data = build_synthetic_dataset(tmp_path / "data", count=1)
    config = write_profile(
        tmp_path / "p", model_type="sd15", model_dir=models["sd15"], directories=[{"path": str(data)}]
    )
    text = config.read_text()
    config.write_text(text.replace("rank = 4", "rank = 4\nalpha = 8"))
    with pytest.raises(TrainConfigError, match=r"main.toml: adapter.alpha: not allowed"):
        load_train_config(config)
    # A type only diffusion-pipe trains: the message lists exactly what the built-in trainer has families for.
    from engine.trainer.families import FAMILY_CLASSES

    config.write_text(text.replace('type = "sd15"', 'type = "wan"'))
    with pytest.raises(TrainConfigError) as caught:
        load_train_config(config)
    trains = re.search(r"model\.type: the built-in trainer trains (.*) \(found 'wan'\)", str(caught.value))
    assert trains is not None, str(caught.value)
    assert set(trains.group(1).split(", ")) == set(FAMILY_CLASSES)


def test_optimizer_names() -> None:
    from engine.trainer.optim import OptimizerError, build_optimizer, build_scheduler, lr_lambda

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(
        build_optimizer({"type": "adamw", "lr": 1e-3, "betas": [0.9, 0.99]}, [{"params": p}]),
        torch.optim.AdamW,
    )
    try:
        import pytorch_optimizer  # noqa: F401
    except ImportError:
        with pytest.raises(OptimizerError, match="needs the pytorch_optimizer package"):
            build_optimizer({"type": "Prodigy", "lr": 1.0}, [{"params": p}])
    f = lr_lambda("cosine", 2, 10)
    assert [round(f(s), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_lambda("linear", 0, 4)(2) == 0.5
    sched = build_scheduler(torch.optim.SGD(p, lr=1.0), "constant", 4, 10)
    assert sched.get_last_lr() == [0.25]


def test_resume_explains_dataset_changes(tmp_path: Path) -> None:
    from engine.trainer.rundir import explain_dataset_change, write_manifest

    data = build_synthetic_dataset(tmp_path / "data", count=3)
    ds = {"resolutions": [32], "directory": [{"path": str(data)}]}
    write_manifest(tmp_path, plan_buckets(ds, tmp_path, 1))
    assert explain_dataset_change(tmp_path, plan_buckets(ds, tmp_path, 1)) == []
    (data / "img000.txt").write_text("new words")
    (data / "img002.png").unlink()
    Image.new("RGB", (32, 32)).save(data / "extra.png")
    (data / "extra.txt").write_text("extra")
    lines = explain_dataset_change(tmp_path, plan_buckets(ds, tmp_path, 1))
    assert lines == [
        "1 file(s) added: extra.png",
        "1 file(s) removed: img002.png",
        "1 file(s) changed (size, mtime, caption or bucket): img000.png",
    ]


def test_resume_without_checkpoint_and_secret_free_profile_copies(tmp_path: Path) -> None:
    from engine.trainer.rundir import ResumeError, copy_profile, find_resume_dir, new_run_dir

    with pytest.raises(ResumeError, match="no run folder in .* holds a DeepSpeed checkpoint"):
        find_resume_dir(tmp_path / "out", None)
    run = new_run_dir(tmp_path / "out")
    (run / "latest").write_text("global_step3")
    (run / "global_step3").mkdir()
    assert find_resume_dir(tmp_path / "out", None) == (run, None)
    assert find_resume_dir(tmp_path / "out", "global_step3") == (run, "global_step3")
    with pytest.raises(ResumeError, match="global_step9"):
        find_resume_dir(tmp_path / "out", "global_step9")
    key = "0123456789abcdef0123456789abcdef01234567"
    src = tmp_path / "main.toml"
    src.write_text(f"epochs = 1\n[monitoring]\nenable_wandb = true\nwandb_api_key = '{key}'\n")
    copy_profile(src, run)
    copied = (run / "main.toml").read_text()
    assert key not in copied and "enable_wandb = true" in copied


@pytest.mark.parametrize(
    ("key", "found"),
    [
        ("conditioner.embedders.1.model.ln_final.weight", "sdxl"),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd15"),
        ("double_blocks.0.img_attn.qkv.weight", "flux"),
    ],
)
def test_single_file_family_detection(tmp_path: Path, models: dict[str, Path], key: str, found: str) -> None:
    from safetensors.torch import save_file

    from engine.trainer.families import get_family
    from engine.trainer.family import ModelLoadError, detect_single_file_family

    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(1), "model.diffusion_model.out.2.weight": torch.zeros(1)}, str(path))
    assert detect_single_file_family(path) == found
    fam = get_family("sdxl")({"checkpoint_path": str(path)}, torch.float32, torch.device("cpu"))
    if found == "sdxl":
        fam.check_family()
    else:
        with pytest.raises(ModelLoadError, match=f"model.type = 'sdxl' but {path} holds a {found} model"):
            fam.check_family()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read as safetensors"):
        detect_single_file_family(tmp_path / "junk.safetensors")


def test_cache_only_without_the_launcher(models: dict[str, Path], tmp_path: Path) -> None:
    data = build_synthetic_dataset(tmp_path / "data", count=2)
    config = write_profile(
        tmp_path / "p", model_type="sd15", model_dir=models["sd15"], directories=[{"path": str(data)}]
    )
    first = _run_trainer(config, "--cache_only")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "caching latents: 2/2" in first.stdout and "cache: 2 latents encoded, 0 reused" in first.stdout
    again = _run_trainer(config, "--cache_only")
    assert "cache: 0 latents encoded, 2 reused; 0 captions encoded, 3 reused" in again.stdout
    assert not (tmp_path / "p" / "out").exists()  # caching alone makes no run folder


def test_resume_refuses_a_checkpoint_of_another_family(tmp_path: Path) -> None:
    from engine.trainer.rundir import ResumeError, check_trainer_identity, write_trainer_identity

    write_trainer_identity(tmp_path, {"model_type": "sd15", "rank": 4})
    check_trainer_identity(tmp_path, {"model_type": "sd15", "rank": 4})
    with pytest.raises(ResumeError, match="model_type: checkpoint has 'sd15', profile has 'sdxl'"):
        check_trainer_identity(tmp_path, {"model_type": "sdxl", "rank": 4})


def test_sdxl_single_file_loads_like_the_diffusers_folder(tmp_path: Path) -> None:
    """A Pony/Illustrious-style single file (original key layout) + a local config folder, offline."""
    from tiny_models import save_single_file_sdxl

    from engine.trainer.families import get_family

    folder = build_tiny_sdxl(tmp_path / "xl", te2_hidden=48)
    single = save_single_file_sdxl(folder, tmp_path / "tiny_xl.safetensors")
    cls = get_family("sdxl")
    from_file = cls(
        {"checkpoint_path": str(single), "diffusers_config": str(folder)}, torch.float32, torch.device("cpu")
    )
    from_file.load()
    ref = cls({"diffusers_path": str(folder)}, torch.float32, torch.device("cpu"))
    ref.load()
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        got, want = getattr(from_file, part).state_dict(), getattr(ref, part).state_dict()
        assert set(got) == set(want), part
        assert all(torch.equal(got[k].float(), want[k].float()) for k in want), part
    a, b = from_file.encode_prompts(["a red square"])[0], ref.encode_prompts(["a red square"])[0]
    for k in b:  # same weights; the loaders may pick different attention kernels (last-bit differences)
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    assert from_file.identity("vae") != ref.identity("vae")  # different sources never share a cache


def test_every_builtin_type_has_an_importable_family() -> None:
    from engine.trainer.families import FAMILY_CLASSES, get_family
    from engine.trainer.family import Family
    from profiles.model_types import BUILTIN_TYPES

    assert set(FAMILY_CLASSES) == set(BUILTIN_TYPES)
    for name in FAMILY_CLASSES:
        family = get_family(name)
        assert issubclass(family, Family) and family.name == name
