"""`dpdeck demo [--family sd15|chroma|flux]`: a tiny random model of the family, a small synthetic captioned
dataset, one real queued training run on the built-in trainer.

Everything is built locally (no hub): random weights from configs (engine/demo_models.py), character-level
tokenizers, and coloured-shape images. torch/diffusers are imported inside the builders only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import demo_models

# Still importable from here, where they lived before engine/demo_models.py (tests and benches import them).
from engine.demo_models import build_tiny_sd15 as build_tiny_sd15
from engine.demo_models import tiny_clip_config as tiny_clip_config
from engine.demo_models import tiny_vae as tiny_vae
from engine.demo_models import write_tiny_tokenizer as write_tiny_tokenizer
from statefiles import paths
from statefiles.atomic import atomic_write_text

DEMO_TEMPLATE = "demo-tiny"
DEMO_IMAGE_PX = 32
DEMO_NUM_IMAGES = 8
DEMO_OVERRIDES: dict[str, object] = {"epochs": 16, "save_every_n_epochs": 16, "optimizer.lr": 2e-2}


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
    family: str = "sd15"
    backend: str = "builtin"  # the trainer that ran it

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def demo_dir() -> Path:
    return paths.subdir("demo")


# ---- families ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoFamily:
    """How the demo trains one model family: which tiny model it builds and which template's shape it takes."""

    template: str  # the built-in template whose keys and layout the demo's profile keeps
    builder: str  # a function of engine.demo_models taking the folder to build in
    model_keys: dict[str, str]  # [model] key -> the path it names, relative to the built folder ("" = itself)
    ready: str  # a file only a complete model folder has (relative to it)


DEFAULT_FAMILY = "sd15"
CHROMA_WEIGHTS = "chroma_transformer/diffusion_pytorch_model.safetensors"  # where build_tiny_chroma saves it
FAMILIES: dict[str, DemoFamily] = {
    "sd15": DemoFamily(DEMO_TEMPLATE, "build_tiny_sd15", {"diffusers_path": ""}, "model_index.json"),
    # Chroma takes its VAE and T5 from a Flux-schnell folder, its transformer from transformer_path: a file,
    # as the template (and profile validation) expects; a diffusers-layout one, its config.json beside it.
    "chroma": DemoFamily(
        "chroma-e6ai-512",
        "build_tiny_chroma",
        {"diffusers_path": "flux_schnell", "transformer_path": CHROMA_WEIGHTS},
        CHROMA_WEIGHTS,
    ),
    # A dev-like folder (guidance embedding), as the flux-dev template expects.
    "flux": DemoFamily("flux-dev", "build_tiny_flux", {"diffusers_path": ""}, "model_index.json"),
}

# What a real-size template says that a 2-block random model on a CPU must not: train the demo's way (as the
# sd15 demo does: fp32, rank 4, a high rate, batch 2, one save at the end), in plain torch AdamW (the
# templates' adamw_optimi needs torch-optimi, which a base install lacks).
FLOW_MAIN_SETTINGS: dict[str, object] = {
    **DEMO_OVERRIDES,
    "dataset": "dataset.toml",
    "micro_batch_size_per_gpu": 2,
    "warmup_steps": 0,
    "seed": 42,
    "activation_checkpointing": False,  # nothing in a tiny model is worth recomputing
    "save_dtype": "float32",
    "model.dtype": "float32",
    "adapter.rank": 4,
    "adapter.dtype": "float32",
    "optimizer.type": "adamw",
}
# float8 weights need a GPU (the built-in trainer keeps the base weights in model.dtype anyway).
FLOW_MAIN_DROPS: tuple[str, ...] = ("model.transformer_dtype",)
# The template's caption prefix names its own dataset's artist; the demo's captions are coloured shapes.
FLOW_DATASET_DROPS: tuple[str, ...] = ("directory[0].caption_prefix",)


class DemoFamilyError(ValueError):
    """An unknown family name, or a template the demo cannot shape (the message says which and why)."""


def family_spec(family: str) -> DemoFamily:
    spec = FAMILIES.get(family)
    if spec is None:
        raise DemoFamilyError(f"unknown demo family {family!r}; expected one of {', '.join(FAMILIES)}")
    return spec


