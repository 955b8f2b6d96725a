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

from textual.app import App
from textual.binding import Binding, BindingsMap, BindingType
from textual.dom import DOMNode
from textual.keys import Keys, key_to_character
from textual.screen import ModalScreen, Screen

from statefiles import toml as tomllib
from statefiles.paths import state_dir

KEYMAP_FILE = "keymap.toml"
# Where the deck's bindings live: the app module and every module of these packages (walked, not listed, so a
# new screen's ids are known without an edit here).
BINDING_HOMES = ("tui.app", "tui.screens", "tui.widgets")


_KEY_NAMES = frozenset(k.value for k in Keys) | {"space", "enter", "tab", "escape", "backspace"}


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


MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})


def _known_key(key: str) -> bool:
    """A key Textual can deliver: a character, one of its key names (`f2`, `escape`, `ctrl+down`), or the name
    of an ASCII symbol (`less_than_sign`), after any modifiers."""
    *mods, base = key.split("+")
    if not base or not set(mods) <= MODIFIERS:
        return False
    if len(base) == 1 or base in _KEY_NAMES:
        return True
    char = key_to_character(base)
    return char is not None and char.isascii()


def bad_keys(keymap: dict[str, str]) -> list[str]:
    """One line per override whose key Textual would never deliver (a typo like "F2" or "ctlr+t" would
    otherwise leave the binding without a working key, silently)."""
    lines = []
    for binding_id, keys in keymap.items():
        bad = [k.strip() for k in keys.split(",") if not _known_key(k.strip())]
        if bad:
            hint = f'; did you mean "{bad[0].lower()}"?' if _known_key(bad[0].lower()) else ""
            lines.append(
                f'{KEYMAP_FILE}: "{binding_id}" = "{keys}": {", ".join(repr(b) for b in bad)} is not a key '
                f'(keys look like "x", "f2", "ctrl+t", "escape"){hint}'
            )
    return lines


def keys_in_force(bindings: BindingsMap, keymap: dict[str, str]) -> dict[str, list[str]]:
    """binding id -> its keys once `keymap` is applied, as Textual applies it (a copy is changed, not
    `bindings`). An id whose key another id took has no entry: that binding has no key left."""
    applied = bindings.copy()
    if keymap:
        applied.apply_keymap(keymap)
    out: dict[str, list[str]] = {}
    for key, key_bindings in applied.key_to_bindings.items():
        for binding in key_bindings:
            if binding.id and key not in out.setdefault(binding.id, []):
                out[binding.id].append(key)
    return out


def _scope_keys(classes: list[type[DOMNode]], keymap: dict[str, str]) -> dict[str, dict[str, str]]:
    """key -> {binding id: the class that binds it} over classes whose bindings act together."""
    out: dict[str, dict[str, str]] = {}
    for cls in classes:
        for key, key_bindings in cls._merge_bindings().key_to_bindings.items():
            for binding in key_bindings:
                if binding.id is None:
                    continue
                keys = keymap[binding.id].split(",") if binding.id in keymap else [key]
                for one in keys:
                    out.setdefault(one.strip(), {})[binding.id] = cls.__name__
    return out


def clashes(keymap: dict[str, str], app_class: type[DOMNode]) -> list[str]:
    """One line per key that `keymap` makes mean two things where both act: the app's bindings alone
    ("everywhere"), then each screen's with the app's (a modal screen's alone: Textual stops there). A clash in
    the default scheme is the scheme's bug (tests/test_tui_keys.py), so only keys the keymap moved count."""
    if not keymap:
        return []
    screens = sorted({cls for cls, _ in deck_bindings() if issubclass(cls, Screen)}, key=lambda c: c.__name__)
    scopes: list[tuple[str, list[type[DOMNode]]]] = [("everywhere", [app_class])]
    for screen in screens:
        title = str(screen.__dict__.get("TITLE_TEXT") or screen.__name__)
        scopes.append((title, [screen] if issubclass(screen, ModalScreen) else [screen, app_class]))
    found: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, scope in scopes:
        for key, ids in _scope_keys(scope, keymap).items():
            pair = (key, tuple(sorted(ids)))
            if len(ids) > 1 and any(i in keymap for i in ids):
                if "everywhere" not in found.get(pair, []):
                    found.setdefault(pair, []).append(name)
    return [
        f'{KEYMAP_FILE}: key "{key}" is bound to both {" and ".join(ids)} ({", ".join(where)}); '
        "only one of them can have it: give the other a key of its own"
        for (key, ids), where in found.items()
    ]


def shown_key(app: App[object], binding_id: str) -> str:
    """The key to name in a message ("z undoes"): the user's keymap first, else the scheme's main key. Cheap
    (no screen is imported), so a message about another screen's key can use it too."""
    from tui.keyscheme import verb_of

    keys = app._keymap.get(binding_id, "")
    if not keys:
        verb = verb_of(binding_id)
        keys = verb.keys[0] if verb else "?"
    return app.get_key_display(Binding(keys.split(",")[0].strip(), "", ""))
