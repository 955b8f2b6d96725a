"""The trainer's speed work (engine/trainer/speed.py, prefetch.py) leaves the results as they were.

In-process checks on tiny real models (diffusers UNet / Flux transformer with peft LoRA, as the trainer adds
it): the fast step's losses and weights against the plain step's, the foreach grad norm and clipping against
torch's, torch.compile's graphs per bucket shape, the prefetching loader; then (slow) the real trainer under
the deepspeed launcher with and without `plain_step`. CUDA-only parts (fused AdamW on the GPU, TF32, pinned
copies, channels_last) cannot run here: their switches are checked by `choose`'s table instead.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.trainer import speed
from engine.trainer.families import get_family
from engine.trainer.family import Family
from engine.trainer.lora_io import add_lora
from engine.trainer.loss import DdpmTerms, step_loss
from engine.trainer.optim import build_optimizer
from engine.trainer.prefetch import Prefetcher

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: results must not depend on the thread count either
    yield
    torch.set_num_threads(before)


def tiny_unet_family(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Family:
    """An sd15 family object around a tiny random UNet with the trainer's LoRA (random B, so all of it trains)."""
    from diffusers import UNet2DConditionModel

    family = get_family("sd15")({"type": "sd15"}, dtype, CPU)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    ).to(dtype)
    unet.requires_grad_(False)
    family.unet = unet
    family.lora_targets = "all_linear"
    torch.manual_seed(seed + 1)
    add_lora(unet, family, 4, 0.0, init_random_b=True)
    unet.train()
    return family


def unet_batch(family: Family, seed: int, side: int = 8, batch: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(batch, 4, side, side, generator=g),
        "noise": torch.randn(batch, 4, side, side, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "kwargs": family.unet_kwargs({"encoder_hidden_states": torch.randn(batch, 7, 32, generator=g)}, {}),
    }


def ddpm() -> DdpmTerms:
    from engine.trainer.ddpm import schedule_of

    return DdpmTerms(schedule_of({}).alphas_cumprod)


def run_steps(
    family: Family, s: speed.Speed, batches: list[list[dict[str, Any]]], clip: float = 1.0
) -> tuple[list[float], list[float]]:
    """train_step over the given micro-batches per step, as the trainer calls it; (losses, grad norms)."""
    params = [p for p in family.unet.parameters() if p.requires_grad]
    opt = build_optimizer({"type": "adamw", "lr": 1e-2}, [{"params": params}], fused=s.fused_adamw)
    terms = ddpm()

    def opt_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    losses, norms = [], []
    for micro_batches in batches:
        scale = 1.0 / len(micro_batches)  # the accumulated gradient is the mean's, as DeepSpeed's
        loss, norm = speed.train_step(
            [lambda b=b: step_loss(family, family.unet, b, terms) for b in micro_batches],
            backward=lambda loss, scale=scale: (loss * scale).backward(),
            optimizer_step=lambda: None,
            speed=s,
            device=CPU,
            norm_params=params,
            clip=clip,
        )
        opt_step()
        losses.append(float(loss))
        assert norm is not None
        norms.append(float(norm))
    return losses, norms


def lora_weights(family: Family) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in family.unet.named_parameters() if p.requires_grad}