@dataclass(frozen=True)
class DemoLayout:
    """Where one family's demo lives: sd15 at the demo folder's top (the deck's demo-tiny template points
    there), every other family in a subfolder of its own; all share the one synthetic dataset."""

    root: Path
    family: str

    @property
    def home(self) -> Path:
        return self.root if self.family == DEFAULT_FAMILY else self.root / self.family

    @property
    def model(self) -> Path:
        return self.home / "model"

    @property
    def profile(self) -> Path:
        return self.home / "profile"

    @property
    def output(self) -> Path:
        return self.home / "output"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    def model_paths(self) -> dict[str, Path]:
        """[model] key -> the folder or file it names, as the family's builder lays them out under `model`."""
        return {key: self.model / sub for key, sub in family_spec(self.family).model_keys.items()}


def prepare(root: Path | None = None, family: str = DEFAULT_FAMILY) -> Path:
    """Build (once) the family's tiny model and the dataset, and write the filled-in profile; returns main.toml."""
    layout = DemoLayout(root or demo_dir(), family)
    spec = family_spec(family)
    _build_model(layout, spec)
    data = build_synthetic_dataset(layout.dataset)
    if family == DEFAULT_FAMILY:
        main_text, dataset_text = _sd15_texts(layout, data)
    else:
        main_text, dataset_text = family_texts(family, layout.model_paths(), data, layout.output)
    from profiles.document import TomlFile

    for text, name in ((main_text, "main.toml"), (dataset_text, "dataset.toml")):
        TomlFile.from_text(text, source=f"demo {name}")  # a path with a quote in it must fail here, clearly
    layout.profile.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.profile / "dataset.toml", dataset_text)
    atomic_write_text(layout.profile / "main.toml", main_text)
    return layout.profile / "main.toml"


