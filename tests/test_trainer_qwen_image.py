"""The qwen_image family of the built-in trainer: encoders against diffusers' QwenImagePipeline, the loading
paths diffusion-pipe reads (diffusers folder, single-file overrides), wrong-family input, and end to end under
the real deepspeed launcher on CPU with a tiny random model.

References come from diffusers' own code (QwenImagePipeline.encode_prompt, the Edit pipeline's VAE encoding,
the pipeline's packing helpers and load_lora_weights), never from engine.trainer.qwen_image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import assert_resume_repeats_the_run, launch_trainer, run_dir_of, run_metrics, write_profile
from tiny_qwen_image import build_tiny_qwen_image

from engine.demo import build_synthetic_dataset
from engine.trainer.family import ModelLoadError, detect_folder_family, detect_single_file_family
from engine.trainer.qwen_image import QwenImage

CPU = torch.device("cpu")


def _family(**cfg: object) -> QwenImage:
    return QwenImage({"type": "qwen_image", **cfg}, torch.float32, CPU)


def _header_file(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qwen")


@pytest.fixture(scope="module")
def model(work: Path) -> Path:
    return build_tiny_qwen_image(work / "tiny_qwen_image")


def _pipe(root: Path) -> Any:
    from diffusers import QwenImagePipeline

    return QwenImagePipeline.from_pretrained(root)


# ---- detection and bad input ------------------------------------------------------------------------------
def test_detection_names_qwen_image(tmp_path: Path, model: Path) -> None:
    diffusers_file = _header_file(tmp_path / "q.safetensors", ["txt_norm.weight", "img_in.weight"])
    comfy_file = _header_file(tmp_path / "qc.safetensors", ["model.diffusion_model.txt_norm.weight"])
    flux_file = _header_file(
        tmp_path / "f.safetensors", ["double_blocks.0.img_mod.lin.weight", "txt_in.weight"]
    )
    assert detect_single_file_family(diffusers_file) == "qwen_image"
    assert detect_single_file_family(comfy_file) == "qwen_image"
    assert detect_single_file_family(flux_file) == "flux"  # Flux's img_mod / txt_in do not count
    assert detect_folder_family(model) == "qwen_image"


def test_wrong_family_input_is_a_clear_error(tmp_path: Path, model: Path) -> None:
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match=r"diffusers_path .*flux.* holds a flux model"):
        _family(diffusers_path=str(flux)).check_family()
    flux_file = _header_file(tmp_path / "flux1-dev.safetensors", ["double_blocks.0.img_attn.qkv.weight"])
    with pytest.raises(
        ModelLoadError, match=r"model.transformer_path .*flux1-dev.* holds a flux transformer"
    ):
        _family(diffusers_path=str(model), transformer_path=str(flux_file)).check_family()
    t5 = _header_file(tmp_path / "t5xxl.safetensors", ["encoder.block.0.layer.0.SelfAttention.q.weight"])
    with pytest.raises(ModelLoadError, match=r"model.text_encoder_path: .*t5xxl.* is not a Qwen2.5-VL"):
        _family(diffusers_path=str(model), text_encoder_path=str(t5)).check_family()
    with pytest.raises(ModelLoadError, match="model.diffusers_path: required"):
        _family(transformer_path=str(flux_file)).check_family()
    # A transformer folder of another class is named by its config.
    other = tmp_path / "sd3_transformer"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(ModelLoadError, match="holds a SD3Transformer2DModel"):
        _family(diffusers_path=str(model), transformer_path=str(other)).check_family()
    # A ComfyUI-named VAE file does not fit the diffusers VAE: the error says so.
    comfy_vae = _header_file(
        tmp_path / "qwen_image_vae.safetensors", ["first_stage_model.encoder.conv1.weight"]
    )
    with pytest.raises(ModelLoadError, match=r"model.vae_path: .*ComfyUI's VAE is not supported"):
        _family(diffusers_path=str(model), vae_path=str(comfy_vae)).load()


# ---- encoders against diffusers ---------------------------------------------------------------------------
def test_text_and_latents_match_diffusers(model: Path) -> None:
    from diffusers import QwenImageEditPipeline

    fam = _family(diffusers_path=str(model))
    fam.load()
    pipe = _pipe(model)
    prompts = ["a red circle", "blue", ""]
    embeds, mask = pipe.encode_prompt(prompts, device=CPU)
    ours = fam.encode_prompts(prompts)
    assert len({o["prompt_embeds"].shape[0] for o in ours}) == 3  # each cached at its own length
    for i in range(3):
        torch.testing.assert_close(ours[i]["prompt_embeds"], embeds[i][mask[i].bool()])
    batch = fam.collate_text(ours)  # the batch the loop builds is the pipeline's padded one
    torch.testing.assert_close(batch["prompt_embeds"], embeds)
    torch.testing.assert_close(batch["prompt_embeds_mask"], mask)
    # The VAE side: diffusers' Edit pipeline encodes a reference image with the mode and the latent statistics.
    edit = QwenImageEditPipeline(
        scheduler=pipe.scheduler,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        processor=None,
        transformer=pipe.transformer,
    )
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want = edit._encode_vae_image(pixels[:, :, None], None)[:, :, 0]
    torch.testing.assert_close(fam.encode_image(pixels), want)
    assert fam.vae_scale_factor == pipe.vae_scale_factor == 8


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k, v in sa.items():
        torch.testing.assert_close(sb[k], v)


def test_single_file_overrides_load_the_same_model(tmp_path: Path, model: Path) -> None:
    """transformer_path, text_encoder_path and vae_path files give the folder's model; a transformer file with
    ComfyUI's `model.diffusion_model.` prefix too."""
    transformer = model / "transformer" / "diffusion_pytorch_model.safetensors"
    plain = shutil.copy(transformer, tmp_path / "qwen_image_bf16.safetensors")
    prefixed = tmp_path / "qwen_image_prefixed.safetensors"
    save_file(
        {f"model.diffusion_model.{k}": v for k, v in load_file(str(transformer)).items()}, str(prefixed)
    )
    te = shutil.copy(model / "text_encoder" / "model.safetensors", tmp_path / "qwen_2.5_vl_7b.safetensors")
    vae = shutil.copy(model / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae.safetensors")
    folder = _family(diffusers_path=str(model))
    files = _family(
        diffusers_path=str(model), transformer_path=str(plain), text_encoder_path=str(te), vae_path=str(vae)
    )
    comfy = _family(diffusers_path=str(model), transformer_path=str(prefixed))
    for fam in (folder, files, comfy):
        fam.load()
    _same_weights(folder.transformer, files.transformer)
    _same_weights(folder.transformer, comfy.transformer)
    _same_weights(folder.text_encoder, files.text_encoder)
    torch.testing.assert_close(
        folder.encode_prompts(["a cat"])[0]["prompt_embeds"],
        files.encode_prompts(["a cat"])[0]["prompt_embeds"],
    )
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(folder.encode_image(pixels), files.encode_image(pixels))
    assert folder.identity("vae") != files.identity("vae")  # the cache follows where the weights came from


# ---- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(work: Path) -> Path:
    return build_synthetic_dataset(work / "shapes", count=8)


def _train(work: Path, name: str, model: Path, shapes: Path, lr: float) -> tuple[Path, str]:
    config = write_profile(
        work / name,
        model_type="qwen_image",
        model_dir=model,
        directories=[{"path": str(shapes)}],
        epochs=10,
        micro_batch_size_per_gpu=2,
        save_every_n_epochs=10,
        checkpoint_every_n_steps=16,
        lr=lr,
    )
    text = config.read_text().replace(
        'dtype = "float32"\n',
        'dtype = "float32"\ntimestep_sample_method = "logit_normal"\nflux_shift = true\n',
        1,
    )
    config.write_text(text)
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out


@pytest.fixture(scope="module")
def qwen_run(work: Path, model: Path, shapes: Path) -> tuple[Path, str]:
    return _train(work, "run", model, shapes, 2e-2)


@pytest.mark.slow
def test_qwen_image_loss_falls_below_an_untrained_control(
    work: Path, model: Path, shapes: Path, qwen_run: tuple[Path, str]
) -> None:
    """lr = 0 sees exactly the same noise, timesteps and batches: the gap is what the LoRA learned."""
    control = [m["loss"] for m in run_metrics(_train(work, "control", model, shapes, 0.0)[0])]
    trained = [m["loss"] for m in run_metrics(qwen_run[0])]
    assert control[0] == pytest.approx(trained[0], rel=1e-5)  # same inputs: step 1 runs before any update
    assert sum(trained[-10:]) < 0.9 * sum(control[-10:]), (trained, control)


@torch.no_grad()
def _probe_output(pipe: Any, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pipeline's transformer on the probe input, packed and unpacked by QwenImagePipeline's helpers."""
    sample = probe["sample"]
    b, c, h, w = sample.shape
    factor = pipe.vae_scale_factor
    out = pipe.transformer(
        hidden_states=pipe._pack_latents(sample, b, c, h, w),
        timestep=probe["timestep"].float(),
        encoder_hidden_states=probe["text.prompt_embeds"],
        encoder_hidden_states_mask=probe["text.prompt_embeds_mask"],
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return pipe._unpack_latents(out, h * factor, w * factor, factor)[:, :, 0]


@pytest.mark.slow
def test_qwen_image_trains_saves_and_reloads(qwen_run: tuple[Path, str], model: Path) -> None:
    from safetensors import safe_open

    run_dir, out = qwen_run
    assert "TRAINING COMPLETE!" in out
    losses = [m["loss"] for m in run_metrics(run_dir)]
    assert len(losses) == 40
    # Same seed -> same curve, so the margin is reproducible; a LoRA that does not learn stays flat.
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, losses
    save = run_dir / "epoch10"
    keys = list(load_file(str(save / "pytorch_lora_weights.safetensors")))
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    for module in ("attn.add_q_proj", "img_mlp.net.2", "txt_mod.1"):  # every Linear of the blocks
        assert any(f".transformer_blocks.1.{module}.lora_A" in k for k in keys), module
    with safe_open(str(save / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta.get("transformer.lora_alpha", meta.get("lora_alpha")) == 4
    probe = load_file(str(save / "probe.safetensors"))
    assert float(probe["timestep"]) == pytest.approx(0.5)
    base = _probe_output(_pipe(model), probe)
    assert (base - probe["output"]).abs().max() > 1e-3, "the LoRA did not change the output; test is vacuous"
    pipe = _pipe(model)
    pipe.load_lora_weights(str(save))
    torch.testing.assert_close(_probe_output(pipe, probe), probe["output"], rtol=1e-4, atol=1e-5)

    # The ComfyUI file: ComfyUI's QwenImage names are diffusers' (tests/test_trainer_comfy_lora.py checks that).
    from test_trainer_comfy_lora import _merged, check_saved_comfy_file

    assert sorted(p.name for p in save.iterdir()) == [
        "lora_comfy.safetensors",
        "probe.safetensors",
        "pytorch_lora_weights.safetensors",
    ]
    original = load_file(str(model / "transformer" / "diffusion_pytorch_model.safetensors"))
    merged = {k: v for k, v in _merged(pipe.transformer).items() if k.startswith("transformer_blocks.")}
    check_saved_comfy_file(save, "qwen_image", original, merged, hidden=0)


def test_qwen_image_resume_continues_at_the_same_step_with_the_same_loss(
    qwen_run: tuple[Path, str], work: Path
) -> None:
    assert_resume_repeats_the_run(qwen_run[0], work / "run" / "main.toml", 16, "epoch10")
