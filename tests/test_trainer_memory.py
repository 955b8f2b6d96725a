"""Memory options of the built-in trainer (engine/trainer/memory.py): transformer_dtype = 'float8' storage,
per-block activation checkpointing and blocks_to_swap, on tiny random Flux transformers built from configs.

In-process first (forward/backward through the trainer's own flow loss, LoRA added by the trainer's add_lora),
then one pair of real launcher runs. Which weights float8 storage covers is checked against diffusion-pipe's own
cast loop (models/flux.py), run on the same transformer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import build_tiny_flux, launch_trainer, run_dir_of, run_metrics, write_profile

from engine.trainer import flow
from engine.trainer.config import TrainConfigError, load_train_config
from engine.trainer.family import ModelLoadError
from engine.trainer.flux import Flux
from engine.trainer.lora_io import add_lora
from engine.trainer.memory import StoredLinear

UPSTREAM = Path("/work/shared/upstream/diffusion-pipe")
CPU = torch.device("cpu")
# 3 double + 5 single blocks: enough for diffusion-pipe's swap split at blocks_to_swap = 2 (1 double, 3 single).
DIMS: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=3,
    num_single_layers=5,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
    guidance_embeds=False,
)


def tiny_transformer(dtype: torch.dtype = torch.float32, layers: tuple[int, int] = (3, 5)) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**{**DIMS, "num_layers": layers[0], "num_single_layers": layers[1]})
    return model.to(dtype).requires_grad_(False)


def flux_family(
    dtype: torch.dtype,
    transformer_dtype: str | None = None,
    swap: int = 0,
    checkpointing: bool = False,
    layers: tuple[int, int] = (3, 5),
) -> tuple[Flux, Any]:
    """The trainer's own order: LoRA (B random, so every LoRA weight gets a gradient), memory options, then
    diffusers' gradient checkpointing."""
    model = tiny_transformer(dtype, layers)
    fam = Flux({}, dtype, CPU)
    fam.transformer = fam.unet = model
    torch.manual_seed(1)
    add_lora(model, fam, 4, 0.0, True)
    fam.apply_memory_options(transformer_dtype, swap)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    return fam, fam.swapper


def batch(
    dtype: torch.dtype, seed: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 8, 8, generator=gen)
    noise = torch.randn(2, 16, 8, 8, generator=gen)
    text = {
        "encoder_hidden_states": torch.randn(2, 7, 32, generator=gen).to(dtype),
        "pooled_projections": torch.randn(2, 32, generator=gen).to(dtype),
    }
    return latents, noise, torch.tensor([0.3, 0.7]), text


def loss_and_grads(fam: Flux, seeds: tuple[int, ...] = (5,)) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One backward per seed (grads accumulate, as gradient_accumulation_steps does); LoRA grads after all."""
    model = fam.unet
    losses = []
    for seed in seeds:
        latents, noise, t, text = batch(fam.dtype, seed)
        loss = flow.flow_loss(
            lambda x, tt, kw: fam.denoise(model, x, tt, kw), latents, noise, t, text, dtype=fam.dtype
        )
        loss.backward()
        losses.append(float(loss.detach()))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = None
    return losses, grads


def assert_same(
    a: tuple[list[float], dict[str, torch.Tensor]], b: tuple[list[float], dict[str, torch.Tensor]]
) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-6, abs=1e-7)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 0
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-5, atol=1e-7, msg=name)
        assert float(a[1][name].abs().sum()) > 0, f"{name}: no gradient"


# ---- float8 storage ----------------------------------------------------------------------------------------
def _upstream_flux_cast() -> tuple[list[str], str]:
    """diffusion-pipe's KEEP_IN_HIGH_PRECISION and its cast loop over transformer.named_parameters()."""
    source = (UPSTREAM / "models" / "flux.py").read_text()
    tree = ast.parse(source)
    keep = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "KEEP_IN_HIGH_PRECISION"
    )
    loop = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.For)
        and "transformer.named_parameters()" in ast.unparse(node.iter)
        and "transformer_dtype" in ast.unparse(node)
    )
    return keep, ast.unparse(loop)


