"""Datasets: an area that a later issue fills; it says so rather than pretend."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from tui.screens.base import DeckScreen


class DatasetsScreen(DeckScreen):
    TITLE_TEXT = "Datasets"

    def compose_body(self) -> ComposeResult:
        yield Static(
            "Datasets: coming in a later release.\n\n"
            "For now, point a profile's dataset.toml at your image folder (Profiles, key 1),\n"
            "or use the CLI: dpdeck dataset --help",
            classes="placeholder",
        )

