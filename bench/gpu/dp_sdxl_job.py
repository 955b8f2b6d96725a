"""Python parts of bench/gpu/diffusion_pipe_sdxl.sh: a tiny SDXL for upstream's train.py, and the figures.

`build WORK` makes, with no network: a tiny random SDXL saved as one original-layout .safetensors file (what
upstream's sdxl model reads: `checkpoint_path`, loaded with diffusers' from_single_file), a Hugging Face
cache holding that model's *configs* under stabilityai/stable-diffusion-xl-base-1.0 (from_single_file looks
its configs up there; offline it reads them from the cache, so the tiny shapes load), a captioned image
folder, and a diffusion-pipe profile (main.toml + dataset.toml). `check-load WORK` loads the checkpoint the
way upstream does (CPU is enough). `figures JOB...` prints steps/s, wall time and exit reason per job from
`dpdeck show --json` (`field JOB NAME` prints one field, for the script's polling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HUB_REPO = "stabilityai/stable-diffusion-xl-base-1.0"  # diffusers' default configs for an xl_base checkpoint
SNAPSHOT = "0" * 40
# diffusers tells xl_base by this key: the second text encoder needs at least 10 layers.
TE2_LAYERS = 10
RESOLUTION = 64


def _tiny_sdxl(work: Path) -> tuple[Path, Path]:
    """(diffusers folder, single-file checkpoint)."""
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from engine.demo import tiny_clip_config
    from tests.tiny_models import build_tiny_sdxl, save_single_file_sdxl

    folder = build_tiny_sdxl(work / "sdxl-diffusers")
    torch.manual_seed(3)
    cfg = tiny_clip_config(projection_dim=32)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        **{**cfg, "hidden_size": 32, "projection_dim": 32, "num_attention_heads": 4, "num_hidden_layers": TE2_LAYERS}
    ))
    shutil.rmtree(folder / "text_encoder_2")
    te2.save_pretrained(folder / "text_encoder_2")
    ckpt = save_single_file_sdxl(folder, work / "tiny_sdxl.safetensors")
    return folder, ckpt


def _hf_cache(folder: Path, hub: Path) -> None:
    """The configs (no weights) of `folder` as a cached snapshot of HUB_REPO."""
    root = hub / ("models--" + HUB_REPO.replace("/", "--"))
    snap = root / "snapshots" / SNAPSHOT
    for src in folder.rglob("*"):
        if src.is_file() and src.suffix in (".json", ".txt", ".model"):
            dst = snap / src.relative_to(folder)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(SNAPSHOT)


def _dataset(folder: Path, n: int = 8) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        color = (40 * i % 256, 90 + 20 * i % 166, 200 - 10 * i)
        Image.new("RGB", (RESOLUTION, RESOLUTION), color).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a flat colour swatch number {i}")


def _profile(work: Path, ckpt: Path, epochs: int) -> Path:
    prof = work / "profile"
    prof.mkdir(parents=True, exist_ok=True)
    (prof / "main.toml").write_text(f"""\
output_dir = '{work / "runs"}'
dataset = 'dataset.toml'
epochs = {epochs}
micro_batch_size_per_gpu = 1
pipeline_stages = 1
gradient_accumulation_steps = 1
gradient_clipping = 1.0
warmup_steps = 0
save_every_n_epochs = 1
checkpoint_every_n_epochs = 1
activation_checkpointing = false
save_dtype = 'bfloat16'
caching_batch_size = 1
steps_per_print = 1

[model]
type = 'sdxl'
checkpoint_path = '{ckpt}'
dtype = 'bfloat16'

[adapter]
type = 'lora'
rank = 4
dtype = 'bfloat16'

[optimizer]
type = 'adamw'
lr = 1e-4
betas = [0.9, 0.99]
weight_decay = 0.01
eps = 1e-8
""")
    (prof / "dataset.toml").write_text(f"""\
resolutions = [{RESOLUTION}]
enable_ar_bucket = false

[[directory]]
path = '{work / "images"}'
num_repeats = 4
""")
    return prof / "main.toml"


def cmd_build(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder, ckpt = _tiny_sdxl(work)
    _hf_cache(folder, work / "hf" / "hub")
    _dataset(work / "images")
    main = _profile(work, ckpt, args.epochs)
    print(json.dumps({"checkpoint": str(ckpt), "hf_home": str(work / "hf"), "profile": str(main)}))
    return 0


def cmd_check_load(args: argparse.Namespace) -> int:
    """Load the checkpoint exactly as upstream's models/sdxl.py does (no config passed), offline."""
    work = Path(args.work).resolve()
    os.environ.setdefault("HF_HOME", str(work / "hf"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(work / "tiny_sdxl.safetensors"), torch_dtype=torch.float32, add_watermarker=False
    )
    print(json.dumps({"unet_blocks": len(pipe.unet.down_blocks),
                      "te2_layers": pipe.text_encoder_2.config.num_hidden_layers}))
    return 0


def _show(job: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "tui.cli", "show", job, "--json"], capture_output=True,
                         text=True, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def cmd_figures(args: argparse.Namespace) -> int:
    """One line per job: state, exit reason, steps, wall, steps/s, whether it resumed a checkpoint."""
    for job in args.jobs:
        data = _show(job)
        start, end = data.get("started_at"), data.get("ended_at")
        wall = float(end) - float(start) if start and end else None
        step = data.get("step")
        rate = f"{float(step) / wall:.2f}" if step and wall else "?"
        saves = len(data.get("saves") or [])
        print(f"job {job}: state={data.get('state')} exit_reason={data.get('exit_reason')} step={step} "
              f"epoch={data.get('epoch')} wall={'?' if wall is None else f'{wall:.1f}'}s steps/s={rate} "
              f"loss={data.get('loss')} saves={saves} resumed_from={data.get('resume_from') or '-'}")
    return 0


def cmd_field(args: argparse.Namespace) -> int:
    """Print one field of `dpdeck show JOB --json` (for the shell script's polling)."""
    print(_show(args.job).get(args.name))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="tiny SDXL job for diffusion-pipe's train.py through dpdeck (GPU check)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="tiny SDXL checkpoint + offline HF config cache + dataset + profile")
    b.add_argument("work")
    b.add_argument("--epochs", type=int, default=2)
    b.set_defaults(func=cmd_build)
    c = sub.add_parser("check-load", help="load the checkpoint as upstream's sdxl model does")
    c.add_argument("work")
    c.set_defaults(func=cmd_check_load)
    f = sub.add_parser("figures", help="steps/s, wall time and exit reason of finished jobs")
    f.add_argument("jobs", nargs="+")
    f.set_defaults(func=cmd_figures)
    g = sub.add_parser("field", help="one field of `dpdeck show JOB --json`")
    g.add_argument("job")
    g.add_argument("name")
    g.set_defaults(func=cmd_field)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
