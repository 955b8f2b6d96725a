"""`dpdeck demo`: a tiny SD-style model, a small synthetic captioned dataset, one real queued training run.

Everything is built locally (no hub): random weights from configs, a character-level CLIP tokenizer, and
coloured-shape images. torch/diffusers are imported inside the builders only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from statefiles import paths
from statefiles.atomic import atomic_write_text

DEMO_TEMPLATE = "demo-tiny"
DEMO_IMAGE_PX = 32
DEMO_NUM_IMAGES = 8
DEMO_OVERRIDES: dict[str, object] = {"epochs": 16, "save_every_n_epochs": 16, "optimizer.lr": 2e-2}


def write_tiny_tokenizer(out_dir: Path) -> Path:
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte-level characters (with and without </w>).

    No merges: every word becomes characters. That is all a random tiny text encoder needs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # GPT-2/CLIP byte -> printable unicode table (the standard construction).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    vocab: dict[str, int] = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for ch in chars:
        for tok in (ch, ch + "</w>"):
            if tok not in vocab:
                vocab[tok] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    )
    return out_dir


def tiny_vae():  # type: ignore[no-untyped-def]
    """The 2-block random VAE every tiny pipeline here shares (seed the RNG before calling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
    )


def tiny_clip_config(**overrides: Any) -> dict[str, Any]:
    """CLIPTextConfig keyword arguments for a 32-wide random text encoder that fits the tiny tokenizer."""
    cfg: dict[str, Any] = dict(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        pad_token_id=1,
        vocab_size=600,
        hidden_act="gelu",
    )
    cfg.update(overrides)
    return cfg


