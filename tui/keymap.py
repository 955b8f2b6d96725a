"""User key overrides: `$DPDECK_HOME/keymap.toml` maps binding ids to keys, e.g. `"deck.queue" = "f2"`.

Every Binding in the deck has an id, so this file, the footer and the `?` help stay in sync. An id that
matches no binding (a typo, or a binding renamed since) is reported with the closest real id.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

from textual.binding import Binding, BindingType
from textual.dom import DOMNode

from statefiles import toml as tomllib
from statefiles.paths import state_dir

KEYMAP_FILE = "keymap.toml"
# Where the deck's bindings live: the app module and every module of these packages (walked, not listed, so a
# new screen's ids are known without an edit here).
BINDING_HOMES = ("tui.app", "tui.screens", "tui.widgets")


class KeymapError(Exception):
    pass


def load_keymap() -> dict[str, str]:
    """The user's overrides, or {} when there is no file. A malformed file is an error naming the problem."""
    path = state_dir() / KEYMAP_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeymapError(f"{path}: {exc}") from exc
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise KeymapError(f'{path}: values must be key strings like "f2" or "ctrl+t"; bad: {", ".join(bad)}')
    return {str(k): str(v) for k, v in data.items()}


def _modules() -> Iterator[ModuleType]:
    for home in BINDING_HOMES:
        module = importlib.import_module(home)
        yield module
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{home}."):
            yield importlib.import_module(info.name)


def deck_bindings() -> list[tuple[type[DOMNode], BindingType]]:
    """Every (class, binding) the deck declares. Imports every screen module: call it off the UI thread."""
    out: list[tuple[type[DOMNode], BindingType]] = []
    for module in _modules():
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, DOMNode) and value.__module__ == module.__name__:
                out += [(value, b) for b in value.__dict__.get("BINDINGS", [])]
    return out


def binding_ids() -> set[str]:
    return {b.id for _, b in deck_bindings() if isinstance(b, Binding) and b.id}


def unknown_ids(keymap: dict[str, str], known: set[str]) -> list[str]:
    """One line per id of `keymap` that no binding has, with the closest real id when there is one."""
    lines = []
    for binding_id in keymap:
        if binding_id in known:
            continue
        close = difflib.get_close_matches(binding_id, sorted(known), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else " (`?` lists the ids of each screen)"
        lines.append(f'{KEYMAP_FILE}: unknown binding id "{binding_id}"{hint}')
    return lines