# ---- settings ------------------------------------------------------------------------------------------------
SETTINGS_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "cpu bf16 unet",
        dict(device=CPU, dtype=torch.bfloat16, family="sdxl", unet=True),
        dict(autocast=torch.bfloat16, tf32=False, compile=False, fused_adamw=False, channels_last=False,
             pin_memory=False, logging_steps=1, own_clipping=True, prefetch=2),
    ),
    (
        "cpu fp32",
        dict(device=CPU, dtype=torch.float32, family="sd15", unet=True),
        dict(autocast=None, compile=False, logging_steps=1),
    ),
    (
        "cuda bf16 sdxl",
        dict(device=CUDA, dtype=torch.bfloat16, family="sdxl", unet=True),
        dict(autocast=torch.bfloat16, tf32=True, compile=True, fused_adamw=True, channels_last=True,
             pin_memory=True, logging_steps=10),
    ),
    (
        "cuda bf16 flux",
        dict(device=CUDA, dtype=torch.bfloat16, family="flux", unet=False),
        dict(autocast=torch.bfloat16, compile=True, channels_last=False),
    ),
    ("cuda fp16", dict(device=CUDA, dtype=torch.float16, family="sdxl", unet=True), dict(autocast=torch.float16)),
    ("cuda fp32: TF32 instead", dict(device=CUDA, dtype=torch.float32, family="flux", unet=False),
     dict(autocast=None, tf32=True)),
    ("qwen_image: shapes vary per batch", dict(device=CUDA, dtype=torch.bfloat16, family="qwen_image", unet=False),
     dict(compile=False, fused_adamw=True)),
    ("blocks_to_swap: hooks", dict(device=CUDA, dtype=torch.bfloat16, family="flux", unet=False, blocks_to_swap=4),
     dict(compile=False)),
    ("compile = false", dict(device=CUDA, dtype=torch.bfloat16, family="flux", unet=False, compile_key=False),
     dict(compile=False)),
    ("compile = true on a CPU", dict(device=CPU, dtype=torch.float32, family="sd15", unet=True, compile_key=True),
     dict(compile=True)),
    ("zero 2: DeepSpeed clips", dict(device=CUDA, dtype=torch.bfloat16, family="sdxl", unet=True, zero_stage=2),
     dict(own_clipping=False)),
    ("logging_steps given", dict(device=CUDA, dtype=torch.bfloat16, family="sdxl", unet=True, logging_steps=3),
     dict(logging_steps=3)),
    ("plain_step", dict(device=CUDA, dtype=torch.bfloat16, family="sdxl", unet=True, plain=True),
     dict(plain=True, autocast=None, tf32=False, compile=False, fused_adamw=False, own_clipping=False,
          prefetch=0, logging_steps=1, channels_last=False, pin_memory=False)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "expected"), [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES]
)
def test_choose_gates_each_feature_on_device_and_profile(
    given: dict[str, Any], expected: dict[str, Any]
) -> None:
    args: dict[str, Any] = dict(
        zero_stage=0, blocks_to_swap=0, compile_key=None, logging_steps=None, plain=False
    )
    args.update(given)
    chosen = speed.choose(**args)
    assert {k: getattr(chosen, k) for k in expected} == expected
    assert chosen.describe().startswith("speed: ")


# ---- grad norm and clipping ----------------------------------------------------------------------------------
def _params_with_grads(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape, dtype in (
        ((3, 4), torch.float32),
        ((5,), torch.float32),
        ((2, 2), torch.bfloat16),
        ((7,), None),
    ):
        p = torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype or torch.float32))
        if dtype is not None:  # the last one has no grad (a frozen or unused LoRA tensor)
            p.grad = torch.randn(shape, generator=g).to(dtype)
        params.append(p)
    return params


def test_grad_norm_equals_the_per_parameter_norm_over_mixed_dtypes() -> None:
    params = _params_with_grads(0)
    expected = torch.linalg.vector_norm(
        torch.stack([p.grad.float().norm() for p in params if p.grad is not None])
    )
    got = speed.grad_norm(params)
    assert got is not None and got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    assert speed.grad_norm([torch.nn.Parameter(torch.zeros(2))]) is None


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_scales_like_torch_clip_grad_norm(max_norm: float) -> None:
    ours, theirs = _params_with_grads(1), _params_with_grads(1)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=False)
    norm = speed.grad_norm(ours)
    assert norm is not None
    speed.clip_(ours, max_norm, norm)
    for a, b in zip(ours, theirs, strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6)
    if max_norm > 1e5:  # under the limit: untouched
        for a, b in zip(ours, _params_with_grads(1), strict=True):
            if a.grad is not None:
                assert torch.equal(a.grad, b.grad)


