"""Issue 15 item 4: LoRA targets as diffusion-pipe's, text-encoder LoRA for SD1.5/SDXL, eval datasets.

Targets are compared with what diffusion-pipe's own models/sdxl.py code selects (run here on the same tiny
models); saved files are read back by diffusers' own loaders (its kohya converter for the ComfyUI/A1111 file).
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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

from engine.trainer.evaluate import TIMESTEP_QUANTILES
from engine.trainer.families import get_family
from engine.trainer.family import Family
from engine.trainer.lora_io import add_lora, save_lora

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "diffusion-pipe"
BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("item4")


@pytest.fixture(scope="module")
def models(work: Path) -> dict[str, Path]:
    return {kind: build(work / f"tiny_{kind}") for kind, build in BUILDERS.items()}


def _family(kind: str, model: Path) -> Family:
    family = get_family(kind)(
        {"type": kind, "diffusers_path": str(model)}, torch.float32, torch.device("cpu")
    )
    family.load()
    return family


def _upstream_adapter_methods() -> dict[str, Any]:
    """SDXLPipeline.configure_adapter and _add_adapter from upstream's models/sdxl.py, run as written (the module
    itself imports deepspeed and upstream's package layout, so only these two methods are taken out)."""
    import peft
    from torch import nn

    tree = ast.parse((UPSTREAM / "models" / "sdxl.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SDXLPipeline")
    wanted = ("configure_adapter", "_add_adapter")
    picked = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert sorted(n.name for n in picked) == sorted(wanted), "upstream renamed an adapter method"
    namespace: dict[str, Any] = {"peft": peft, "nn": nn, "torch": torch}
    exec(compile(ast.Module(body=picked, type_ignores=[]), "models/sdxl.py", "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in wanted}


def _lora_layers(module: torch.nn.Module) -> set[str]:
    return {name for name, m in module.named_modules() if len(getattr(m, "lora_A", ())) > 0}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_default_unet_targets_are_diffusion_pipes(kind: str, models: dict[str, Path]) -> None:
    from peft import inject_adapter_in_model

    ours = _family(kind, models[kind])
    add_lora(ours.unet, ours, 4, 0.0, False)
    theirs = _family(kind, models[kind])
    methods = _upstream_adapter_methods()
    pipe = SimpleNamespace(unet=theirs.unet, text_encoder=theirs.text_encoder)
    # SD1.5 has one encoder; upstream's SDXL code adapts two, so it gets a copy as its second.
    pipe.text_encoder_2 = getattr(theirs, "text_encoder_2", None) or copy.deepcopy(theirs.text_encoder)
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        # transformers' add_adapter demands a newer peft than installed; peft's own injection is what it calls.
        te.add_adapter = lambda config, te=te: inject_adapter_in_model(config, te)
    pipe._add_adapter = lambda *a, **k: methods["_add_adapter"](pipe, *a, **k)
    methods["configure_adapter"](
        pipe, {"type": "lora", "rank": 4, "alpha": 4, "dropout": 0.0, "dtype": torch.float32}
    )
    expected = _lora_layers(theirs.unet)
    # Beyond attention: feed-forward and the resnets' time embedding projection (and SDXL's Linear proj_in/out).
    assert any(n.endswith("ff.net.2") for n in expected) and any(
        n.endswith("time_emb_proj") for n in expected
    )
    assert _lora_layers(ours.unet) == expected


def test_attention_only_option(models: dict[str, Path]) -> None:
    family = _family("sd15", models["sd15"])
    family.lora_targets = "attention"
    add_lora(family.unet, family, 4, 0.0, False)
    layers = _lora_layers(family.unet)
    assert layers and {n.rsplit(".", 1)[-1] for n in layers} | {"to_out.0"} >= {"to_q", "to_k", "to_v"}
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in layers)


@torch.no_grad()
def _unet_output(pipe: Any, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    unet = pipe.unet
    sample = torch.randn((1, 4, 8, 8), generator=gen)
    hidden = torch.randn((1, 5, unet.config.cross_attention_dim), generator=gen)
    kwargs: dict[str, Any] = {}
    if kind == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn((1, pooled), generator=gen),
            "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]),
        }
    return unet(sample, torch.tensor([500]), hidden, **kwargs).sample


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_every_default_target_named_for_kohya_loaders(kind: str, models: dict[str, Path], work: Path) -> None:
    """The kohya file, read by diffusers' own kohya/SGM converter, gives the UNet the diffusers file gives."""
    from diffusers import DiffusionPipeline

    family = _family(kind, models[kind])
    torch.manual_seed(0)
    config = add_lora(family.unet, family, 4, 0.0, True)  # random B: every layer changes the output
    save_dir = work / f"save_{kind}"
    save_lora(save_dir, family.unet, family, config, "float32")
    kohya = load_file(str(save_dir / "lora_kohya.safetensors"))
    assert len(kohya) == 3 * len(_lora_layers(family.unet))
    base = DiffusionPipeline.from_pretrained(models[kind])
    outputs = {}
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        pipe = DiffusionPipeline.from_pretrained(models[kind])
        pipe.load_lora_weights(str(save_dir), weight_name=name)
        assert _lora_layers(pipe.unet) == _lora_layers(family.unet), name
        outputs[name] = _unet_output(pipe, kind)
    assert not torch.allclose(outputs["lora_kohya.safetensors"], _unet_output(base, kind), atol=1e-4)
    torch.testing.assert_close(
        outputs["lora_kohya.safetensors"], outputs["pytorch_lora_weights.safetensors"], rtol=1e-4, atol=1e-5
    )


# ---- end to end under the deepspeed launcher ---------------------------------------------------------------


def _profile(folder: Path, model: Path, data: Path, eval_data: Path, **main: object) -> Path:
    import tomlkit

    settings: dict[str, object] = {
        "epochs": 2,
        "micro_batch_size_per_gpu": 2,
        "save_every_n_epochs": 2,
        "eval_every_n_epochs": 1,
        "eval_micro_batch_size_per_gpu": 1,
    }
    settings.update(main)
    config = write_profile(
        folder, model_type="sd15", model_dir=model, directories=[{"path": str(data)}], lr=2e-2, **settings
    )
    ds = tomlkit.document()
    ds["resolutions"] = [32]
    ds["directory"] = [{"path": str(eval_data)}]
    (folder / "eval.toml").write_text(tomlkit.dumps(ds))
    doc = tomlkit.parse(config.read_text())
    doc["eval_datasets"] = [{"name": "held_out", "config": "eval.toml"}]
    config.write_text(tomlkit.dumps(doc))
    return config


def _eval_events(out: str) -> list[dict[str, Any]]:
    prefix = '[dpdeck] {"event": "eval"'
    return [json.loads(line.split("[dpdeck] ", 1)[1]) for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def eval_runs(work: Path, models: dict[str, Path]) -> list[tuple[Path, str]]:
    from engine.demo import build_synthetic_dataset

    data = build_synthetic_dataset(work / "train_data", count=4)
    held_out = build_synthetic_dataset(work / "eval_data", count=2)
    runs = []
    for i in range(2):  # the same profile twice: eval losses must repeat exactly
        config = _profile(work / f"eval_run{i}", models["sd15"], data, held_out)
        code, out = launch_trainer(config)
        assert code == 0, out[-6000:]
        runs.append((run_dir_of(out), out))
    return runs


@pytest.mark.slow
def test_eval_losses_at_quantiles_in_events_metrics_and_tensorboard(
    eval_runs: list[tuple[Path, str]],
) -> None:
    from engine.jobs.tb_events import read_run

    run_dir, out = eval_runs[0]
    assert "eval_datasets" not in out  # no 'not built in' warning any more
    events = _eval_events(out)
    # Before the first step (eval_before_first_step defaults to true), then after each epoch (2 steps each).
    assert [(e["name"], e["step"], e["epoch"]) for e in events] == [
        ("held_out", 0, 1),
        ("held_out", 2, 1),
        ("held_out", 4, 2),
    ]
    for e in events:
        assert list(e["quantile_losses"]) == [f"{q:.2f}" for q in TIMESTEP_QUANTILES]
        values = list(e["quantile_losses"].values())
        assert all(isinstance(v, float) and v > 0 for v in values)
        assert e["loss"] == pytest.approx(sum(values) / len(values))
    assert events[0]["loss"] != events[-1]["loss"]  # the weights moved between evals
    recorded = [m for m in run_metrics(run_dir) if m.get("event") == "eval"]
    assert [{k: v for k, v in m.items() if k != "t"} for m in recorded] == events
    assert len([m for m in run_metrics(run_dir) if m.get("event") == "progress"]) == 4
    # The engine's own TensorBoard reader (which reads diffusion-pipe's eval tags) sees the same numbers.
    tb = read_run(run_dir)
    assert sorted(tb.evals) == ["held_out"]
    assert tb.evals["held_out"] == pytest.approx({e["step"]: e["loss"] for e in events})


@pytest.mark.slow
def test_eval_losses_repeat_across_runs(eval_runs: list[tuple[Path, str]]) -> None:
    first, second = (_eval_events(out) for _, out in eval_runs)
    assert [e["quantile_losses"] for e in first] == [e["quantile_losses"] for e in second]


@pytest.fixture(scope="module")
def te_run(work: Path, models: dict[str, Path]) -> tuple[Path, str]:
    from engine.demo import build_synthetic_dataset

    data = build_synthetic_dataset(work / "te_data", count=4)
    held_out = build_synthetic_dataset(work / "te_eval_data", count=2)
    config = _profile(
        work / "te_run", models["sd15"], data, held_out, eval_every_n_epochs=2, checkpoint_every_n_steps=4
    )
    import tomlkit

    doc = tomlkit.parse(config.read_text())
    doc["model"]["text_encoder_lr"] = 5e-2
    config.write_text(tomlkit.dumps(doc))
    code, out = launch_trainer(config)
    assert code == 0, out[-6000:]
    return run_dir_of(out), out


def _encode(pipe: Any, caption: str) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(caption, torch.device("cpu"), 1, False)
    return embeds


@pytest.mark.slow
def test_text_encoder_lora_trains_and_reloads_in_diffusers(
    te_run: tuple[Path, str], models: dict[str, Path]
) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    run_dir, out = te_run
    assert "text encoder LoRA: text_encoder (lr 0.05)" in out and "ignored" not in out
    assert "0 captions encoded" in out  # the encoder runs in the step: no caption embeddings are cached
    save = run_dir / "epoch2"
    diff = load_file(str(save / "pytorch_lora_weights.safetensors"))
    te_keys = [k for k in diff if k.startswith("text_encoder.")]
    # q/k/v/out_proj and fc1/fc2 of each CLIP layer, A and B each; B starts at zero, so it moved if nonzero.
    layers = {k.split(".")[-3] for k in te_keys}
    assert layers == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert all(diff[k].abs().sum() > 0 for k in te_keys if ".lora_B." in k)
    with safe_open(str(save / "probe.safetensors"), framework="pt") as fh:
        caption = (fh.metadata() or {})["caption"]
        trained = fh.get_tensor("text.encoder_hidden_states")
    base = StableDiffusionPipeline.from_pretrained(models["sd15"])
    assert not torch.allclose(_encode(base, caption), trained, atol=1e-4)
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        pipe = StableDiffusionPipeline.from_pretrained(models["sd15"])
        pipe.load_lora_weights(str(save), weight_name=name)  # the kohya file through diffusers' converter
        torch.testing.assert_close(_encode(pipe, caption), trained, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_text_encoder_lora_kohya_keys(te_run: tuple[Path, str], models: dict[str, Path]) -> None:
    from transformers import CLIPTextModel

    kohya = load_file(str(te_run[0] / "epoch2" / "lora_kohya.safetensors"))
    te_stems = {k.split(".", 1)[0] for k in kohya if k.startswith("lora_te_")}
    encoder = CLIPTextModel.from_pretrained(models["sd15"], subfolder="text_encoder")
    # The names sd-scripts writes and ComfyUI's CLIP key map looks up (transformers 4's module paths, from the
    # text_model level): lora_te_text_model_encoder_layers_<i>_<self_attn_q_proj | ... | mlp_fc2>.
    parts = (
        "self_attn_q_proj",
        "self_attn_k_proj",
        "self_attn_v_proj",
        "self_attn_out_proj",
        "mlp_fc1",
        "mlp_fc2",
    )
    expected = {
        f"lora_te_text_model_encoder_layers_{i}_{part}"
        for i in range(encoder.config.num_hidden_layers)
        for part in parts
    }
    assert te_stems == expected
    assert all(kohya[f"{s}.alpha"].item() == 4 for s in te_stems)


@pytest.mark.slow
def test_resume_without_text_encoder_lora_is_refused(te_run: tuple[Path, str]) -> None:
    import tomlkit

    run_dir = te_run[0]
    config = run_dir.parents[1] / "main.toml"
    doc = tomlkit.parse(config.read_text())
    del doc["model"]["text_encoder_lr"]
    changed = config.with_name("main_no_te.toml")
    changed.write_text(tomlkit.dumps(doc))
    code, out = launch_trainer(changed, args=("--resume_from_checkpoint",))
    assert code == 1
    assert "cannot resume: text_encoder_lora: checkpoint has [0], profile has None" in out


@pytest.mark.slow
def test_text_encoder_lora_with_eval(te_run: tuple[Path, str]) -> None:
    events = _eval_events(te_run[1])
    assert [e["step"] for e in events] == [0, 4]  # before the first step, after epoch 2


PROMPT: dict[str, Any] = {
    "prompt": "a red square",
    "device": torch.device("cpu"),
    "num_images_per_prompt": 1,
    "do_classifier_free_guidance": False,
}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_text_encoder_lora_files_load_in_diffusers(kind: str, models: dict[str, Path], work: Path) -> None:
    """Both encoders of SDXL (lora_te1_ / lora_te2_) and SD1.5's (lora_te_): diffusers' loaders, fed the kohya
    file or the diffusers file, give the prompt embeddings the live encoders give."""
    from diffusers import DiffusionPipeline

    from engine.trainer.text_lora import TEXT_ENCODER_ROWS, add_text_loras, text_lr_plan

    family = _family(kind, models[kind])
    lrs = {row[0]: 1e-4 for row in TEXT_ENCODER_ROWS[kind]}
    plan, warnings = text_lr_plan(kind, lrs)
    assert not warnings and len(plan) == len(family.text_encoders())
    torch.manual_seed(0)
    config = add_lora(family.unet, family, 4, 0.0, True)
    loras = add_text_loras(kind, family.text_encoders(), plan, 4, 0.0, True)
    save_dir = work / f"te_save_{kind}"
    save_lora(save_dir, family.unet, family, config, "float32", loras)
    prefixes = {
        k.split("_text_model")[0] for k in load_file(str(save_dir / "lora_kohya.safetensors")) if "_te" in k
    }
    assert prefixes == {row[2] for row in TEXT_ENCODER_ROWS[kind]}
    for te in family.text_encoders():
        te.eval()
    with torch.no_grad():
        live = family.encode_text(["a red square"])
    base = DiffusionPipeline.from_pretrained(models[kind])
    with torch.no_grad():
        assert not torch.allclose(
            base.encode_prompt(**PROMPT)[0],
            live["encoder_hidden_states"],
        )
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        pipe = DiffusionPipeline.from_pretrained(models[kind])
        pipe.load_lora_weights(str(save_dir), weight_name=name)
        with torch.no_grad():
            embeds = pipe.encode_prompt(**PROMPT)
        torch.testing.assert_close(embeds[0], live["encoder_hidden_states"], rtol=1e-4, atol=1e-5, msg=name)
        if kind == "sdxl":  # the pooled output of the second encoder (SDXL's text_embeds)
            torch.testing.assert_close(embeds[2], live["text_embeds"], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("model_type", "targets", "message"),
    [
        ("sd15", "everything", "adapter.targets: expected one of all_linear, attention (found 'everything')"),
        ("flux", "attention", "adapter.targets: 'attention' is for sd15, sdxl only (found 'flux')"),
    ],
)
def test_bad_adapter_targets_are_named(tmp_path: Path, model_type: str, targets: str, message: str) -> None:
    import tomlkit

    from engine.trainer.config import TrainConfigError, load_train_config

    config = write_profile(
        tmp_path, model_type=model_type, model_dir=tmp_path, directories=[{"path": str(tmp_path)}]
    )
    doc = tomlkit.parse(config.read_text())
    doc["adapter"]["targets"] = targets
    config.write_text(tomlkit.dumps(doc))
    with pytest.raises(TrainConfigError) as info:
        load_train_config(config)
    assert message in str(info.value) and str(config) in str(info.value)


@pytest.mark.slow
def test_engine_progress_reader_keeps_eval_lines_apart(eval_runs: list[tuple[Path, str]]) -> None:
    """The engine's log parser takes the run's progress from step lines only: an eval line (which also has a
    step and a loss) must not move the step back or replace the training loss."""
    from engine.jobs.progress import Progress, feed_line

    out = eval_runs[0][1]
    progress = Progress()
    for line in out.splitlines():
        feed_line(progress, line)
    last = [m for m in run_metrics(eval_runs[0][0]) if m.get("event") == "progress"][-1]
    assert (progress.step, progress.loss, progress.complete) == (last["step"], last["loss"], True)
    # The last eval line came after that step's progress line, with another loss.
    assert _eval_events(out)[-1]["step"] == last["step"] and _eval_events(out)[-1]["loss"] != last["loss"]
