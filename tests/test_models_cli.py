"""`dpdeck models ...` end to end as a user runs it: real `dpdeck` processes, the local Hub server, real
detached workers. Includes the issue's "done when": an empty box, a Chroma profile, missing files found,
pulled (surviving the terminal's hangup), filled in, and checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import downloads
from engine.models.safetensors_header import write_header_only

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubFile, HubServer, stop_downloads  # noqa: E402

CHROMA = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
          "single_blocks.0.linear1.weight": ("BF16", (21504, 3072)),
          "distilled_guidance_layer.in_proj.weight": ("BF16", (5120, 64))}
PROFILE = """output_dir = '/tmp/out'
dataset = 'dataset.toml'
epochs = 1

[model]
type = 'chroma'
dtype = 'bfloat16'
transformer_dtype = 'float8'
"""


def dpdeck(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "0")
    # A "Chroma v47" whose header is real and whose 17 GB of weights are a hole; plus the schnell parts.
    chroma = tmp_path / "src" / "chroma-unlocked-v47.safetensors"
    chroma.parent.mkdir()
    write_header_only(chroma, {k: ("BF16", (4, 4)) for k in CHROMA})
    with HubServer() as server:
        server.add("lodestones/Chroma", {"chroma-unlocked-v47.safetensors": HubFile(path=chroma),
                                         "chroma-unlocked-v50.safetensors": b"x" * 2000,
                                         "big.safetensors": os.urandom(400_000)})
        server.add("black-forest-labs/FLUX.1-schnell", {
            "model_index.json": b'{"_class_name": "FluxPipeline"}',
            "scheduler/scheduler_config.json": b"{}",
            "text_encoder/config.json": b"{}", "text_encoder/model.safetensors": os.urandom(30_000),
            "text_encoder_2/config.json": b"{}",
            "text_encoder_2/model-00001-of-00002.safetensors": os.urandom(60_000),
            "tokenizer/vocab.json": b"{}", "tokenizer_2/spiece.model": os.urandom(3000),
            "vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": os.urandom(50_000),
            "transformer/config.json": b"{}",
            "transformer/diffusion_pytorch_model-00001-of-00003.safetensors": os.urandom(90_000),
            "flux1-schnell.safetensors": os.urandom(90_000),
        })
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()  # daemon first, then any worker: nothing outlives the test


def _terminal_signals() -> None:
    # A shell in a terminal: SIGHUP kills. Under `nohup` (a CI runner, say) pytest ignores it, and an ignored
    # signal stays ignored across exec, so the "terminal" would shrug off the hang-up.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_chroma_profile_from_empty_box(hub: HubServer, tmp_path: Path) -> None:
    main = tmp_path / "e6ai_512.toml"
    main.write_text(PROFILE)

    check = dpdeck("models", "check", "--profile", str(main))
    assert check.returncode == 1
    assert "model.diffusers_path is not set; `dpdeck models pull chroma-unlocked-v47` provides it" in check.stdout

    listed = json.loads(dpdeck("models", "list", "--type", "chroma", "--json", check=True).stdout)
    assert [e["status"] for e in listed] == ["missing", "missing"]

    # The user pulls in a terminal that then hangs up (ssh drop): the CLI dies, the downloads do not.
    hub.throttle = 10_000.0  # the schnell parts (~140 kB) take over 10 s: the hang-up lands mid-download
    term = subprocess.Popen([sys.executable, "-m", "tui.cli", "models", "pull", "chroma-unlocked-v47"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ), preexec_fn=_terminal_signals)

    def both_queued_one_running() -> bool:
        # Not "both running at once": on a loaded box the small Chroma header may finish before the other starts.
        dls = downloads.list_downloads()
        return len(dls) == 2 and any(d.pid for d in dls)

    end = time.monotonic() + 60
    while time.monotonic() < end and not both_queued_one_running():
        time.sleep(0.1)
    assert term.poll() is None, "the pull ended before the hang-up: nothing left to survive it"
    os.killpg(term.pid, signal.SIGHUP)
    term.wait(timeout=30)
    assert term.returncode != 0  # the terminal's process is gone
    dls = downloads.list_downloads()
    assert len(dls) == 2 and {d.key for d in dls} == {"diffusers_path", "transformer_path"}
    hub.throttle = None
    for d in dls:
        final = downloads.wait(d.id, 60)
        assert final.state == "completed", final.error

    models = tmp_path / "models"
    folder = models / "black-forest-labs--FLUX.1-schnell"
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "transformer" / "config.json").is_file()
    assert not (folder / "flux1-schnell.safetensors").exists()  # not needed by Chroma, not downloaded
    assert not (folder / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors").exists()

    used = json.loads(dpdeck("models", "use", "chroma-unlocked-v47", "--profile", str(main), "--json",
                             check=True).stdout)
    assert {c["key"] for c in used["changes"]} == {"model.diffusers_path", "model.transformer_path"}
    text = main.read_text()
    assert f'diffusers_path = "{folder}"' in text
    assert "transformer_dtype = 'float8'" in text  # the rest of the file is untouched
    ok = dpdeck("models", "check", "--profile", str(main))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all model files are in place" in ok.stdout

    info = json.loads(dpdeck("models", "info", str(models / "lodestones--Chroma" / "chroma-unlocked-v47.safetensors"),
                             "--json", check=True).stdout)
    assert (info["family"], info["kind"], info["dtype"]) == ("chroma", "transformer", "BF16")
    listed = json.loads(dpdeck("models", "list", "--type", "chroma", "--json", check=True).stdout)
    assert [e["status"] for e in listed] == ["present", "partial"]  # v50 shares the schnell folder
    scanned = {Path(i["path"]).name: i for i in json.loads(dpdeck("models", "scan", "--json", check=True).stdout)}
    assert scanned["black-forest-labs--FLUX.1-schnell"]["family"] == "flux"
    assert scanned["chroma-unlocked-v47.safetensors"]["family"] == "chroma"


def test_cli_pull_file_progress_and_downloads(hub: HubServer, tmp_path: Path) -> None:
    out = dpdeck("models", "pull", "lodestones/Chroma", "--file", "chroma-unlocked-v50.safetensors")
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout and "100.0%" in out.stdout
    rows = json.loads(dpdeck("models", "downloads", "--json", check=True).stdout)
    assert [(r["state"], r["progress"]) for r in rows] == [("completed", 1.0)]
    text = dpdeck("models", "downloads", check=True).stdout
    assert rows[0]["id"] in text and "completed" in text


def test_cli_cancel(hub: HubServer, tmp_path: Path) -> None:
    hub.throttle = 20_000.0
    started = json.loads(dpdeck("models", "pull", "lodestones/Chroma", "--file", "big.safetensors",
                                "--json", check=True).stdout)
    dl_id = started[0]["id"]
    end = time.monotonic() + 60
    while time.monotonic() < end and downloads.get(dl_id).bytes_done == 0:
        time.sleep(0.05)
    out = dpdeck("models", "cancel", dl_id)
    assert out.returncode == 0, out.stderr
    assert f"{dl_id}: cancelled" in out.stdout
    assert not list((tmp_path / "models").rglob("*big.safetensors*"))


@pytest.mark.parametrize(
    ("args", "needle", "status"),
    [
        (["models", "pull", "acme/nothere", "--file", "x.safetensors"], "repository not found", 1),
        (["models", "pull", "lodestones/Chroma", "--file", "v99.safetensors"], "'v99.safetensors' is not in the repo", 1),
        # Naming something that does not exist is a usage error (2), as `dpdeck show 999` is.
        (["models", "pull", "no-such-entry"], "no registry entry named 'no-such-entry'", 2),
        (["models", "cancel", "0000-zz"], "no download with id", 2),
        (["models", "info", "/definitely/not/here.safetensors"], "not a registry entry id", 2),
        (["models", "use", "chroma-unlocked-v47", "--profile", "/no/such/main.toml"], "no stored profile", 2),
        (["models", "scan", "/definitely/not/here"], "no such file or folder", 2),
    ],
)
def test_cli_bad_input_has_specific_errors(hub: HubServer, args: list[str], needle: str, status: int) -> None:
    out = dpdeck(*args)
    assert out.returncode == status, out.stderr
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_cli_info_directory_and_bad_header(tmp_path: Path) -> None:
    out = dpdeck("models", "info", str(tmp_path))
    assert out.returncode == 1 and "is a directory" in out.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01\x00\x00\x00\x00\x00\x00{")
    out = dpdeck("models", "info", str(bad))
    assert out.returncode == 1 and "runs past the end" in out.stderr


def test_cli_use_file_on_stored_profile_records_history(tmp_path: Path) -> None:
    from profiles import store

    store.save("e6ai", {"main.toml": PROFILE, "dataset.toml": "resolutions = [512]\n"}, "create", create=True)
    before = len(store.list_versions("e6ai"))
    ckpt = tmp_path / "chroma-unlocked-v47.safetensors"
    write_header_only(ckpt, CHROMA)
    out = dpdeck("models", "use", str(ckpt), "--profile", "e6ai")
    assert out.returncode == 0, out.stderr
    assert "model.transformer_path" in out.stdout and "chroma transformer" in out.stdout
    stored = store.load_stored("e6ai")
    assert stored.main.get("model.transformer_path") == str(ckpt.resolve())
    assert stored.main.get("model.transformer_dtype") == "float8"
    assert len(store.list_versions("e6ai")) == before + 1
    # a directory where the single transformer file must go
    bad = dpdeck("models", "use", str(tmp_path), "--profile", "e6ai", "--key", "transformer_path")
    assert bad.returncode == 1 and "not a diffusers folder" in bad.stderr
