"""`dpdeck demo` as a newcomer runs it: a real subprocess, the real launcher, a fresh state dir."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _demo(home: Path, *extra: str) -> dict:
    env = dict(os.environ, DPDECK_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("DS_ACCELERATOR", None)  # as a newcomer runs it: the demo itself picks CPU when there is no GPU
    res = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--json", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout)


def _check(result: dict, home: Path) -> None:
    assert result["ok"] and result["state"] == "completed"
    run_dir = Path(result["run_dir"])
    assert run_dir.is_relative_to(home / "demo" / "output")
    final = sorted(Path(p) for p in result["lora_files"] if Path(p).parent.name == "epoch16")
    assert [p.name for p in final] == ["lora_kohya.safetensors", "pytorch_lora_weights.safetensors"]
    assert all(load_file(p) for p in result["lora_files"])
    assert result["steps"] == 64
    assert result["last_loss"] < result["first_loss"]


def test_demo_direct(dpdeck_home: Path) -> None:
    _check(_demo(dpdeck_home, "--direct"), dpdeck_home)


@pytest.mark.skipif(importlib.util.find_spec("engine.jobs.client") is None, reason="engine.jobs.client not built yet")
def test_demo_through_the_queue(dpdeck_home: Path) -> None:
    result = _demo(dpdeck_home)
    assert result["via"] == "queue" and isinstance(result["job_id"], int)
    _check(result, dpdeck_home)
