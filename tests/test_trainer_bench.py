"""The GPU benchmark must at least run (tiny, CPU) so it does not rot before the lead runs it on an H100."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# the benchmark runs in a child process, where conftest's skip for a missing train extra cannot see it
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch, a train extra")
def test_gpu_bench_smoke_on_cpu() -> None:
    cmd = [
        sys.executable,
        "bench/bench_trainer_gpu.py",
        "--tiny",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--no-compile",
        "--batch",
        "2",
        "--json",
    ]
    res = subprocess.run(
        cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert [v["variant"].split(" (")[0] for v in out["variants"]] == ["reference", "ours eager"]
    assert all(v["samples_per_s"] > 0 and 0 < v["mfu"] < 1 for v in out["variants"])
    assert out["tflop_per_sample"] > 0 and out["matmul_peak_tflops"] > 0
