"""The built-in trainer end to end under the real deepspeed launcher on CPU (tiny random models).

Runs are shared between assertions (module-scoped fixtures) to keep the suite within its time budget.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    build_tiny_sd15,
    build_tiny_sdxl,
    launch_trainer,
    run_dir_of,
    run_metrics,
    write_profile,
)

from engine.demo import build_synthetic_dataset

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="module")
def sd15_model(work: Path) -> Path:
    return build_tiny_sd15(work / "tiny_sd15")


@pytest.fixture(scope="module")
def sdxl_model(work: Path) -> Path:
    return build_tiny_sdxl(work / "tiny_sdxl")


@pytest.fixture(scope="module")
def shapes(work: Path) -> Path:
    return build_synthetic_dataset(work / "shapes", count=8)


def _sd15_profile(folder: Path, model: Path, data: Path, **main: object) -> Path:
    settings: dict[str, object] = {
        "epochs": 16,
        "micro_batch_size_per_gpu": 2,
        "checkpoint_every_n_steps": 16,
        "save_every_n_epochs": 8,
        "lr": 2e-2,
    }
    settings.update(main)
    return write_profile(
        folder, model_type="sd15", model_dir=model, directories=[{"path": str(data)}], **settings
    )


@pytest.fixture(scope="module")
def sd15_run(work: Path, sd15_model: Path, shapes: Path) -> tuple[Path, str]:
    config = _sd15_profile(work / "sd15_a", sd15_model, shapes)
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out


def test_run_layout_and_progress_lines(sd15_run: tuple[Path, str]) -> None:
    run_dir, out = sd15_run
    assert re.fullmatch(r"\d{8}_\d{2}-\d{2}-\d{2}", run_dir.name)
    assert (run_dir / "main.toml").is_file() and (run_dir / "dataset.toml").is_file()
    for save in ("epoch8", "epoch16"):
        assert (run_dir / save / "pytorch_lora_weights.safetensors").is_file()
        assert (run_dir / save / "lora_kohya.safetensors").is_file()
        assert not (run_dir / save / "tmp").exists()
    assert not (run_dir / "epoch1").exists()
    assert (run_dir / "latest").read_text().strip() == "global_step64"
    assert sorted(p.name for p in run_dir.glob("global_step*")) == [
        f"global_step{n}" for n in (16, 32, 48, 64)
    ]
    step_lines = re.findall(
        r"^steps: (\d+) loss: ([\d.]+) iter time \(s\): ([\d.]+) samples/sec: ([\d.]+)$", out, re.M
    )
    assert [int(s[0]) for s in step_lines] == list(range(1, 65))
    metrics = run_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 65))
    assert all(
        m["total_steps"] == 64 and m["total_epochs"] == 16 and m["lr"] == pytest.approx(2e-2) for m in metrics
    )
    assert all(m["grad_norm"] is not None and m["grad_norm"] > 0 for m in metrics)
    assert [float(s[1]) for s in step_lines] == pytest.approx([m["loss"] for m in metrics], abs=1e-4)
    assert out.index('"event": "complete"') < out.index("TRAINING COMPLETE!")
    assert "Started new epoch: 16" in out and f"Saving model to directory {run_dir / 'epoch16'}" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/epoch_loss"} <= tags
    tb_loss = [e.value for e in events.Scalars("train/loss")]
    assert tb_loss == pytest.approx([m["loss"] for m in metrics], rel=1e-6)


def test_loss_falls_when_overfitting(sd15_run: tuple[Path, str]) -> None:
    losses = [m["loss"] for m in run_metrics(sd15_run[0])]
    # Same seed -> same curve, so this margin is reproducible; a LoRA that does not learn stays flat.
    first, last = sum(losses[:16]) / 16, sum(losses[-16:]) / 16
    assert last < 0.96 * first, losses


def _pipe(kind: str, model: Path):  # noqa: ANN202 - a diffusers pipeline
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if kind == "sd15":
        return StableDiffusionPipeline.from_pretrained(
            model, safety_checker=None, requires_safety_checker=False
        )
    return StableDiffusionXLPipeline.from_pretrained(model)


@torch.no_grad()
def _probe_output(unet: torch.nn.Module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs: dict[str, object] = {"encoder_hidden_states": probe["text.encoder_hidden_states"]}
    if "text.text_embeds" in probe:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": probe["text.text_embeds"],
            "time_ids": probe["meta.time_ids"],
        }
    return unet(probe["sample"], probe["timestep"], **kwargs).sample


def _check_reload(kind: str, model: Path, save_dir: Path) -> None:
    """Both saved files, loaded by diffusers into a fresh pipeline, reproduce the trained model's output."""
    probe = load_file(str(save_dir / "probe.safetensors"))
    base = _probe_output(_pipe(kind, model).unet, probe)
    assert (base - probe["output"]).abs().max() > 1e-3, "the LoRA did not change the output; test is vacuous"
    for source in (save_dir, save_dir / "lora_kohya.safetensors"):
        pipe = _pipe(kind, model)
        pipe.load_lora_weights(str(source))
        got = _probe_output(pipe.unet, probe)
        torch.testing.assert_close(
            got, probe["output"], rtol=1e-4, atol=1e-5, msg=f"{source} reloads differently"
        )


