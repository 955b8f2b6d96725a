"""`dpdeck demo` as a newcomer runs it: a real subprocess, the real launcher, a fresh state dir.

`--family chroma` runs with a diffusion-pipe checkout configured (the E6AI user's setup): the demo must still
queue its tiny model on the built-in trainer, and the saved LoRA must load into diffusers' own ChromaPipeline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _stop_daemon_of

from profiles.document import Profile, TomlFile
from profiles.templates import load_template
from profiles.validate import validate_profile

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_DP = Path("/work/shared/upstream/diffusion-pipe")
needs_queue = pytest.mark.skipif(
    importlib.util.find_spec("engine.jobs.client") is None, reason="engine.jobs.client not built yet"
)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, DPDECK_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("DS_ACCELERATOR", None)  # as a newcomer runs it: the demo itself picks CPU when there is no GPU
    return env


def _demo(home: Path, *extra: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--json", *extra],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout)


def _check(result: dict, home: Path) -> None:
    from safetensors.torch import load_file

    assert result["ok"] and result["state"] == "completed"
    run_dir = Path(result["run_dir"])
    assert run_dir.is_relative_to(home / "demo" / "output")
    final = sorted(Path(p) for p in result["lora_files"] if Path(p).parent.name == "epoch16")
    assert [p.name for p in final] == ["lora_kohya.safetensors", "pytorch_lora_weights.safetensors"]
    assert all(load_file(p) for p in result["lora_files"])
    assert result["steps"] == 64
    assert result["last_loss"] < result["first_loss"]


@pytest.mark.slow
def test_demo_direct(dpdeck_home: Path) -> None:
    _check(_demo(dpdeck_home, "--direct"), dpdeck_home)


@pytest.mark.slow
@needs_queue
def test_demo_through_the_queue(dpdeck_home: Path) -> None:
    result = _demo(dpdeck_home)
    assert result["via"] == "queue" and isinstance(result["job_id"], int)
    assert result["family"] == "sd15" and result["backend"] == "builtin"
    _check(result, dpdeck_home)


# ---- --family chroma, end to end through the queue ---------------------------------------------------------


@pytest.fixture(scope="module")
def chroma_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, Path]]:
    home = tmp_path_factory.mktemp("chroma_demo_home")
    checkout = UPSTREAM_DP
    if not (UPSTREAM_DP / "train.py").is_file():  # elsewhere: a folder that looks like a checkout is enough
        checkout = tmp_path_factory.mktemp("dp")
        (checkout / "train.py").touch()
    configured = subprocess.run(
        [sys.executable, "-m", "tui.cli", "config", "set", "diffusion_pipe.path", str(checkout)],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert configured.returncode == 0, configured.stderr
    try:
        yield _demo(home, "--family", "chroma"), home
    finally:
        _stop_daemon_of(home)


@pytest.mark.slow
@needs_queue
def test_chroma_demo_completes_on_the_builtin_trainer_through_the_queue(
    chroma_demo: tuple[dict, Path],
) -> None:
    result, home = chroma_demo
    assert result["ok"] and result["state"] == "completed", result
    assert result["via"] == "queue" and isinstance(result["job_id"], int)
    # diffusion-pipe is configured, and would get a chroma profile; the demo's tiny model is not for it.
    assert result["family"] == "chroma" and result["backend"] == "builtin"
    assert Path(result["run_dir"]).is_relative_to(home / "demo" / "chroma" / "output")
    assert result["steps"] == 64  # 16 epochs x 8 images / batch 2
    assert result["first_loss"] is not None and result["last_loss"] < result["first_loss"]
    lines = (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 65))


@pytest.mark.slow
@needs_queue
def test_chroma_demo_lora_loads_into_diffusers_chroma_pipeline(chroma_demo: tuple[dict, Path]) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        ChromaPipeline,
        ChromaTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import T5EncoderModel, T5TokenizerFast

    result, home = chroma_demo
    save = Path(result["run_dir"]) / "epoch16"
    assert str(save / "pytorch_lora_weights.safetensors") in result["lora_files"]
    main = TomlFile.load(home / "demo" / "chroma" / "profile" / "main.toml")
    schnell, weights = Path(main.get("model.diffusers_path")), Path(main.get("model.transformer_path"))
    # Assembled as Chroma users do: VAE and T5 from the Flux-schnell folder, the transformer on its own.
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(schnell, subfolder="scheduler"),
        vae=AutoencoderKL.from_pretrained(schnell, subfolder="vae"),
        text_encoder=T5EncoderModel.from_pretrained(schnell, subfolder="text_encoder_2"),
        tokenizer=T5TokenizerFast.from_pretrained(schnell, subfolder="tokenizer_2"),
        transformer=ChromaTransformer2DModel.from_pretrained(weights.parent),
    )
    args = {
        "hidden_states": torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(0)),
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(4, 3),
        "txt_ids": torch.zeros(5, 3),
    }
    with torch.no_grad():
        before = pipe.transformer(**args).sample
        pipe.load_lora_weights(str(save))
        after = pipe.transformer(**args).sample
    assert (after - before).abs().max() > 1e-4, "the demo's LoRA did not reach diffusers' Chroma transformer"


# ---- the --family argument and the profiles it writes -------------------------------------------------------


def test_family_argument_lists_the_engine_families() -> None:
    from engine import demo
    from tui.cli.cmd_demo import DEMO_FAMILIES

    assert list(DEMO_FAMILIES) == list(demo.FAMILIES) and DEMO_FAMILIES[0] == demo.DEFAULT_FAMILY
    res = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--family", "sd3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    complaint = next(line for line in res.stderr.splitlines() if "--family: invalid choice: 'sd3'" in line)
    assert all(family in complaint for family in DEMO_FAMILIES)


def test_unknown_family_fails_before_building_anything(dpdeck_home: Path) -> None:
    from engine.demo import DemoFamilyError, run_demo

    with pytest.raises(
        DemoFamilyError, match=r"unknown demo family 'sd3'; expected one of sd15, chroma, flux"
    ):
        run_demo(family="sd3", log=lambda _msg: None)
    assert not (dpdeck_home / "demo").exists()


@pytest.mark.parametrize("family", ["chroma", "flux"])
def test_flow_family_profile_keeps_its_template_shape_and_validates(family: str, tmp_path: Path) -> None:
    from engine.demo import FAMILIES, FLOW_DATASET_DROPS, FLOW_MAIN_DROPS, DemoLayout, family_texts

    layout = DemoLayout(tmp_path, family)
    main_text, dataset_text = family_texts(family, layout.model_paths(), tmp_path / "data", layout.output)
    main = TomlFile.from_text(main_text, "main.toml", tmp_path / "main.toml")
    dataset = TomlFile.from_text(dataset_text, "dataset.toml", tmp_path / "dataset.toml")
    template = load_template(FAMILIES[family].template)
    assert template.dataset is not None
    # Every key of the real template file is still there, but for the few the demo drops on purpose.
    for ours, theirs, drops in (
        (main, template.main, FLOW_MAIN_DROPS),
        (dataset, template.dataset, FLOW_DATASET_DROPS),
    ):
        keys = _keypaths(theirs.data())
        assert keys - _keypaths(ours.data()) == keys & set(drops)
    assert main.get("model.type") == family and main.get("model.dtype") == "float32"
    assert main.get("model.diffusers_path") == str(layout.model_paths()["diffusers_path"])
    assert dataset.get("directory[0].path") == str(tmp_path / "data") and dataset.get("resolutions") == [32]
    assert "<PATH TO" not in main_text + dataset_text
    problems = validate_profile(Profile(main=main, dataset=dataset), backend="builtin", check_paths="off")
    assert problems == []


def test_chroma_demo_names_a_transformer_file_beside_its_config(tmp_path: Path) -> None:
    """The template's transformer_path is a file; build_tiny_chroma's diffusers file has config.json beside."""
    from engine.demo import DemoLayout

    paths = DemoLayout(tmp_path, "chroma").model_paths()
    assert paths["transformer_path"].suffix == ".safetensors"
    assert paths["transformer_path"].parent == tmp_path / "chroma" / "model" / "chroma_transformer"
    assert paths["diffusers_path"] == tmp_path / "chroma" / "model" / "flux_schnell"
    # sd15 keeps the top-level layout the deck's demo-tiny template points at (tui/data.py demo_paths).
    assert DemoLayout(tmp_path, "sd15").model_paths() == {"diffusers_path": tmp_path / "model"}


@pytest.mark.parametrize(
    ("family", "with_checkout", "backend", "reason"),
    [
        ("sd15", False, "auto", "sd15 is dpdeck's own type"),
        ("chroma", False, "auto", "no diffusion-pipe checkout configured"),
        ("flux", False, "auto", "no diffusion-pipe checkout configured"),
        ("sd15", True, "auto", "sd15 is dpdeck's own type"),
        ("chroma", True, "builtin", "dpdeck's own; your chroma profiles run on diffusion-pipe at"),
        ("flux", True, "builtin", "dpdeck's own; your flux profiles run on diffusion-pipe at"),
    ],
)
def test_demo_backend_follows_the_queue_rule_but_never_hands_diffusion_pipe_the_tiny_model(
    family: str, with_checkout: bool, backend: str, reason: str, tmp_path: Path
) -> None:
    from engine.demo import DemoLayout, _sd15_texts, demo_backend, family_texts
    from profiles.backend_choice import choose_for_model
    from statefiles import settings

    if with_checkout:
        settings.set_value("diffusion_pipe.path", str(tmp_path))
    layout = DemoLayout(tmp_path, family)
    if family == "sd15":
        main_text = _sd15_texts(layout, tmp_path / "data")[0]
    else:
        main_text = family_texts(family, layout.model_paths(), tmp_path / "data", layout.output)[0]
    model = TomlFile.from_text(main_text).get("model")
    got, why = demo_backend(family, model)
    assert (got, why.startswith("runs on: built-in trainer (")) == (backend, True)
    assert reason in why
    # The queue's own rule on the same profile: what `auto` would pick for a user's profile like it.
    queue_pick = choose_for_model(model, family).backend
    assert queue_pick == ("builtin" if backend == "auto" else "diffusion-pipe")


def _keypaths(data: dict, prefix: str = "") -> set[str]:
    """Dotted key paths of a TOML document's values (arrays of tables as `name[i].key`)."""
    out: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _keypaths(value, path + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out |= _keypaths(item, f"{path}[{i}].")
        else:
            out.add(path)
    return out
