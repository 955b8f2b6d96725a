"""The Models screen against the real registry and a real (header-only) safetensors file: no engine mocks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from engine.models import downloads
from engine.models.registry import load_registry
from engine.models.safetensors_header import write_header_only
from tests.tui_helpers import wait_text, wait_until
from tui.app import DeckApp

sys.path.insert(0, str(Path(__file__).parent))  # hub_server is a plain module beside the tests
from hub_server import HubServer, stop_downloads  # noqa: E402

# Enough of an SDXL checkpoint's header for discovery to name the family (as in test_models_local).
SDXL = {
    "model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
    "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),
    "first_stage_model.decoder.conv_in.weight": ("F16", (512, 4, 3, 3)),
}


@pytest.fixture
def models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return root


async def test_models_lists_registry_status_discovery_and_keys(models_root: Path) -> None:
    write_header_only(models_root / "my_pony.safetensors", SDXL)
    entries = load_registry().entries
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        text = await wait_text(pilot, "my_pony.safetensors")
        assert "Models" in text
        assert entries[0].id in text
        table = app.screen.query_one("#models-table", DataTable)
        # Nothing is downloaded in a fresh models dir: every status is missing or manual, none still "…".
        await wait_until(
            pilot,
            lambda: all(str(table.get_row(e.id)[2]) in ("missing", "manual") for e in entries),
            what="statuses",
        )
        assert table.cursor_row == 0
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("k")
        assert table.cursor_row == 0
        await pilot.press("G")
        assert table.cursor_row == len(entries) - 1
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("c")
        await wait_until(pilot, lambda: any("no download to cancel" in str(n.message) for n in app._notifications))


@pytest.fixture
def hub(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        stop_downloads()  # daemon first, then any worker: nothing outlives the test


async def test_models_pull_shows_progress_and_cancels(hub: HubServer, models_root: Path) -> None:
    entry = load_registry().get("sd15")
    comp = entry.components[0]
    assert comp.repo and comp.file
    hub.add(comp.repo, {comp.file: os.urandom(2_000_000)})
    hub.throttle = 100_000  # slow enough (20 s) that the download is still running when we cancel it
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#models-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="rows")
        table.move_cursor(row=table.get_row_index("sd15"))
        await pilot.press("p")
        await wait_text(pilot, "Pull sd15: ~4.3 GB into ")  # large (the registry's estimate): asks first
        await pilot.press("y")
        await wait_text(pilot, "sd15/checkpoint_path running")
        await pilot.press("c")
        await wait_text(pilot, "partial files are deleted")  # destructive: asks first
        await pilot.press("y")
        await wait_text(pilot, "cancelled")
        await wait_until(
            pilot,
            lambda: [d.state for d in downloads.list_downloads() if d.entry == "sd15"] == ["cancelled"],
            what="engine says cancelled",
        )


# ---- the new actions: one part, resume, use in profile, the check view -----------------------------------

CHROMA_KEYS = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
               "single_blocks.0.linear1.weight": ("BF16", (21504, 3072)),
               "distilled_guidance_layer.in_proj.weight": ("BF16", (5120, 64))}


@pytest.fixture
def chroma_hub(hub: HubServer, tmp_path: Path) -> HubServer:
    """The two repos chroma-unlocked-v47 pulls from, with tiny files (the transformer: a real header)."""
    from hub_server import HubFile

    src = tmp_path / "src" / "chroma-unlocked-v47.safetensors"
    src.parent.mkdir()
    write_header_only(src, {k: ("BF16", (4, 4)) for k in CHROMA_KEYS})
    hub.add("lodestones/Chroma", {"chroma-unlocked-v47.safetensors": HubFile(path=src)})
    hub.add("black-forest-labs/FLUX.1-schnell", {
        "model_index.json": b'{"_class_name": "FluxPipeline"}', "scheduler/scheduler_config.json": b"{}",
        "text_encoder/config.json": b"{}", "text_encoder_2/config.json": b"{}",
        "text_encoder_2/model-00001-of-00002.safetensors": os.urandom(300_000),
        "tokenizer/vocab.json": b"{}", "tokenizer_2/spiece.model": os.urandom(3000),
        "vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": os.urandom(200_000),
        "transformer/config.json": b"{}",
    })
    return hub


def _stored_chroma_profile(tmp_path: Path, name: str = "e6ai_512") -> None:
    """The Chroma E6AI 512 template with a real output folder and image folder: only the models are missing."""
    from profiles import store
    from profiles.templates import load_template

    images = tmp_path / "images"
    images.mkdir()
    profile = load_template("chroma-e6ai-512")
    profile.main.set("output_dir", str(tmp_path / "out"))
    profile.dataset.set("directory[0].path", str(images))
    store.save_profile(name, profile, "from template", create=True)


async def _choose_profile(pilot: Pilot[object]) -> None:
    await wait_text(pilot, "Which profile?")
    await pilot.press("enter")  # the only stored profile


async def test_check_view_pulls_everything_and_fills_the_profile(chroma_hub: HubServer, tmp_path: Path) -> None:
    """The issue's "done when", in the deck: empty box, Chroma E6AI 512, see what is missing, pull it all with
    one key, watch it, fill the profile, and it validates."""
    from profiles import store

    _stored_chroma_profile(tmp_path)
    chroma_hub.throttle = 400_000.0  # slow enough to see progress lines
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.screen.query_one("#models-table", DataTable).row_count > 0)
        await pilot.press("v")
        await _choose_profile(pilot)
        text = await wait_text(pilot, "model.transformer_path: missing <- chroma-unlocked-v47")
        assert "model.diffusers_path: missing" in text and "error(s) left" in text
        await pilot.press("p")
        await wait_text(pilot, "Free space there:")
        await pilot.press("y")
        await wait_text(pilot, "chroma-unlocked-v47/diffusers_path running")
        chroma_hub.throttle = None
        await wait_text(pilot, "no download running: press u", timeout=60)
        assert all(d.state == "completed" for d in downloads.list_downloads())
        await pilot.press("u")
        confirm = await wait_text(pilot, "Fill profile e6ai_512")
        assert "model.transformer_path = " in confirm and "(was '<PATH TO" in confirm
        await pilot.press("y")
        await wait_text(pilot, "the profile validates", timeout=30)
        await wait_text(pilot, "all model files are in place")
    main = store.load_stored("e6ai_512").main
    assert Path(main.get("model.transformer_path")).is_file()
    assert main.get("model.transformer_dtype") == "float8"  # the rest is untouched
    assert [v.message for v in store.list_versions("e6ai_512")][-1] == "models use chroma-unlocked-v47"


async def test_pull_one_part_cancel_with_confirm_and_resume(chroma_hub: HubServer) -> None:
    chroma_hub.throttle = 100_000.0
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#models-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0)
        table.move_cursor(row=table.get_row_index("chroma-unlocked-v47"))
        await pilot.press("P")
        await wait_text(pilot, "pull which part?")
        await pilot.press("enter")  # the first part only: the schnell folder (0.5 MB at 100 KB/s)
        await wait_text(pilot, "Pull chroma-unlocked-v47/diffusers_path: ~10.2 GB")
        await pilot.press("y")
        await wait_text(pilot, "chroma-unlocked-v47/diffusers_path running")
        [dl] = downloads.list_downloads()
        assert dl.key == "diffusers_path"
        await pilot.press("c")
        await wait_text(pilot, "Cancel ")
        await pilot.press("n")  # declined: nothing happens
        await pilot.pause(0.3)
        assert downloads.get(dl.id).state in ("queued", "running")
        await pilot.press("c")
        await wait_text(pilot, "partial files are deleted")
        await pilot.press("y")
        await wait_until(pilot, lambda: downloads.get(dl.id).state == "cancelled", what="cancelled")
        await wait_text(pilot, "diffusers_path cancelled")
        chroma_hub.throttle = None
        await pilot.press("R")
        await wait_text(pilot, "It downloads the rest")  # resume confirms, on Models as on Queue
        await pilot.press("y")
        await wait_until(pilot, lambda: downloads.get(dl.id).state == "completed", timeout=30, what="resumed")
        await wait_text(pilot, "diffusers_path completed")
    assert not (Path(dl.dest).parent / "lodestones--Chroma").exists()  # the other part was not pulled


async def test_use_entry_and_discovered_file_in_profile(models_root: Path, tmp_path: Path) -> None:
    from profiles import store

    _stored_chroma_profile(tmp_path)
    mine = models_root / "my_chroma.safetensors"
    write_header_only(mine, CHROMA_KEYS)
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_text(pilot, "my_chroma.safetensors")
        await pilot.press("U")
        await wait_text(pilot, "Use which file?")
        await pilot.press("enter")
        await _choose_profile(pilot)
        confirm = await wait_text(pilot, "Fill profile e6ai_512 with chroma transformer")
        assert "main.toml:24: model.transformer_path = " in confirm
        await pilot.press("y")
        await wait_until(pilot, lambda: store.load_stored("e6ai_512").main.get("model.transformer_path")
                         == str(mine.resolve()), what="saved")
        # and an entry: its paths are where `pull` puts them
        table = app.screen.query_one("#models-table", DataTable)
        table.move_cursor(row=table.get_row_index("chroma-unlocked-v47"))
        await pilot.press("u")
        await _choose_profile(pilot)
        await wait_text(pilot, "model.diffusers_path = ")
        await pilot.press("n")  # declined: the profile keeps the file chosen above
        await pilot.pause(0.3)
    main = store.load_stored("e6ai_512").main
    assert main.get("model.transformer_path") == str(mine.resolve())
    assert main.get("model.diffusers_path").startswith("<PATH")


async def test_download_outlives_the_deck(chroma_hub: HubServer) -> None:
    chroma_hub.throttle = 100_000.0
    app = DeckApp(start_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#models-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0)
        table.move_cursor(row=table.get_row_index("chroma-unlocked-v47"))
        await pilot.press("p")
        await wait_text(pilot, "Pull chroma-unlocked-v47: ~28.0 GB")
        await pilot.press("y")
        await wait_text(pilot, "diffusers_path running")
    # The deck is gone; the daemon's workers are not.
    chroma_hub.throttle = None
    finals = [downloads.wait(d.id, 60) for d in downloads.list_downloads()]
    assert sorted((d.key, d.state) for d in finals) == [("diffusers_path", "completed"),
                                                         ("transformer_path", "completed")]
