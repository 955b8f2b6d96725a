"""Tiny random SD1.5 / SDXL pipelines saved with save_pretrained, and a tokenizer built locally.

No hub access: every component comes from a config, like diffusers' own pipeline tests. The builders
`dpdeck demo` needs too (SD1.5, Flux, Chroma, the tokenizers) live in engine/demo_models.py and are imported
here, so the package never depends on tests/; the SDXL and single-file builders are the tests' own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from engine.demo_models import (
    build_tiny_chroma,
    build_tiny_flux,
    build_tiny_sd15,
    tiny_clip_config,
    tiny_vae,
    tiny_vae16,
    write_tiny_t5_tokenizer,
    write_tiny_tokenizer,
)

__all__ = [
    "build_tiny_chroma",
    "build_tiny_flux",
    "build_tiny_sd15",
    "build_tiny_sdxl",
    "tiny_clip_config",
    "tiny_vae",
    "tiny_vae16",
    "write_tiny_t5_tokenizer",
    "write_tiny_tokenizer",
]


def build_tiny_sdxl(out_dir: Path, seed: int = 0, te2_hidden: int = 32) -> Path:
    """A tiny random SDXL pipeline folder (two text encoders, text_time conditioning).

    te2_hidden != 32 gives the encoders different widths, as in real SDXL (768 / 1280): diffusers' single-file
    loader tells them apart by width.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=48 + te2_hidden,  # 6 * 8 time ids + pooled
        cross_attention_dim=32 + te2_hidden,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    cfg = tiny_clip_config(projection_dim=32)
    torch.manual_seed(seed + 2)
    te1 = CLIPTextModel(CLIPTextConfig(**cfg))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            **{**cfg, "hidden_size": te2_hidden, "projection_dim": te2_hidden, "num_attention_heads": 4}
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
        num_train_timesteps=1000,
    )
    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    te1.save_pretrained(out_dir / "text_encoder")
    te2.save_pretrained(out_dir / "text_encoder_2")
    scheduler.save_pretrained(out_dir / "scheduler")
    for sub in ("tokenizer", "tokenizer_2"):
        write_tiny_tokenizer(out_dir / sub)
        CLIPTokenizer.from_pretrained(out_dir / sub)  # fail here, not in the trainer, if it is malformed
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.31.0",
        "force_zeros_for_empty_prompt": True,
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def write_profile(
    folder: Path,
    *,
    model_type: str,
    model_dir: Path,
    directories: list[dict[str, object]],
    dataset_settings: dict[str, object] | None = None,
    lr: float = 5e-3,
    **main: object,
) -> Path:
    """A main.toml + dataset.toml pair for the built-in trainer; keyword args override main keys."""
    import tomlkit

    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "output_dir": str(folder / "out"),
        "dataset": "dataset.toml",
        "epochs": 2,
        "micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "save_every_n_epochs": 1,
        "seed": 7,
    }
    settings.update(main)
    doc = tomlkit.document()
    for k, v in settings.items():
        doc[k] = v
    doc["model"] = {"type": model_type, "diffusers_path": str(model_dir), "dtype": "float32"}
    doc["adapter"] = {"type": "lora", "rank": 4, "dtype": "float32"}
    doc["optimizer"] = {"type": "adamw", "lr": lr}
    (folder / "main.toml").write_text(tomlkit.dumps(doc))
    ds = tomlkit.document()
    ds["resolutions"] = [32]
    for k, v in (dataset_settings or {}).items():
        ds[k] = v
    ds["directory"] = directories
    (folder / "dataset.toml").write_text(tomlkit.dumps(ds))
    return folder / "main.toml"