# ---- the step -------------------------------------------------------------------------------------------------
def test_fast_step_loss_and_weights_stay_within_tolerance_of_the_plain_step() -> None:
    """bf16 base + fp32 LoRA: autocast (fast) vs fp32 LoRA matmuls (plain), same data, 4 steps of 2 micro-batches."""
    fast_family = tiny_unet_family()
    plain_family = copy.deepcopy(fast_family)
    batches = [[unet_batch(fast_family, 10 * step + m) for m in range(2)] for step in range(4)]
    fast = speed.choose(
        device=CPU, dtype=torch.bfloat16, family="sd15", unet=True, zero_stage=0, blocks_to_swap=0,
        compile_key=None, logging_steps=None, plain=False,
    )  # fmt: skip
    assert fast.autocast == torch.bfloat16
    fast_losses, fast_norms = run_steps(fast_family, fast, batches)
    plain_losses, plain_norms = run_steps(plain_family, speed.PLAIN, batches)
    assert fast_losses == pytest.approx(plain_losses, rel=2e-2)
    assert fast_norms == pytest.approx(plain_norms, rel=5e-2)
    for name, w in lora_weights(fast_family).items():
        assert w.dtype == torch.float32, name  # the masters stay fp32 under autocast
    assert fast_losses != plain_losses  # ...and the runs did differ: autocast ran the LoRA matmuls in bf16


def test_fast_step_gradients_point_where_the_plain_steps_do() -> None:
    """One backward from the same weights: the LoRA gradient under bf16 autocast vs fp32 LoRA matmuls. (Weights
    after several AdamW steps are no measure: Adam moves a near-zero gradient's weight by a full lr either way.)"""
    family = tiny_unet_family()
    params = [p for p in family.unet.parameters() if p.requires_grad]
    batch = unet_batch(family, 3)
    grads = []
    for s in (speed.choose(device=CPU, dtype=torch.bfloat16, family="sd15", unet=True, zero_stage=0,
                           blocks_to_swap=0, compile_key=None, logging_steps=None, plain=False), speed.PLAIN):  # fmt: skip
        with speed.forward_context(s, CPU):
            loss = step_loss(family, family.unet, batch, ddpm())
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        for p in params:
            p.grad = None
    fast, plain = grads
    assert torch.nn.functional.cosine_similarity(fast, plain, dim=0) > 0.99
    assert float(fast.norm()) == pytest.approx(float(plain.norm()), rel=0.05)
    assert not torch.equal(fast, plain)


def test_autocast_runs_the_lora_matmuls_in_bf16_and_plain_does_not() -> None:
    family = tiny_unet_family()
    seen: list[torch.dtype] = []
    lora_a = next(m for n, m in family.unet.named_modules() if n.endswith("lora_A.default"))
    handle = lora_a.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batch = unet_batch(family, 0)
    for s in (speed.choose(device=CPU, dtype=torch.bfloat16, family="sd15", unet=True, zero_stage=0,
                           blocks_to_swap=0, compile_key=None, logging_steps=None, plain=False), speed.PLAIN):  # fmt: skip
        with speed.forward_context(s, CPU):
            step_loss(family, family.unet, batch, ddpm())
    handle.remove()
    assert seen == [torch.bfloat16, torch.float32]


def test_train_step_returns_the_mean_loss_and_the_norm_before_clipping() -> None:
    family = tiny_unet_family(torch.float32)
    params = [p for p in family.unet.parameters() if p.requires_grad]
    micro = [unet_batch(family, 1), unet_batch(family, 2)]
    terms = ddpm()
    expected_losses = []
    for b in micro:  # what the two micro-batches give, and the grad norm they sum to
        torch.manual_seed(0)
        expected_losses.append(step_loss(family, family.unet, b, terms))
        expected_losses[-1].backward()
    expected_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    for p in params:
        p.grad = None
    seen_norm_at_step: list[float] = []

    loss, norm = speed.train_step(
        [lambda b=b: step_loss(family, family.unet, b, terms) for b in micro],
        backward=lambda loss: loss.backward(),
        optimizer_step=lambda: seen_norm_at_step.append(float(speed.grad_norm(params) or 0.0)),
        speed=speed.PLAIN.__class__(own_clipping=True),
        device=CPU,
        norm_params=params,
        clip=1e-3,
    )
    assert isinstance(loss, torch.Tensor) and isinstance(norm, torch.Tensor)  # still tensors: no host read
    assert float(loss.detach()) == pytest.approx(
        float(sum(x.detach() for x in expected_losses)) / 2, rel=1e-5
    )
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-4)
    # clipped before the last optimizer step only (the first sees the first micro-batch's raw gradient)
    assert seen_norm_at_step[1] == pytest.approx(1e-3, rel=1e-3)
    assert seen_norm_at_step[0] > 1e-2