def build_tiny_sd15(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random SD1.5-style pipeline folder (UNet block_out_channels (32, 64), 2x VAE)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in the demo's output
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
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(CLIPTextConfig(**tiny_clip_config(num_hidden_layers=2)))
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    te.save_pretrained(out_dir / "text_encoder")
    scheduler.save_pretrained(out_dir / "scheduler")
    write_tiny_tokenizer(out_dir / "tokenizer")
    CLIPTokenizer.from_pretrained(out_dir / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.31.0",
        "requires_safety_checker": False,
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def build_synthetic_dataset(
    out_dir: Path, count: int = DEMO_NUM_IMAGES, size: tuple[int, int] = (32, 32)
) -> Path:
    """Coloured shapes on grey with `<stem>.txt` captions naming colour and shape."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    w, h = size
    for i in range(count):
        colour = names[i % len(names)]
        shape = SHAPES[(i // len(names)) % len(SHAPES)]
        img = Image.new("RGB", (w, h), (128, 128, 128))
        draw = ImageDraw.Draw(img)
        box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
        img.save(out_dir / f"img{i:03d}.png")
        atomic_write_text(out_dir / f"img{i:03d}.txt", f"a {colour} {shape}, simple, grey background")
    return out_dir


# ---- the demo run ------------------------------------------------------------------------------------------

DEMO_MAIN = """# dpdeck demo: a tiny random SD1.5-style model learning 8 coloured shapes (CPU is fine).
output_dir = '<DEMO_OUTPUT_DIR>'
dataset = 'dataset.toml'
epochs = 16
micro_batch_size_per_gpu = 2
gradient_accumulation_steps = 1
gradient_clipping = 1.0
warmup_steps = 0
save_every_n_epochs = 16
seed = 42

[model]
type = 'sd15'
diffusers_path = '<DEMO_MODEL_DIR>'
dtype = 'float32'

[adapter]
type = 'lora'
rank = 4
dtype = 'float32'

[optimizer]
type = 'adamw'
lr = 2e-2
"""

DEMO_DATASET = """resolutions = [32]

[[directory]]
path = '<DEMO_DATASET_DIR>'
"""


@dataclass
class DemoResult:
    ok: bool
    via: str  # "queue" or "direct"
    job_id: int | None
    state: str
    run_dir: str | None
    lora_files: list[str]
    first_loss: float | None
    last_loss: float | None
    steps: int
    wall_s: float
    message: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def demo_dir() -> Path:
    return paths.subdir("demo")


def prepare(root: Path | None = None) -> Path:
    """Build (once) the tiny model and dataset, and write the filled-in profile; returns main.toml."""
    root = root or demo_dir()
    model = root / "model"
    if not (model / "model_index.json").is_file():
        tmp = root / "model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        build_tiny_sd15(tmp)
        tmp.rename(model)  # the model folder appears complete or not at all
    data = build_synthetic_dataset(root / "dataset")
    main_text, dataset_text = _template_texts()
    values = {
        "<DEMO_MODEL_DIR>": str(model),
        "<DEMO_DATASET_DIR>": str(data),
        "<DEMO_OUTPUT_DIR>": str(root / "output"),
    }
    for key, value in values.items():
        main_text = main_text.replace(key, value)
        dataset_text = dataset_text.replace(key, value)
    from profiles.document import TomlFile

    for text, name in ((main_text, "main.toml"), (dataset_text, "dataset.toml")):
        TomlFile.from_text(text, source=f"demo {name}")  # a path with a quote in it must fail here, clearly
    profile = root / "profile"
    profile.mkdir(exist_ok=True)
    atomic_write_text(profile / "dataset.toml", dataset_text)
    atomic_write_text(profile / "main.toml", main_text)
    return profile / "main.toml"


def _template_texts() -> tuple[str, str]:
    """The `demo-tiny` template's TOML text when the profiles package ships it, else our built-in copy."""
    try:
        from profiles.templates import load_template

        template = load_template(DEMO_TEMPLATE)
    except Exception:  # noqa: BLE001 - templates not built (or broken): the built-in copy still works
        return DEMO_MAIN, DEMO_DATASET
    if template.dataset is None:
        return DEMO_MAIN, DEMO_DATASET
    main, dataset = template.main, template.dataset
    main.set("dataset", "dataset.toml")
    # The demo owns its data and its time budget: train at the synthetic images' size, long and fast enough
    # for the loss to visibly fall in well under a minute of CPU time, saving once at the end.
    for key, value in DEMO_OVERRIDES.items():
        main.set(key, value)
    dataset.set("resolutions", [DEMO_IMAGE_PX])
    return main.dumps(), dataset.dumps()


def _summarise(run_dir: Path | None) -> tuple[list[str], float | None, float | None, int]:
    if run_dir is None or not run_dir.is_dir():
        return [], None, None, 0
    files = sorted(str(p) for p in run_dir.glob("epoch*/*.safetensors")) + sorted(
        str(p) for p in run_dir.glob("step*/*.safetensors")
    )
    losses = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                losses.append(float(json.loads(line)["loss"]))
            except (ValueError, KeyError, TypeError):
                continue
    if not losses:
        return files, None, None, 0
    k = max(1, min(4, len(losses) // 4))
    return files, sum(losses[:k]) / k, sum(losses[-k:]) / k, len(losses)


def run_demo(timeout: float = 600.0, direct: bool = False, log: Any = print) -> DemoResult:
    """Prepare, enqueue through the real queue (or launch directly when asked / no engine), wait, summarise."""
    started = time.monotonic()
    log("building the tiny model and dataset ...")
    main_toml = prepare()
    client = None
    if not direct:
        try:
            from engine.jobs import client as client_mod

            client = client_mod
        except ImportError:
            log("engine.jobs.client is not available; launching the trainer directly")
    if client is not None:
        client.ensure_daemon()
        # backend "auto" picks the built-in trainer for sd15 (docs/CONTRACTS.md).
        job_id = client.enqueue(str(main_toml), backend="auto", name="demo")
        log(f"queued job {job_id}; waiting (dpdeck logs {job_id} to follow along) ...")
        try:
            view = client.wait(job_id, timeout=timeout)
        except TimeoutError:
            from engine.jobs.protocol import Action, Request

            client.send(Request(Action.CANCEL, job_id))  # never leave a demo job running behind the user's back
            return DemoResult(
                False,
                "queue",
                job_id,
                "timeout",
                None,
                [],
                None,
                None,
                0,
                time.monotonic() - started,
                f"no result after {timeout:.0f} s; job {job_id} cancelled",
            )
        run_dir = Path(view.run_dir) if getattr(view, "run_dir", None) else None
        files, first, last, steps = _summarise(run_dir)
        ok = view.state == "completed" and bool(files)
        return DemoResult(
            ok,
            "queue",
            job_id,
            str(view.state),
            str(run_dir) if run_dir else None,
            files,
            first,
            last,
            steps,
            time.monotonic() - started,
            str(getattr(view, "exit_reason", "") or ""),
        )
    code, run_dir, tail = _launch_direct(main_toml, timeout)
    files, first, last, steps = _summarise(run_dir)
    ok = code == 0 and bool(files)
    return DemoResult(
        ok,
        "direct",
        None,
        "completed" if ok else f"failed (exit {code})",
        str(run_dir) if run_dir else None,
        files,
        first,
        last,
        steps,
        time.monotonic() - started,
        "" if ok else tail,
    )


def _launch_direct(main_toml: Path, timeout: float) -> tuple[int, Path | None, str]:
    """`deepspeed --num_gpus 1 -m engine.trainer ...` with its output in the demo folder."""
    import os
    import subprocess
    import sys

    from engine.jobs.ports import pick_port

    port = pick_port(set())
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "1",
        "--master_port",
        str(port),
        "--module",
        "engine.trainer",
        "--deepspeed",
        "--config",
        str(main_toml),
        "--master_port",
        str(port),
    ]
    log_path = main_toml.parent.parent / "demo.log"
    with log_path.open("w") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = 124
    text = log_path.read_text(errors="replace")
    run_dir = None
    for line in text.splitlines():
        if line.startswith("[dpdeck] ") and '"run_dir"' in line:
            run_dir = Path(json.loads(line[len("[dpdeck] ") :])["path"])
    return code, run_dir, text[-3000:]