def test_sd15_lora_reloads_in_diffusers(sd15_run: tuple[Path, str], sd15_model: Path) -> None:
    _check_reload("sd15", sd15_model, sd15_run[0] / "epoch16")


def _comfy_unet_key_map(unet: torch.nn.Module, sgm: bool) -> dict[str, str]:
    """What ComfyUI builds for a UNet: `lora_unet_<ldm path with _>` from the original model's keys, and,
    for diffusers-named files, `lora_unet_<diffusers path with _>`. The LDM keys come from diffusers' own
    LDM->diffusers converter run in reverse over our SGM mapping (checked in test_trainer_units)."""
    from engine.trainer.sgm import diffusers_to_sgm

    out = {}
    for name in unet.state_dict():
        if not name.endswith(".weight"):
            continue
        path = name[: -len(".weight")]
        key = diffusers_to_sgm(path, unet.config) if sgm else path
        out["lora_unet_" + key.replace(".", "_")] = path
    return out


def _check_kohya(save_dir: Path, kind: str, model: Path, rank: int) -> None:
    from peft.utils import get_peft_model_state_dict  # noqa: F401 - ensures peft is importable for the pipe

    kohya = load_file(str(save_dir / "lora_kohya.safetensors"))
    diff = load_file(str(save_dir / "pytorch_lora_weights.safetensors"))
    unet = _pipe(kind, model).unet
    key_map = _comfy_unet_key_map(unet, sgm=(kind == "sdxl"))
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    assert stems and all(s in key_map for s in stems), sorted(stems - set(key_map))[:3]
    if kind == "sdxl":
        assert all(
            s.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
            for s in stems
        )
    assert len(stems) * 2 == len(diff)
    for stem in stems:
        assert kohya[f"{stem}.alpha"].item() == rank
        module = key_map[stem]
        down, up = kohya[f"{stem}.lora_down.weight"], kohya[f"{stem}.lora_up.weight"]
        # ComfyUI applies up @ down * alpha / rank(down): must equal diffusers' B @ A * (lora_alpha / r).
        torch.testing.assert_close(
            up @ down * (kohya[f"{stem}.alpha"].item() / down.shape[0]),
            diff[f"unet.{module}.lora_B.weight"] @ diff[f"unet.{module}.lora_A.weight"],
        )


def test_sd15_kohya_keys_follow_comfyui_map(sd15_run: tuple[Path, str], sd15_model: Path) -> None:
    _check_kohya(sd15_run[0] / "epoch16", "sd15", sd15_model, rank=4)


def test_two_ranks_zero2_equal_one_rank_with_twice_the_batch(
    work: Path, sd15_model: Path, shapes: Path, sd15_run: tuple[Path, str]
) -> None:
    config = _sd15_profile(
        work / "sd15_dp2",
        sd15_model,
        shapes,
        micro_batch_size_per_gpu=1,
        epochs=2,
        checkpoint_every_n_steps=100,
        save_every_n_epochs=2,
        zero_stage=2,
    )
    code, out = launch_trainer(config, num_gpus=2)
    assert code == 0, out[-6000:]
    two = run_metrics(run_dir_of(out))
    one = run_metrics(sd15_run[0])[: len(two)]
    assert len(two) == 8
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=2e-3, abs=1e-4)
    assert [m["grad_norm"] for m in two] == pytest.approx([m["grad_norm"] for m in one], rel=5e-3)


@pytest.fixture(scope="module")
def sdxl_run(work: Path, sdxl_model: Path) -> tuple[Path, str, Path]:
    wide = build_synthetic_dataset(work / "wide", count=4, size=(48, 32))
    square = build_synthetic_dataset(work / "square", count=4, size=(32, 32))
    config = write_profile(
        work / "sdxl",
        model_type="sdxl",
        model_dir=sdxl_model,
        directories=[{"path": str(wide)}, {"path": str(square), "num_repeats": 1}],
        dataset_settings={"resolutions": [48], "enable_ar_bucket": True, "ar_buckets": [1.0, 1.5]},
        epochs=3,
        checkpoint_every_n_steps=3,
        save_every_n_epochs=3,
    )
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out, config