@pytest.mark.skipif(not (UPSTREAM / "models" / "flux.py").is_file(), reason="no upstream diffusion-pipe")
def test_float8_covers_what_diffusion_pipe_casts() -> None:
    keep, loop = _upstream_flux_cast()
    theirs = tiny_transformer(torch.bfloat16)
    exec(
        loop,
        {"transformer": theirs, "KEEP_IN_HIGH_PRECISION": keep, "transformer_dtype": torch.float8_e4m3fn},
    )
    expected = {n for n, p in theirs.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert len(expected) > 20  # every block Linear: the check below compares real sets

    fam, _ = flux_family(torch.bfloat16, "float8")
    ours = {n.replace(".base_layer", ""): p for n, p in fam.unet.named_parameters()}
    stored = {n for n, p in ours.items() if p.dtype == torch.float8_e4m3fn}
    assert stored == expected
    # Everything else stays at the model dtype, LoRA at fp32 and trainable.
    for name, p in ours.items():
        if "lora_" in name:
            assert p.dtype == torch.float32 and p.requires_grad, name
        elif name not in stored:
            assert p.dtype == torch.bfloat16 and not p.requires_grad, name
    linear = fam.unet.transformer_blocks[0].attn.to_q
    assert type(linear.base_layer) is StoredLinear and linear.base_layer.weight.dtype == torch.float8_e4m3fn
    assert fam.unet.dtype == torch.bfloat16  # diffusers' model.dtype still reports the compute dtype


def test_float8_e5m2_and_chroma_keep_list() -> None:
    fam, _ = flux_family(torch.float32, "float8_e5m2")
    assert fam.unet.single_transformer_blocks[0].proj_out.base_layer.weight.dtype == torch.float8_e5m2
    assert fam.unet.proj_out.weight.dtype == torch.float32  # the final layer stays (^proj_out only)
    from engine.trainer.chroma import Chroma

    # diffusion-pipe's chroma list (norm, bias, img_in, txt_in, distilled_guidance_layer, final_layer) in
    # diffusers names keeps the embedders and the final layer.
    keep = Chroma.keep_in_high_precision
    for kept in ("x_embedder", "context_embedder", "distilled_guidance_layer.layers.0.linear_1", "proj_out"):
        assert any(re.search(p, kept) for p in keep), kept
    assert not any(re.search(p, "single_transformer_blocks.0.proj_out") for p in keep)


def test_float8_trains_within_tolerance_of_bf16() -> None:
    """Same LoRA init, same batch, 8 AdamW steps: the float8-stored model's losses track the bf16 model's."""

    def train(transformer_dtype: str | None) -> list[float]:
        fam, _ = flux_family(torch.bfloat16, transformer_dtype, layers=(1, 2))
        params = [p for p in fam.unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-2)
        losses = []
        latents, noise, t, text = batch(torch.bfloat16)
        for _ in range(8):
            loss = flow.flow_loss(
                lambda x, tt, kw: fam.denoise(fam.unet, x, tt, kw),
                latents,
                noise,
                t,
                text,
                dtype=torch.bfloat16,
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        return losses

    bf16 = train(None)
    fp8 = train("float8")
    assert bf16[-1] < bf16[0] * 0.9 and fp8[-1] < fp8[0] * 0.9  # both really train
    assert fp8 == pytest.approx(bf16, rel=0.02)
    assert fp8 != bf16  # and float8 really is in the forward (the weights are rounded)


# ---- activation checkpointing ------------------------------------------------------------------------------
def count_block_forwards(model: torch.nn.Module) -> list[int]:
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    counts = [0] * len(blocks)
    for i, block in enumerate(blocks):
        # A pre-hook: the non-reentrant recompute stops once it has what backward needs, before forward hooks.
        block.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("transformer_dtype", [None, "float8"])
def test_checkpointing_each_block_gives_the_same_gradients(transformer_dtype: str | None) -> None:
    plain, _ = flux_family(torch.float32, transformer_dtype, layers=(2, 2))
    ckpt, _ = flux_family(torch.float32, transformer_dtype, checkpointing=True, layers=(2, 2))
    counts = count_block_forwards(ckpt.unet)
    assert_same(loss_and_grads(plain), loss_and_grads(ckpt))
    # Every block (double and single, LoRA-wrapped by peft) ran twice: forward, then the recompute in backward.
    assert counts == [2] * 4


# ---- block swapping ----------------------------------------------------------------------------------------
def test_block_swap_matches_no_swap() -> None:
    ref = flux_family(torch.float32)[0]
    fam, swapper = flux_family(torch.float32, swap=2)
    blocks = [*fam.unet.transformer_blocks, *fam.unet.single_transformer_blocks]
    # diffusion-pipe's split for 2: the last double block and the last 3 single blocks.
    swapped = [blocks[2], *blocks[5:]]
    assert [[id(p) for p, _ in homes] for homes in swapper.params] == [
        [id(p) for p in b.parameters() if not p.requires_grad] for b in swapped
    ]
    frozen = [p for b in swapped for p in b.parameters() if not p.requires_grad]
    assert frozen and all(p.numel() == 0 for p in frozen)  # off the device between steps
    assert all(p.numel() > 0 for p in blocks[0].parameters())  # the others stay
    # Two micro-batches accumulated, as gradient_accumulation_steps = 2.
    assert_same(loss_and_grads(ref, (5, 6)), loss_and_grads(fam, (5, 6)))
    ref_blocks = [*ref.unet.transformer_blocks, *ref.unet.single_transformer_blocks]
    frozen_bytes = sum(
        p.numel() * 4 for i in (2, 5, 6, 7) for p in ref_blocks[i].parameters() if not p.requires_grad
    )
    assert swapper.swapped_bytes() == frozen_bytes
    # An eval forward (the save probe) under no_grad leaves them off the device as well.
    with torch.no_grad():
        latents, _, t, text = batch(torch.float32)
        torch.testing.assert_close(
            fam.denoise(fam.unet, latents, t, text), ref.denoise(ref.unet, latents, t, text)
        )
    assert all(p.numel() == 0 for p in frozen)


def test_block_swap_with_float8_and_checkpointing_matches() -> None:
    ref = flux_family(torch.float32, "float8", checkpointing=True)[0]
    fam, _ = flux_family(torch.float32, "float8", swap=2, checkpointing=True)
    assert fam.unet.transformer_blocks[2].attn.to_q.base_layer.weight.numel() == 0
    assert_same(loss_and_grads(ref), loss_and_grads(fam))


def test_chroma_float8_swap_and_checkpointing_match() -> None:
    """Chroma's blocks (single blocks return one tensor, the text mask rides in kwargs) under all three."""
    from diffusers import ChromaTransformer2DModel

    from engine.trainer.chroma import Chroma

    def family(blocks_to_swap: int) -> Chroma:
        torch.manual_seed(0)
        dims = {k: v for k, v in DIMS.items() if k not in ("pooled_projection_dim", "guidance_embeds")}
        model = ChromaTransformer2DModel(
            **dims, approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1
        ).requires_grad_(False)
        fam = Chroma({}, torch.float32, CPU)
        fam.transformer = fam.unet = model
        torch.manual_seed(1)
        add_lora(model, fam, 4, 0.0, True)
        fam.apply_memory_options("float8", blocks_to_swap)
        model.enable_gradient_checkpointing()
        return fam

    def run(fam: Chroma) -> tuple[list[float], dict[str, torch.Tensor]]:
        latents, noise, t, text = batch(torch.float32)
        kwargs = {"encoder_hidden_states": text["encoder_hidden_states"], "attention_mask": torch.ones(2, 7)}
        loss = flow.flow_loss(
            lambda x, tt, kw: fam.denoise(fam.unet, x, tt, kw), latents, noise, t, kwargs, dtype=torch.float32
        )
        loss.backward()
        return [float(loss.detach())], {n: p.grad for n, p in fam.unet.named_parameters() if p.requires_grad}

    ref, swapped = family(0), family(2)
    stored = {n for n, p in ref.unet.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert stored and all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in stored)
    assert all(p.dtype == torch.float32 for p in ref.unet.distilled_guidance_layer.parameters())
    assert_same(run(ref), run(swapped))


def test_block_swap_limits_are_clear_errors() -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"blocks_to_swap = 4: double blocks: 2 is too many for a list of 3 blocks \(at most 1\)",
    ):
        flux_family(torch.float32, swap=4)


# ---- profile checks ----------------------------------------------------------------------------------------
def _config(tmp_path: Path, model_type: str, model_extra: str, **main: object) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    config = write_profile(
        tmp_path,
        model_type=model_type,
        model_dir=tmp_path,
        directories=[{"path": str(tmp_path / "data")}],
        **main,
    )
    text = config.read_text().replace('dtype = "float32"\n', 'dtype = "bfloat16"\n' + model_extra, 1)
    config.write_text(text)
    return config


CASES: list[tuple[str, str, dict[str, object], str | None]] = [
    ("flux", 'transformer_dtype = "float8"\n', {"blocks_to_swap": 2, "activation_checkpointing": True}, None),
    ("chroma", 'transformer_dtype = "float8_e5m2"\ntransformer_path = "t"\n', {}, None),
    ("sdxl", 'transformer_dtype = "bfloat16"\n', {}, None),  # the same as dtype: nothing to do
    ("sdxl", 'transformer_dtype = "float8"\n', {}, "model.transformer_dtype"),
    ("sd15", "", {"blocks_to_swap": 1}, "blocks_to_swap"),
    ("flux", 'transformer_dtype = "fp8"\n', {}, "model.transformer_dtype"),
    ("flux", "", {"activation_checkpointing": "unsloth"}, "activation_checkpointing"),
    ("flux", "", {"reentrant_activation_checkpointing": True}, "reentrant_activation_checkpointing"),
]


@pytest.mark.parametrize(("model_type", "extra", "main", "bad_key"), CASES)
def test_trainer_config_and_validation_agree(
    tmp_path: Path, model_type: str, extra: str, main: dict[str, object], bad_key: str | None
) -> None:
    from profiles.document import load_profile
    from profiles.validate import validate_profile

    config = _config(tmp_path, model_type, extra, **main)
    problems = [
        p
        for p in validate_profile(load_profile(config), backend="builtin", check_paths="off")
        if p.severity == "error" and p.key == bad_key
    ]
    if bad_key is None:
        cfg = load_train_config(config)
        assert cfg.blocks_to_swap == main.get("blocks_to_swap", 0)
        assert cfg.transformer_dtype == (None if "bfloat16" in extra else extra.split('"')[1] or None)
        return
    with pytest.raises(TrainConfigError, match=rf"main.toml: {bad_key}: "):
        load_train_config(config)
    assert problems, f"validation let {bad_key} through"


def test_model_dtype_float8_points_at_transformer_dtype(tmp_path: Path) -> None:
    config = _config(tmp_path, "flux", "")
    config.write_text(config.read_text().replace('dtype = "bfloat16"', 'dtype = "float8"', 1))
    with pytest.raises(TrainConfigError, match="model.dtype: .*transformer_dtype = 'float8'"):
        load_train_config(config)


# ---- under the launcher ------------------------------------------------------------------------------------
Run = tuple[list[float], str, Path, Path]  # losses per step, console output, run folder, main.toml


@pytest.fixture(scope="module")
def flux_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Two real runs on the same tiny Flux (3 + 5 blocks) and global batch 2: bf16 on one rank, and float8 +
    checkpointing + blocks_to_swap on two ranks of batch 1 (N ranks of batch B train as one of N*B), with a
    DeepSpeed checkpoint written while blocks are swapped out."""
    from engine.demo import build_synthetic_dataset

    work = tmp_path_factory.mktemp("memory")
    pipe = build_tiny_flux(work / "flux", guidance_embeds=False)
    tiny_transformer().save_pretrained(work / "transformer")
    data = build_synthetic_dataset(work / "shapes", count=4)
    runs = {}
    float8 = {"activation_checkpointing": True, "blocks_to_swap": 2, "checkpoint_every_n_steps": 4}
    for name, extra, gpus, main in (
        ("bf16", "", 1, {"micro_batch_size_per_gpu": 2}),
        ("float8", 'transformer_dtype = "float8"\n', 2, {"micro_batch_size_per_gpu": 1, **float8}),
    ):
        config = write_profile(
            work / name,
            model_type="flux",
            model_dir=pipe,
            directories=[{"path": str(data)}],
            epochs=4,
            save_every_n_epochs=4,
            lr=2e-2,
            **main,
        )
        model = f'dtype = "bfloat16"\ntransformer_path = "{work / "transformer"}"\n' + extra
        config.write_text(config.read_text().replace('dtype = "float32"\n', model, 1))
        code, out = launch_trainer(config, num_gpus=gpus)
        assert code == 0, out[-6000:]
        run_dir = run_dir_of(out)
        losses = [float(m["loss"]) for m in run_metrics(run_dir)]  # type: ignore[arg-type]
        runs[name] = (losses, out, run_dir, config)
    return runs


@pytest.mark.slow
def test_float8_swap_run_tracks_the_bf16_run(flux_runs: dict[str, Run]) -> None:
    bf16, _, _, _ = flux_runs["bf16"]
    fp8, log, run_dir, _ = flux_runs["float8"]
    assert len(bf16) == len(fp8) == 8
    assert fp8 == pytest.approx(bf16, rel=0.05)
    assert fp8 != bf16  # float8 weights really were in the forward
    model = tiny_transformer()
    n = sum(
        isinstance(m, torch.nn.Linear)
        for blocks in (model.transformer_blocks, model.single_transformer_blocks)
        for m in blocks.modules()
    )
    assert (
        f"transformer_dtype: {n} Linear weights stored as torch.float8_e4m3fn, computed in torch.bfloat16"
        in log
    )
    assert "blocks_to_swap: 4 blocks" in log
    assert (run_dir / "global_step4").is_dir() and (run_dir / "global_step8").is_dir()
    from safetensors.torch import load_file

    lora = load_file(str(run_dir / "epoch4" / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("transformer.") for k in lora)
    assert {t.dtype for t in lora.values()} == {torch.bfloat16}  # LoRA only, at save_dtype, never float8


@pytest.mark.slow
def test_float8_swap_run_resumes_with_the_same_losses(flux_runs: dict[str, Run]) -> None:
    import shutil

    full, _, run_dir, config = flux_runs["float8"]
    # As after a crash at step 6: the newest checkpoint is global_step4; swapped blocks hold placeholders then.
    (run_dir / "latest").write_text("global_step4")
    for name in ("global_step8", "epoch4"):
        shutil.rmtree(run_dir / name)
    code, out = launch_trainer(config, num_gpus=2, args=("--resume_from_checkpoint",))
    assert code == 0, out[-6000:]
    resumed = [float(m["loss"]) for m in run_metrics(run_dir)][len(full) :]  # type: ignore[arg-type]
    assert resumed == pytest.approx(full[4:], rel=1e-5, abs=1e-6)


def test_memory_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/bench_trainer_memory.py on the smallest model it takes, so it does not rot before a GPU runs it."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_trainer_memory.py"
    spec = importlib.util.spec_from_file_location("bench_trainer_memory", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = [
        "--layers",
        "2",
        "--swap",
        "1",
        "--heads",
        "1",
        "--head-dim",
        "16",
        "--text-dim",
        "16",
        "--tokens",
        "16",
    ]
    assert bench.main([*args, "--text-tokens", "4", "--rank", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.45 < report["ratio"] < 0.75  # float8 about halves the frozen base (kept layers stay bf16)
    swapped = report["variants"][-1]
    assert swapped["swapped_bytes"] > 0
    assert swapped["frozen_bytes_on_device"] + swapped["swapped_bytes"] == report["frozen_base_bytes_float8"]
