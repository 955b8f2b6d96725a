"""One rule picks the backend: the queue, `profile validate` and the editor agree, and say why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from profiles import model_types as mt
from profiles.backend_choice import choose_backend

REPO = Path(__file__).resolve().parent.parent

CASES = [
    # (type, [model] keys, requested, checkout) -> backend
    ("sd15", ["diffusers_path"], "auto", "/dp", "builtin"),
    ("sdxl", ["diffusers_path"], "auto", "/dp", "builtin"),
    ("sdxl", ["checkpoint_path"], "auto", "/dp", "diffusion-pipe"),
    ("sdxl", ["checkpoint_path"], "auto", None, "builtin"),
    ("chroma", ["diffusers_path", "transformer_path"], "auto", "/dp", "diffusion-pipe"),
    ("chroma", ["diffusers_path", "transformer_path"], "auto", None, "builtin"),
    ("flux", ["diffusers_path"], "auto", None, "builtin"),
    ("wan", ["ckpt_path"], "auto", "/dp", "diffusion-pipe"),
    ("wan", ["ckpt_path"], "auto", None, None),
    ("wan", ["ckpt_path"], "builtin", None, "builtin"),
]


@pytest.mark.parametrize(("mtype", "keys", "requested", "checkout", "expected"), CASES)
def test_choice_table(
    mtype: str, keys: list[str], requested: str, checkout: str | None, expected: str | None
) -> None:
    chosen = choose_backend(mtype, keys, requested, checkout)
    assert chosen.backend == expected
    assert chosen.reason and chosen.describe().startswith("runs on: ")
    if expected is None:
        assert "dpdeck backend install diffusion-pipe" in chosen.reason
    if checkout and expected == "diffusion-pipe" and requested == "auto":
        assert checkout in chosen.reason


def test_unknown_request_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        choose_backend("sdxl", (), "gpu")


def test_every_builtin_type_can_be_chosen_without_a_checkout() -> None:
    for mtype in mt.BUILTIN_TYPES:
        spec = mt.get_spec(mtype)
        assert spec is not None
        keys = spec.requirements("builtin")[0]
        assert choose_backend(mtype, keys).backend == "builtin"


def _dpdeck(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"DPDECK_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_validate_and_queue_agree_on_a_chroma_profile(tmp_path: Path) -> None:
    """Without a checkout the queue runs Chroma on the built-in trainer, and validate checks it there."""
    from profiles.backend_choice import choose_for_model
    from profiles.templates import load_template

    assert _dpdeck(tmp_path, "profile", "new", "c", "--from", "chroma-e6ai-512").returncode == 0
    out = _dpdeck(tmp_path, "profile", "validate", "c", "--json")
    verdict = json.loads(out.stdout)
    assert verdict["backend"] == "builtin" and verdict["backend_reason"] == "no diffusion-pipe checkout configured"
    text = _dpdeck(tmp_path, "profile", "validate", "c")
    assert "runs on: built-in trainer (no diffusion-pipe checkout configured)" in text.stderr
    # The queue's choice is the same function; with a checkout configured both move to diffusion-pipe.
    checkout = tmp_path / "dp"
    checkout.mkdir()
    (checkout / "train.py").write_text("")
    assert _dpdeck(tmp_path, "config", "set", "diffusion_pipe.path", str(checkout)).returncode == 0
    verdict = json.loads(_dpdeck(tmp_path, "profile", "validate", "c", "--json").stdout)
    assert verdict["backend"] == "diffusion-pipe" and str(checkout) in verdict["backend_reason"]
    template = load_template("chroma-e6ai-512")
    assert choose_for_model(template.main.data()["model"], "chroma", "builtin").backend == "builtin"