def test_sdxl_buckets_saves_and_reload(sdxl_run: tuple[Path, str, Path], sdxl_model: Path) -> None:
    run_dir, out, _ = sdxl_run
    assert "bucket 48x48 (ar 1.0): 4 examples" in out and "bucket 64x32 (ar 1.5): 4 examples" in out
    assert [m["step"] for m in run_metrics(run_dir)] == list(range(1, 25))
    _check_reload("sdxl", sdxl_model, run_dir / "epoch3")
    _check_kohya(run_dir / "epoch3", "sdxl", sdxl_model, rank=4)


def test_resume_continues_at_the_same_step_with_the_same_loss(sdxl_run: tuple[Path, str, Path]) -> None:
    run_dir, _, config = sdxl_run
    full = run_metrics(run_dir)
    final = load_file(str(run_dir / "epoch3" / "pytorch_lora_weights.safetensors"))
    # As after a crash at step 11: the newest checkpoint is global_step9 (mid epoch 2).
    (run_dir / "latest").write_text("global_step9")
    for name in (
        "global_step12",
        "global_step15",
        "global_step18",
        "global_step21",
        "global_step24",
        "epoch3",
    ):
        shutil.rmtree(run_dir / name)
    # save_quit (touched in the run folder) stops after the next step with a save and a checkpoint.
    (run_dir / "save_quit").touch()
    code, out = launch_trainer(config, args=("--resume_from_checkpoint",))
    assert code == 0, out[-6000:]
    assert run_dir_of(out) == run_dir
    assert "resumed from" in out and "at step 9 (epoch 2, batch 1)" in out
    assert "TRAINING COMPLETE!" not in out and not (run_dir / "save_quit").exists()
    assert (run_dir / "latest").read_text().strip() == "global_step10"
    assert (run_dir / "step10" / "lora_kohya.safetensors").is_file()
    code, out = launch_trainer(config, args=("--resume_from_checkpoint", run_dir.name))
    assert code == 0, out[-6000:]
    assert "at step 10 (epoch 2, batch 2)" in out and "TRAINING COMPLETE!" in out
    resumed = run_metrics(run_dir)[len(full) :]
    assert [m["step"] for m in resumed] == list(range(10, 25))
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in full[9:]], rel=1e-5, abs=1e-6)
    again = load_file(str(run_dir / "epoch3" / "pytorch_lora_weights.safetensors"))
    for k, v in final.items():
        torch.testing.assert_close(again[k], v, rtol=1e-5, atol=1e-6)


def test_every_option_together_runs(
    work: Path, sd15_model: Path, shapes: Path, sd15_run: tuple[Path, str]
) -> None:
    """bf16 base weights, ZeRO 1, grad accumulation, activation checkpointing, cosine + warmup, v-pred with
    min-SNR, noise offset, caption dropout, shuffled tags, LoRA dropout, init_from_existing."""
    config = _sd15_profile(
        work / "sink",
        sd15_model,
        shapes,
        epochs=2,
        micro_batch_size_per_gpu=1,
        gradient_accumulation_steps=2,
        zero_stage=1,
        activation_checkpointing=True,
        lr_scheduler="cosine",
        warmup_steps=2,
        save_every_n_epochs=1,
        checkpoint_every_n_steps=100,
    )
    text = config.read_text()
    previous = sd15_run[0] / "epoch16"
    text = text.replace(
        'dtype = "float32"\n',
        'dtype = "bfloat16"\nv_pred = true\nmin_snr_gamma = 5\nnoise_offset = 0.05\ncaption_dropout = 0.5\n',
        1,
    )
    text = text.replace("rank = 4", f'rank = 4\ndropout = 0.1\ninit_from_existing = "{previous}"')
    config.write_text(text)
    ds = config.parent / "dataset.toml"
    ds.write_text("shuffle_tags = true\n" + ds.read_text())
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    # Every tensor of the earlier run's LoRA (same targets: every Linear of the UNet blocks) is loaded.
    saved = load_file(str(previous / "pytorch_lora_weights.safetensors"))
    assert f"adapter.init_from_existing: loaded {len(saved)} tensors" in out
    metrics = run_metrics(run_dir_of(out))
    assert [m["step"] for m in metrics] == list(range(1, 9))
    lrs = [m["lr"] for m in metrics]
    assert lrs[0] == pytest.approx(1e-2) and lrs[1] == pytest.approx(2e-2) and lrs[-1] < lrs[2]
    assert all(m["loss"] is not None and m["loss"] > 0 for m in metrics)
