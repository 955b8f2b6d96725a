"""The Models screen against the real registry and a real (header-only) safetensors file: no engine mocks."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable

from engine.models import downloads
from engine.models.registry import load_registry
from engine.models.safetensors_header import write_header_only
from tests.tui_helpers import wait_text, wait_until
from tui.app import DeckApp

sys.path.insert(0, str(Path(__file__).parent))  # hub_server is a plain module beside the tests
from hub_server import HubServer  # noqa: E402

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
        await wait_until(pilot, lambda: any("no active download" in str(n.message) for n in app._notifications))


@pytest.fixture
def hub(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        # Never leave a download worker behind, whatever the test did.
        for dl in downloads.list_downloads():
            if dl.pid and downloads.worker_alive(dl):
                os.kill(dl.pid, signal.SIGKILL)


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
        await wait_text(pilot, "sd15/checkpoint_path running")
        await pilot.press("c")
        await wait_text(pilot, "cancelled")
        await wait_until(
            pilot,
            lambda: [d.state for d in downloads.list_downloads() if d.entry == "sd15"] == ["cancelled"],
            what="engine says cancelled",
        )