def _build_model(layout: DemoLayout, spec: DemoFamily) -> None:
    model = layout.model
    if (model / spec.ready).is_file():
        return
    if model.exists():  # half-built by a dpdeck from before builds were atomic: build it again
        shutil.rmtree(model)
    tmp = model.with_name("model.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    getattr(demo_models, spec.builder)(tmp)
    tmp.rename(model)  # the model folder appears complete or not at all


def _sd15_texts(layout: DemoLayout, data: Path) -> tuple[str, str]:
    """The demo-tiny template (or our built-in copy of it) with its <DEMO_...> placeholders filled in."""
    main_text, dataset_text = _template_texts()
    values = {
        "<DEMO_MODEL_DIR>": str(layout.model),
        "<DEMO_DATASET_DIR>": str(data),
        "<DEMO_OUTPUT_DIR>": str(layout.output),
    }
    for key, value in values.items():
        main_text = main_text.replace(key, value)
        dataset_text = dataset_text.replace(key, value)
    return main_text, dataset_text


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


def family_texts(family: str, model_paths: dict[str, Path], data: Path, output: Path) -> tuple[str, str]:
    """main.toml and dataset.toml for a flow family's demo: its template's keys and layout, with the tiny
    model's folders, the synthetic dataset and the demo's CPU-sized settings in place of the placeholders."""
    from profiles.templates import load_template

    spec = family_spec(family)
    template = load_template(spec.template)
    main, dataset = template.main, template.dataset
    if dataset is None or not isinstance(dataset.get("directory"), list) or not dataset.get("directory"):
        raise DemoFamilyError(
            f"template {spec.template}: the demo needs its dataset.toml with a [[directory]] entry to fill in"
        )
    settings: dict[str, object] = {
        "output_dir": str(output),
        **{f"model.{key}": str(path) for key, path in model_paths.items()},
        **FLOW_MAIN_SETTINGS,
    }
    for key, value in settings.items():
        main.set(key, value)
    for key in FLOW_MAIN_DROPS:
        main.delete(key)
    dataset.set("resolutions", [DEMO_IMAGE_PX])
    dataset.set("directory[0].path", str(data))
    for key in FLOW_DATASET_DROPS:
        dataset.delete(key)
    main_header = (
        f"# dpdeck demo --family {family}: the {spec.template} template on a tiny random {family} model,\n"
        "# sized for a CPU (fp32, rank 4, batch 2, 16 epochs at 32 px).\n"
    )
    dataset_header = (
        f"# {DEMO_NUM_IMAGES} generated {DEMO_IMAGE_PX} px coloured shapes with `<stem>.txt` captions.\n"
    )
    return (
        main_header + _without_leading_comments(main.dumps()),
        dataset_header + _without_leading_comments(dataset.dumps()),
    )


def _without_leading_comments(text: str) -> str:
    """The template's opening comments describe its real-size use (placeholders to fill in, its dataset)."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


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


def demo_backend(family: str, model: dict[str, Any]) -> tuple[str, str]:
    """(the backend to queue the demo with, the 'runs on: ...' line that says why), for the demo profile's
    `[model]` table.

    The queue's own rule (profiles.backend_choice) decides, except that a configured diffusion-pipe checkout
    never gets the demo: its tiny random model is dpdeck's, built for the built-in trainer.
    """
    from profiles.backend_choice import AUTO, choose_for_model

    auto = choose_for_model(model, family)
    if auto.backend == "builtin":
        return AUTO, auto.describe()
    # auto.reason here reads "diffusion-pipe at /path/to/checkout".
    return "builtin", (
        f"runs on: built-in trainer (the demo's tiny model is dpdeck's own; your {family} profiles run on "
        f"{auto.reason})"
    )


def run_demo(
    timeout: float = 600.0, direct: bool = False, log: Any = print, family: str = DEFAULT_FAMILY
) -> DemoResult:
    """Prepare, enqueue through the real queue (or launch directly when asked / no engine), wait, summarise."""
    family_spec(family)  # an unknown family fails before anything is built
    started = time.monotonic()
    log(f"building the tiny {family} model and dataset ...")
    main_toml = prepare(family=family)
    client = None
    if not direct:
        try:
            from engine.jobs import client as client_mod

            client = client_mod
        except ImportError:
            log("engine.jobs.client is not available; launching the trainer directly")
    if client is None:
        code, run_dir, tail = _launch_direct(main_toml, timeout)
        ok = code == 0 and bool(_summarise(run_dir)[0])
        state = "completed" if ok else f"failed (exit {code})"
        return _result(ok, "direct", None, state, run_dir, started, "" if ok else tail, family, "builtin")
    from profiles.document import TomlFile

    backend, why = demo_backend(family, TomlFile.load(main_toml).get("model", {}))
    log(why)
    client.ensure_daemon()
    name = "demo" if family == DEFAULT_FAMILY else f"demo-{family}"
    job_id = client.enqueue(str(main_toml), backend=backend, name=name)
    log(f"queued job {job_id}; waiting (dpdeck logs {job_id} to follow along) ...")
    try:
        view = client.wait(job_id, timeout=timeout)
    except TimeoutError:
        from engine.jobs.protocol import Action, Request

        client.send(Request(Action.CANCEL, job_id))  # never leave a demo job running behind the user's back
        message = f"no result after {timeout:.0f} s; job {job_id} cancelled"
        return _result(False, "queue", job_id, "timeout", None, started, message, family, "builtin")
    run_dir = Path(view.run_dir) if view.run_dir else None
    ok = view.state == "completed" and bool(_summarise(run_dir)[0])
    message = str(view.exit_reason or "")
    return _result(ok, "queue", job_id, str(view.state), run_dir, started, message, family, view.backend)


def _result(
    ok: bool,
    via: str,
    job_id: int | None,
    state: str,
    run_dir: Path | None,
    started: float,
    message: str,
    family: str,
    backend: str,
) -> DemoResult:
    files, first, last, steps = _summarise(run_dir)
    return DemoResult(
        ok=ok,
        via=via,
        job_id=job_id,
        state=state,
        run_dir=str(run_dir) if run_dir else None,
        lora_files=files,
        first_loss=first,
        last_loss=last,
        steps=steps,
        wall_s=time.monotonic() - started,
        message=message,
        family=family,
        backend=backend,
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
