"""User key overrides: `$DPDECK_HOME/keymap.toml` maps binding ids to keys, e.g. `"deck.queue" = "f2"`.

Every Binding in the deck has an id, so this file, the footer and the `?` help stay in sync.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04): the same parser, as a package
    import tomli as tomllib  # type: ignore[no-redef]

from profiles.paths import state_dir

KEYMAP_FILE = "keymap.toml"


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
