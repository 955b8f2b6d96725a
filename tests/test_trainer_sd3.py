"""The sd3 family of the built-in trainer: encoders and the denoiser call checked against diffusers'
StableDiffusion3Pipeline, bad input, and end to end under the real deepspeed launcher on CPU (tiny random model).

References come from diffusers (encode_prompt, a one-step pipeline call, load_lora_weights), never from
engine.trainer.sd3 itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import assert_resume_repeats_the_run, launch_trainer, run_dir_of, run_metrics, write_profile
from tiny_sd3 import build_tiny_sd3

from engine.demo import build_synthetic_dataset
from engine.trainer.family import ModelLoadError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sd3")


@pytest.fixture(scope="module")
def sd3_model(work: Path) -> Path:
    return build_tiny_sd3(work / "tiny_sd3")


def _family(root: Path, **extra: object):  # noqa: ANN202 - engine.trainer.sd3.SD3
    from engine.trainer.sd3 import SD3

    return SD3({"type": "sd3", "diffusers_path": str(root), **extra}, torch.float32, CPU)


def _pipe(root: Path):  # noqa: ANN202 - a diffusers pipeline
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(root)


# ---- encoders and the forward against diffusers -----------------------------------------------------------
def test_text_latents_and_forward_match_diffusers(sd3_model: Path) -> None:
    fam = _family(sd3_model)
    fam.load()
    pipe = _pipe(sd3_model)
    prompts = ["a red circle, simple, grey background", ""]
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, device=CPU, do_classifier_free_guidance=False
    )
    assert embeds.shape == (2, 77 + 256, 96)  # CLIP-L + CLIP-G padded to T5's width, then T5's 256 tokens
    ours = fam.encode_prompts(prompts)
    for i in range(2):
        torch.testing.assert_close(ours[i]["encoder_hidden_states"], embeds[i])
        torch.testing.assert_close(ours[i]["pooled_projections"], pooled[i])

    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    dist = pipe.vae.encode(pixels).latent_dist
    want = (dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(fam.encode_image(pixels), want)

    # One Euler step of the pipeline from sigma 1 to 0 is x - v(x, t=1000): our denoise at t = 1 must be v.
    latents = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    stepped = pipe(
        prompt_embeds=embeds[:1],
        pooled_prompt_embeds=pooled[:1],
        latents=latents,
        height=32,
        width=32,
        num_inference_steps=1,
        guidance_scale=1.0,
        output_type="latent",
    ).images
    kwargs = fam.unet_kwargs({k: v.unsqueeze(0) for k, v in ours[0].items()}, {})
    with torch.no_grad():
        velocity = fam.denoise(fam.transformer, latents, torch.tensor([1.0]), kwargs)
    torch.testing.assert_close(latents - velocity, stepped, rtol=1e-4, atol=1e-5)


def test_lora_targets_every_linear_of_the_joint_blocks(sd3_model: Path) -> None:
    from engine.trainer.lora_io import add_lora

    fam = _family(sd3_model)
    fam.load()
    targets = fam.lora_target_modules()
    # attention (both streams), SD3.5's second attention, both MLPs and the AdaLN modulations
    for part in (".attn.to_q", ".attn.add_k_proj", ".attn2.to_v", ".ff.net.2", ".ff_context.net.0.proj"):
        assert any(t.endswith(part) for t in targets), part
    assert any(".norm1.linear" in t for t in targets)
    assert all(t.startswith("transformer_blocks.") for t in targets)  # not the embedders or proj_out
    add_lora(fam.transformer, fam, 4, 0.0, False, exclude_modules=r".*\.ff(_context)?\..*")
    lora = [n for n, _ in fam.transformer.named_parameters() if "lora_A" in n]
    assert lora and not any(".ff." in n or ".ff_context." in n for n in lora)


# ---- bad input --------------------------------------------------------------------------------------------
def test_wrong_or_incomplete_folders_are_clear_errors(tmp_path: Path, sd3_model: Path) -> None:
    from engine.trainer.family import detect_folder_family

    assert detect_folder_family(sd3_model) == "sd3"
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match=r"holds a flux model; expected an SD3"):
        _family(flux).check_family()

    no_t5 = tmp_path / "no_t5"
    shutil.copytree(sd3_model, no_t5, ignore=shutil.ignore_patterns("text_encoder_3"))
    with pytest.raises(ModelLoadError, match=r"has no text_encoder_3/ folder \(the T5"):
        _family(no_t5).check_family()

    (no_t5 / "text_encoder_3").mkdir()
    shutil.rmtree(no_t5 / "transformer")
    shutil.copytree(sd3_model / "vae", no_t5 / "transformer")
    with pytest.raises(ModelLoadError, match=r"transformer holds a AutoencoderKL; sd3 needs"):
        _family(no_t5).check_family()

    from engine.trainer.sd3 import SD3

    with pytest.raises(ModelLoadError, match=r"diffusers_path: required for sd3.*checkpoint_path"):
        SD3(
            {"type": "sd3", "checkpoint_path": "/x/sd3.5_medium.safetensors"}, torch.float32, CPU
        ).check_family()
    with pytest.raises(ModelLoadError, match="timestep_sample_method"):
        _family(sd3_model, timestep_sample_method="cosmap")


# ---- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(work: Path) -> Path:
    return build_synthetic_dataset(work / "shapes", count=8)


def _profile(folder: Path, model: Path, data: Path, **main: object) -> Path:
    settings: dict[str, object] = {
        "epochs": 10,
        "micro_batch_size_per_gpu": 2,
        "save_every_n_epochs": 10,
        "lr": 2e-2,
    }
    settings.update(main)
    config = write_profile(
        folder, model_type="sd3", model_dir=model, directories=[{"path": str(data)}], **settings
    )
    # diffusion-pipe's SD3 settings: logit-normal t with a fixed shift (shift wins over flux_shift).
    text = config.read_text().replace(
        'dtype = "float32"\n', 'dtype = "float32"\ntimestep_sample_method = "logit_normal"\nshift = 3.0\n', 1
    )
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def sd3_run(work: Path, sd3_model: Path, shapes: Path) -> tuple[Path, str]:
    code, out = launch_trainer(_profile(work / "run", sd3_model, shapes, checkpoint_every_n_steps=16))
    assert code == 0, out[-6000:]
    return run_dir_of(out), out


@pytest.mark.slow
def test_sd3_loss_falls_below_an_untrained_control(
    work: Path, sd3_model: Path, shapes: Path, sd3_run: tuple[Path, str]
) -> None:
    """lr = 0 sees exactly the same noise, timesteps and batches: the gap is what the LoRA learned."""
    code, out = launch_trainer(_profile(work / "control", sd3_model, shapes, lr=0.0))
    assert code == 0, out[-6000:]
    control = [m["loss"] for m in run_metrics(run_dir_of(out))]
    trained = [m["loss"] for m in run_metrics(sd3_run[0])]
    assert len(trained) == len(control) == 40
    assert control[0] == pytest.approx(trained[0], rel=1e-5)  # same inputs: step 1 runs before any update
    assert sum(trained[-10:]) < 0.9 * sum(control[-10:]), (trained, control)
    assert sum(trained[-10:]) < 0.95 * sum(trained[:10]), trained  # and falls within the run itself


@torch.no_grad()
def _probe_output(transformer: torch.nn.Module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    # The call StableDiffusion3Pipeline makes, its timestep being sigma * 1000.
    return transformer(
        hidden_states=probe["sample"],
        timestep=probe["timestep"].float() * 1000,
        encoder_hidden_states=probe["text.encoder_hidden_states"],
        pooled_projections=probe["text.pooled_projections"],
    ).sample


@pytest.mark.slow
def test_sd3_saves_a_lora_that_diffusers_reloads(sd3_run: tuple[Path, str], sd3_model: Path) -> None:
    from safetensors import safe_open

    run_dir, out = sd3_run
    assert "TRAINING COMPLETE!" in out
    save_dir = run_dir / "epoch10"
    assert sorted(p.name for p in save_dir.iterdir()) == [
        "probe.safetensors",
        "pytorch_lora_weights.safetensors",
    ]
    keys = list(load_file(str(save_dir / "pytorch_lora_weights.safetensors")))
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert any(".attn2." in k for k in keys) and any(".ff_context." in k for k in keys)
    with safe_open(str(save_dir / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta.get("transformer.lora_alpha", meta.get("lora_alpha")) == 4

    probe = load_file(str(save_dir / "probe.safetensors"))
    assert float(probe["timestep"]) == pytest.approx(0.5)
    base = _probe_output(_pipe(sd3_model).transformer, probe)
    assert (base - probe["output"]).abs().max() > 1e-3, "the LoRA did not change the output; test is vacuous"
    pipe = _pipe(sd3_model)
    pipe.load_lora_weights(str(save_dir))
    torch.testing.assert_close(_probe_output(pipe.transformer, probe), probe["output"], rtol=1e-4, atol=1e-5)


def test_sd3_resume_continues_at_the_same_step_with_the_same_loss(
    sd3_run: tuple[Path, str], work: Path
) -> None:
    assert_resume_repeats_the_run(sd3_run[0], work / "run" / "main.toml", 16, "epoch10")