# ---- torch.compile and bucket shapes -------------------------------------------------------------------------
class TinyDenoiser(torch.nn.Module):
    """Conv in, one attention over the pixels (SDPA), conv out: a denoiser's kinds of ops, cheap to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(16, 16) for _ in range(4))
        self.conv_out = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        b, c, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2)
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        tokens = tokens + self.to_out(torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, 0])
        return self.conv_out(tokens.transpose(1, 2).reshape(b, c, height, width))


def _compiles_per_epoch(
    model: torch.nn.Module, loss_at: Callable[[int], torch.Tensor], sides: list[int]
) -> list[int]:
    """Compile `model` as the trainer does (compile_options for len(sides) buckets) with a backend that counts
    graphs and runs them eagerly (inductor's C++ build is not what is tested); train two epochs over the
    buckets through train_step; the graph count after each epoch."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled: list[int] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        compiled.append(1)
        return gm.forward

    model.compile(backend=counting_backend, **speed.compile_options(len(sides)))
    params = [p for p in model.parameters() if p.requires_grad]
    per_epoch = []
    try:
        for _epoch in range(2):
            for side in sides:
                speed.train_step(
                    [lambda side=side: loss_at(side)],
                    backward=lambda loss: loss.backward(),
                    optimizer_step=lambda: [setattr(p, "grad", None) for p in params],
                    speed=speed.Speed(own_clipping=True),
                    device=CPU,
                    norm_params=params,
                    clip=1.0,
                )
            per_epoch.append(len(compiled))
    finally:
        torch._dynamo.reset()
    return per_epoch


def test_compile_makes_graphs_per_bucket_and_none_after_the_first_epoch() -> None:
    """Ten bucket shapes, more than dynamo's default 8 graphs per function: every shape gets its static graph in
    epoch 1 (none falls back to eager at the limit) and epoch 2 over the same buckets adds none."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = TinyDenoiser().requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out"]), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    sides = [4, 6, 8, 10, 12, 14, 16, 18, 20, 22]

    def loss_at(side: int) -> torch.Tensor:
        x = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(side))
        return torch.nn.functional.mse_loss(model(x), x)

    per_epoch = _compiles_per_epoch(model, loss_at, sides)
    assert per_epoch[0] == len(sides), per_epoch  # one static graph per bucket shape
    assert per_epoch[1] == per_epoch[0], "epoch 2 over the same buckets recompiled"


@pytest.mark.slow
def test_compile_of_the_trainers_unet_adds_no_graphs_in_the_second_epoch() -> None:
    """The same on a real (tiny) diffusers UNet with the trainer's LoRA and loss, three buckets."""
    family = tiny_unet_family(torch.float32)
    terms = ddpm()
    sides = [8, 16, 24]
    per_epoch = _compiles_per_epoch(
        family.unet,
        lambda side: step_loss(family, family.unet, unet_batch(family, side, side, 1), terms),
        sides,
    )
    per_shape = per_epoch[0] // len(sides)
    assert per_shape >= 1 and per_epoch[0] == per_shape * len(sides), per_epoch
    assert per_epoch[1] == per_epoch[0], "epoch 2 over the same buckets recompiled"


# ---- the prefetching loader ----------------------------------------------------------------------------------
def test_prefetcher_yields_in_order_and_runs_ahead_in_a_thread() -> None:
    threads: set[str] = set()

    def produce(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x * x

    with Prefetcher(range(20), produce, depth=2) as loader:
        assert list(loader) == [x * x for x in range(20)]
    assert threads == {"dpdeck-prefetch"}
    threads.clear()
    with Prefetcher(range(5), produce, depth=0) as loader:  # depth 0: inline, the plain step's loader
        assert list(loader) == [0, 1, 4, 9, 16]
    assert threads == {threading.current_thread().name}


def test_prefetcher_raises_the_producers_error_at_its_item() -> None:
    def produce(x: int) -> int:
        if x == 3:
            raise ValueError("unreadable cache entry 3")
        return x

    got = []
    with (
        pytest.raises(ValueError, match="unreadable cache entry 3"),
        Prefetcher(range(6), produce, 2) as loader,
    ):
        for x in loader:
            got.append(x)
    assert got == [0, 1, 2]


def test_prefetcher_stops_its_thread_when_left_early() -> None:
    made: list[int] = []

    def produce(x: int) -> int:
        made.append(x)
        return x

    loader = Prefetcher(range(1000), produce, depth=2)
    with loader:
        for x in loader:
            if x == 1:
                break
    assert loader._thread is None
    time.sleep(0.3)
    assert len(made) <= 6  # it stopped a few items ahead, not at the end of the list


def test_prefetched_host_batches_equal_inline_ones() -> None:
    """The loader's randomness comes from per-sample generators only, so a thread gives the same tensors."""
    from engine.trainer.data import sample_seed

    def produce(step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sample_seed(42, step, 0))
        return torch.randn(4, 8, 8, generator=gen)

    torch.manual_seed(0)
    with Prefetcher(range(8), produce, 2) as loader:
        threaded = [x for x in loader if torch.rand(()) is not None]  # the main thread draws meanwhile
    inline = [produce(step) for step in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(threaded, inline, strict=True))


# ---- optimizer and profile keys ------------------------------------------------------------------------------
def test_build_optimizer_asks_for_fused_adamw_unless_the_profile_chose() -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert (
        build_optimizer({"type": "adamw", "lr": 1e-3}, [{"params": p}], fused=True).defaults["fused"] is True
    )
    assert not build_optimizer({"type": "adamw", "lr": 1e-3}, [{"params": p}]).defaults["fused"]
    chosen = build_optimizer({"type": "adamw", "lr": 1e-3, "foreach": True}, [{"params": p}], fused=True)
    assert not chosen.defaults["fused"] and chosen.defaults["foreach"] is True


def _profile(tmp_path: Path, **main: object) -> Path:
    from tiny_models import write_profile

    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    return write_profile(tmp_path / "p", model_type="sd15", model_dir=model_dir, directories=[], **main)


@pytest.mark.parametrize(
    ("main", "message"),
    [
        ({"plain_step": "yes"}, r"main.toml: plain_step: expected true or false \(found 'yes'\)"),
        ({"logging_steps": 0}, r"main.toml: logging_steps: expected an integer >= 1 \(found 0\)"),
    ],
)
def test_speed_keys_bad_values_name_file_and_key(
    tmp_path: Path, main: dict[str, object], message: str
) -> None:
    from engine.trainer.config import TrainConfigError, load_train_config

    with pytest.raises(TrainConfigError, match=message):
        load_train_config(_profile(tmp_path, **main))


def test_speed_keys_are_read(tmp_path: Path) -> None:
    from engine.trainer.config import load_train_config

    cfg = load_train_config(_profile(tmp_path, plain_step=True, logging_steps=5))
    assert cfg.plain_step is True and cfg.logging_steps == 5
    cfg = load_train_config(_profile(tmp_path / "defaults"))
    assert cfg.plain_step is False and cfg.logging_steps is None
    assert not any("plain_step" in w for w in cfg.warnings)  # a key `profile validate` knows for this backend


# ---- the real trainer ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "chroma"])
def test_trainer_fast_step_matches_plain_step(tmp_path: Path, family: str) -> None:
    """Through the deepspeed launcher on CPU, bf16 base: the default (autocast, prefetch, loss read every 3
    steps) against plain_step; every step reported either way, losses within tolerance."""
    import tomlkit
    from tiny_models import launch_trainer, run_dir_of, run_metrics, write_profile

    from engine.demo import build_synthetic_dataset
    from engine.demo_models import build_tiny_chroma, build_tiny_sd15

    data = build_synthetic_dataset(tmp_path / "shapes", count=8)
    if family == "sd15":
        model_dir, extra_model = build_tiny_sd15(tmp_path / "model"), {}
    else:
        schnell, transformer = build_tiny_chroma(tmp_path / "model")
        model_dir, extra_model = schnell, {"transformer_path": str(transformer)}
    runs = {}
    for name, main in (("fast", {"logging_steps": 3}), ("plain", {"plain_step": True})):
        cfg = write_profile(
            tmp_path / name, model_type=family, model_dir=model_dir, directories=[{"path": str(data)}],
            epochs=3, micro_batch_size_per_gpu=2, lr=2e-2, **main,
        )  # fmt: skip
        doc = tomlkit.parse(cfg.read_text())
        doc["model"]["dtype"] = "bfloat16"
        for k, v in extra_model.items():
            doc["model"][k] = v
        cfg.write_text(tomlkit.dumps(doc))
        code, out = launch_trainer(cfg)
        assert code == 0, out[-4000:]
        runs[name] = (out, [m for m in run_metrics(run_dir_of(out)) if m.get("event") == "progress"])
    fast_out, fast = runs["fast"]
    plain_out, plain = runs["plain"]
    assert "speed: autocast bfloat16" in fast_out and "loss read every 3 step(s)" in fast_out
    assert "speed: plain_step" in plain_out
    assert [m["step"] for m in fast] == [m["step"] for m in plain] == list(range(1, 13))
    assert sum(line.startswith("steps: ") for line in fast_out.splitlines()) == 12
    assert [m["loss"] for m in fast] == pytest.approx([m["loss"] for m in plain], rel=3e-2)
    assert all(m["grad_norm"] is not None and m["grad_norm"] > 0 for m in fast)


@pytest.mark.slow
def test_save_quit_acts_at_the_next_logging_read(tmp_path: Path) -> None:
    """With logging_steps = 4 the save_quit file is looked at every 4 steps (with the loss read): touched during
    step 1-2, the run saves, checkpoints and exits at step 4, having reported every step before it."""
    import json

    from tiny_models import launch_trainer, run_dir_of, run_metrics, write_profile

    from engine.demo import build_synthetic_dataset
    from engine.demo_models import build_tiny_sd15

    data = build_synthetic_dataset(tmp_path / "shapes", count=8)
    cfg = write_profile(
        tmp_path / "run", model_type="sd15", model_dir=build_tiny_sd15(tmp_path / "model"),
        directories=[{"path": str(data)}], epochs=4, micro_batch_size_per_gpu=2, logging_steps=4,
    )  # fmt: skip
    touched: list[Path] = []

    def on_line(line: str) -> None:
        if line.startswith("[dpdeck] ") and not touched:
            event = json.loads(line[len("[dpdeck] ") :])
            if event["event"] == "run_dir":
                touched.append(Path(event["path"]) / "save_quit")
                touched[0].touch()  # before step 1: acted on at the first read, after step 4

    code, out = launch_trainer(cfg, on_line=on_line)
    assert code == 0, out[-4000:]
    assert "save_quit: checkpoint written, exiting" in out
    run_dir = run_dir_of(out)
    assert [m["step"] for m in run_metrics(run_dir) if m.get("event") == "progress"] == [1, 2, 3, 4]
    assert (run_dir / "global_step4").is_dir() and (run_dir / "step4").is_dir()
    assert not (run_dir / "save_quit").exists()  # consumed
    assert "TRAINING COMPLETE!" not in out
