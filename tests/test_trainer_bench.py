"""bench/bench_trainer_gpu.py must run (tiny models, CPU) so it does not rot between GPU runs, and must time the
trainer's own step function, not a copy of it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench_trainer_gpu.py"

# the benchmark runs in a child process, where conftest's skip for a missing train extra cannot see it
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs torch, a train extra"
)


def _load_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_trainer_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@needs_torch
def test_gpu_bench_tiny_cpu_prints_rows_and_writes_json(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--tiny",
        "--cpu",
        "--models",
        "sdxl,flux",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]
    cmd += ["--json", str(out_json)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "targets: SDXL >= 2.5x the reference, Flux / Chroma >= 1.5x" in res.stdout
    assert res.stdout.count("ratio ours / reference") == 3, res.stdout  # sdxl b4, flux b1 and b4
    out = json.loads(out_json.read_text())
    assert out["tiny"] is True and out["matmul_peak_flops"] > 0 and out["lora_rank"] == 32
    assert [(c["model"], c["batch"]) for c in out["cases"]] == [("sdxl", 4), ("flux", 1), ("flux", 4)]
    rows = out["rows"]
    assert [(r["model"], r["batch"], r["variant"]) for r in rows] == [
        (m, b, v) for m, b in (("sdxl", 4), ("flux", 1), ("flux", 4)) for v in ("reference", "ours")
    ]
    for row in rows:
        assert row["samples_per_s"] > 0 and 0 < row["mfu"] < 1 and row["warmup_s"] >= 0, row
    ours = [r for r in rows if r["variant"] == "ours"]
    assert [r["target"] for r in ours] == [2.5, 1.5, 1.5]
    for r in ours:
        assert r["ratio"] > 0 and r["target_met"] == (r["ratio"] >= r["target"])


@needs_torch
def test_gpu_bench_times_the_trainers_step_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'ours' rows go through engine.trainer.speed.train_step (what Trainer._step calls) with the trainer's
    loss: counted here by wrapping both where the trainer's modules define them."""
    import torch

    from engine.trainer import loss as loss_mod
    from engine.trainer import main as trainer_main
    from engine.trainer import speed

    torch.set_num_threads(1)
    assert trainer_main.train_step is speed.train_step and trainer_main.step_loss is loss_mod.step_loss
    bench = _load_bench(monkeypatch)
    calls = {"train_step": 0, "step_loss": 0}
    real_step, real_loss = speed.train_step, loss_mod.step_loss

    def counting_step(*args: Any, **kwargs: Any) -> Any:
        calls["train_step"] += 1
        return real_step(*args, **kwargs)

    def counting_loss(*args: Any, **kwargs: Any) -> Any:
        calls["step_loss"] += 1
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(bench.speed_mod, "train_step", counting_step)
    monkeypatch.setattr(bench, "step_loss", counting_loss)
    assert bench.main(["--tiny", "--cpu", "--models", "sdxl", "--steps", "3", "--warmup", "2"]) == 0
    # ours: 1 first step + (warmup - 1) + steps = 5 train_steps; the loss also runs in the reference (5) and
    # in the FLOP count (1).
    assert calls["train_step"] == 5
    assert calls["step_loss"] == 5 + 5 + 1


@needs_torch
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "sd15"], "--models: unknown sd15"),
        (["--batches", "4,x"], "--batches: expected comma-separated integers"),
    ],
)
def test_gpu_bench_bad_arguments_say_which(args: list[str], message: str) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--cpu", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
