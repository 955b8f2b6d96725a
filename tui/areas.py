"""The deck's areas as data: mode -> (key, title, screen class as "module:Class"), in number-key order.

Its own module so that the app, the palette and the screens' title bar read one table without importing
each other. A screen class is imported when first needed: the first paint does not wait for plotting or
table code the user may never look at."""

from __future__ import annotations

import importlib

from textual.screen import Screen

AREA_CLASSES: dict[str, tuple[str, str, str]] = {
    "profiles": ("1", "Profiles", "tui.screens.profiles:ProfilesScreen"),
    "queue": ("2", "Queue", "tui.screens.queue:QueueScreen"),
    "run": ("3", "Run", "tui.screens.run:RunScreen"),
    "system": ("4", "System", "tui.screens.system:SystemScreen"),
    "datasets": ("5", "Datasets", "tui.screens.datasets.screen:DatasetsScreen"),
    "models": ("6", "Models", "tui.screens.models:ModelsScreen"),
}


def area_class(path: str) -> type[Screen[None]]:
    """The screen class at "module:Class", imported now."""
    module, _, name = path.partition(":")
    cls: type[Screen[None]] = getattr(importlib.import_module(module), name)
    return cls


def area_screen(path: str) -> Screen[None]:
    return area_class(path)()