def launch_trainer(
    config: Path,
    *,
    num_gpus: int = 1,
    args: tuple[str, ...] = (),
    timeout: float = 400,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run the trainer under the real deepspeed launcher on CPU; returns (exit code, stdout+stderr).

    on_line: called with each output line as it comes (to act on a running trainer, e.g. touch save_quit).
    """
    import os
    import subprocess
    import sys
    import threading

    from engine.jobs import ports

    # The engine's picker, reservation held for the run: no clash with a daemon's job on this machine.
    port, reservation = ports.pick_and_reserve(set())
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DPDECK_TRAINER_PROBE="1")
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_gpus),
        "--master_port",
        str(port),
        "--module",
        "engine.trainer",
        "--deepspeed",
        "--config",
        str(config),
        "--master_port",
        str(port),
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        if on_line is None:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                out, _ = proc.communicate()
                raise AssertionError(f"trainer timed out after {timeout}s:\n{out[-4000:]}") from None
        else:
            timer = threading.Timer(timeout, os.killpg, (proc.pid, 9))
            timer.start()
            lines: list[str] = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                on_line(line)
            proc.wait()
            timer.cancel()
            out = "".join(lines)
            if proc.returncode == -9:
                raise AssertionError(f"trainer timed out after {timeout}s:\n{out[-4000:]}")
    finally:
        ports.release(reservation)
    return proc.returncode, out


def _vae_to_ldm(name: str, n_up: int) -> str:
    """diffusers AutoencoderKL parameter name -> original LDM VAE name (for building single files)."""
    import re

    top = {"conv_norm_out": "norm_out"}
    parts = name.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return name
    side, rest = parts[0], parts[1:]
    s = ".".join(rest)
    s = re.sub(r"^conv_norm_out", top["conv_norm_out"], s)
    m = re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", s)
    if m:
        s = f"down.{m[1]}.block.{m[2]}.{m[3]}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", s)
    if m:
        s = f"down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", s)
    if m:
        s = f"up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", s)
    if m:
        s = f"up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", s)
    if m:
        s = f"mid.block_{int(m[1]) + 1}.{m[2]}"
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    m = re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)", s)
    if m:
        s = f"mid.attn_1.{attn[m[1]]}.{m[2]}"
    return f"{side}.{s.replace('conv_shortcut', 'nin_shortcut')}"


def save_single_file_sdxl(diffusers_dir: Path, out_file: Path) -> Path:
    """An original-layout SDXL checkpoint (like Pony / Illustrious files) made from a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engine.trainer.sgm import diffusers_to_sgm

    sd: dict[str, torch.Tensor] = {}
    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet")
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + diffusers_to_sgm(k, unet.config)] = v
    vae = AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae")
    n_up = len(vae.config.up_block_types)
    for k, v in vae.state_dict().items():
        ldm = _vae_to_ldm(k, n_up)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM stores the VAE attention projections as 1x1 convs
        sd["first_stage_model." + ldm] = v
    te1 = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder")
    for k, v in te1.state_dict().items():
        # Real files say transformer.text_model.*; transformers 5 drops the text_model. level in state_dict().
        sd[
            "conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k)
        ] = v
    te2 = CLIPTextModelWithProjection.from_pretrained(diffusers_dir, subfolder="text_encoder_2")
    te2_sd = te2.state_dict()
    pre = "conditioner.embedders.1.model."
    sd[pre + "positional_embedding"] = te2_sd["text_model.embeddings.position_embedding.weight"]
    sd[pre + "token_embedding.weight"] = te2_sd["text_model.embeddings.token_embedding.weight"]
    sd[pre + "ln_final.weight"] = te2_sd["text_model.final_layer_norm.weight"]
    sd[pre + "ln_final.bias"] = te2_sd["text_model.final_layer_norm.bias"]
    sd[pre + "text_projection"] = te2_sd["text_projection.weight"].T.contiguous()
    for i in range(te2.config.num_hidden_layers):
        src = f"text_model.encoder.layers.{i}."
        dst = f"{pre}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            sd[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [te2_sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            sd[dst + f"attn.out_proj.{kind}"] = te2_sd[src + f"self_attn.out_proj.{kind}"]
            sd[dst + f"ln_1.{kind}"] = te2_sd[src + f"layer_norm1.{kind}"]
            sd[dst + f"ln_2.{kind}"] = te2_sd[src + f"layer_norm2.{kind}"]
            sd[dst + f"mlp.c_fc.{kind}"] = te2_sd[src + f"mlp.fc1.{kind}"]
            sd[dst + f"mlp.c_proj.{kind}"] = te2_sd[src + f"mlp.fc2.{kind}"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_file))
    return out_file


def run_metrics(run_dir: Path) -> list[dict[str, object]]:
    """The trainer's metrics.jsonl, one dict per line."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_dir_of(out: str) -> Path:
    """The run folder the trainer announced in its `[dpdeck]` progress lines."""
    events = [
        json.loads(line[len("[dpdeck] ") :]) for line in out.splitlines() if line.startswith("[dpdeck] ")
    ]
    return Path(next(e["path"] for e in events if e["event"] == "run_dir"))


def assert_resume_repeats_the_run(run_dir: Path, config: Path, from_step: int, final_save: str) -> None:
    """As after a crash: global_step`from_step` is left as the newest checkpoint (later ones and the final save
    removed) and the run resumes; its steps must repeat the uninterrupted run's losses and final LoRA."""
    import shutil

    import pytest
    import torch
    from safetensors.torch import load_file

    def steps(metrics: list[dict[str, object]]) -> list[dict[str, object]]:
        return [m for m in metrics if m.get("event") == "progress"]  # training steps, not eval lines

    full = steps(run_metrics(run_dir))
    # Without this a filter that kept nothing compared two empty lists and passed whatever the resume did.
    assert [m["step"] for m in full] == list(range(1, len(full) + 1)) and len(full) > from_step, full[:3]
    lora = run_dir / final_save / "pytorch_lora_weights.safetensors"
    final = load_file(str(lora))
    (run_dir / "latest").write_text(f"global_step{from_step}")
    for ckpt in run_dir.glob("global_step*"):
        if int(ckpt.name[len("global_step") :]) > from_step:
            shutil.rmtree(ckpt)
    shutil.rmtree(run_dir / final_save)
    code, out = launch_trainer(config, args=("--resume_from_checkpoint",))
    assert code == 0, out[-6000:]
    assert f"at step {from_step} (" in out and "TRAINING COMPLETE!" in out, out[-3000:]
    resumed = steps(run_metrics(run_dir))[len(full) :]
    assert [m["step"] for m in resumed] == [m["step"] for m in full[from_step:]]
    assert [m["loss"] for m in resumed] == pytest.approx(
        [m["loss"] for m in full[from_step:]], rel=1e-5, abs=1e-6
    )
    again = load_file(str(lora))
    assert again.keys() == final.keys()
    for k, v in final.items():
        torch.testing.assert_close(again[k], v, rtol=1e-5, atol=1e-6)

