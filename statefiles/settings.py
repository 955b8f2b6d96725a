"""Every `dpdeck config` setting, written once: its default, type, help, limits and env override.

The dataclass tree below is the whole table: `dpdeck config list/get/set/unset`, the daemon, the model
downloads and docs/config.md all read it, so a default lives in exactly one place. A section is a dataclass,
a setting is one of its fields (`setting(...)` carries the help text and limits).

`load()` reads `$DPDECK_HOME/config.toml` once per call and never raises for what the user wrote: a value of
the wrong type falls back to its default (a typo must not stop downloads or `models list`), and
`load_report()` says what it ignored (file, key, expected) for `dpdeck config list` to show. Writing goes
through tomlkit so the user's comments and layout survive `set` / `unset`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from statefiles import paths
from statefiles import toml as toml_read
from statefiles.atomic import atomic_write_text

_META = "dpdeck_setting"


@dataclass(frozen=True)
class Meta:
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    env: str | None = None
    # The env override's unit per unit of the setting (DPDECK_MIN_FREE_BYTES counts bytes, the key GiB).
    env_per_unit: int = 1
    # "folder" or "program" (_EXISTS): `config set` refuses a path that is not one (loading does not: a checkout on a
    # disk that is not mounted yet must not make dpdeck drop the setting).
    exists: str | None = None


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its documentation; lists get a fresh copy per instance."""
    m = {_META: Meta(help=help, **meta)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=m)
    return field(default=default, metadata=m)


# ---- the settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionPipe:
    path: str | None = setting(None, "your diffusion-pipe checkout (the folder holding train.py)", exists="folder")
    python: str | None = setting(
        None, "python of diffusion-pipe's environment (default: this python)", exists="program"
    )


@dataclass(frozen=True)
class Scheduler:
    cpu_slots: int = setting(1, "jobs that may run at once on a machine without NVIDIA GPUs", minimum=1)
    min_free_mib: int = setting(2048, "free GPU memory a GPU needs before a job starts on it", minimum=0)
    hang_timeout_s: int = setting(1800, "no progress for this long marks a job hung", minimum=1)
    stop_timeout_s: int = setting(300, "graceful stop waits this long for save_quit before cancelling", minimum=1)


@dataclass(frozen=True)
class Ports:
    low: int = setting(29500, "first master port dpdeck leases", minimum=1024, maximum=65535)
    high: int = setting(
        29999, "last master port dpdeck leases (kept below the ephemeral range)", minimum=1024, maximum=65535
    )


@dataclass(frozen=True)
class Models:
    dir: str | None = setting(
        None, "where `dpdeck models pull` puts files (default: $DPDECK_HOME/models)", env="DPDECK_MODELS_DIR"
    )
    folders: list[str] = setting(
        [], "extra folders `dpdeck models scan` looks in (comma-separated or TOML list)", exists="folder"
    )
    min_free_gb: float = setting(
        2.0, "disk space (GiB) that must stay free after a download", minimum=0,
        env="DPDECK_MIN_FREE_BYTES", env_per_unit=1024**3,
    )
    max_downloads: int = setting(
        3, "model downloads the daemon runs at once (the rest wait, queued)", minimum=1, env="DPDECK_MAX_DOWNLOADS"
    )
    download_retries: int = setting(
        3, "automatic restarts of a download whose worker died (kill, OOM)", minimum=0,
        env="DPDECK_DOWNLOAD_RETRIES",
    )


@dataclass(frozen=True)
class Datasets:
    undo_keep: int = setting(50, "dataset batch ops kept for undo (older records are deleted; 0 keeps all)", minimum=0)


@dataclass(frozen=True)
class Tui:
    image_protocol: str = setting(
        "auto", "how the Datasets preview draws images (auto detects the terminal's best)",
        choices=("auto", "halfblock", "kitty", "sixel"), env="DPDECK_IMAGE_PROTOCOL",
    )


@dataclass(frozen=True)
class Settings:
    diffusion_pipe: DiffusionPipe = field(default_factory=DiffusionPipe)
    scheduler: Scheduler = field(default_factory=Scheduler)
    ports: Ports = field(default_factory=Ports)
    models: Models = field(default_factory=Models)
    datasets: Datasets = field(default_factory=Datasets)
    tui: Tui = field(default_factory=Tui)


# ---- the table, derived from the tree -----------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One setting as the CLI and the docs see it."""

    key: str  # "section.name"
    section: str
    name: str
    kind: type  # str, int, float or list (of str)
    optional: bool  # None (unset) is a valid value
    default: Any
    meta: Meta

    @property
    def help(self) -> str:
        return self.meta.help

    def expected(self) -> str:
        """The type in words, as errors and the docs print it."""
        if self.meta.choices:
            return "one of " + ", ".join(self.meta.choices)
        words = {str: "string", int: "integer", float: "number", list: "list of strings"}[self.kind]
        if self.meta.minimum is not None and self.meta.maximum is not None:
            return f"{words} {_num(self.meta.minimum)}..{_num(self.meta.maximum)}"
        if self.meta.minimum is not None:
            return f"{words} >= {_num(self.meta.minimum)}"
        return words


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _unwrap(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of `int`, `str | None`, `list[str]`."""
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    origin = typing.get_origin(hint)
    return (origin or hint), optional


def _build_keys() -> dict[str, Key]:
    out: dict[str, Key] = {}
    for sec in dataclasses.fields(Settings):
        cls = _SECTIONS[sec.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind, optional = _unwrap(hints[f.name])
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            key = f"{sec.name}.{f.name}"
            out[key] = Key(key, sec.name, f.name, kind, optional, default, f.metadata[_META])
    return out


_SECTIONS: dict[str, Any] = typing.get_type_hints(Settings)  # section name -> its dataclass
KEYS: dict[str, Key] = _build_keys()


class SettingsError(ValueError):
    """A value `config set` refuses, or a config file it cannot edit; the message names file, key, expected."""


class UnknownSetting(KeyError):
    def __init__(self, key: str) -> None:
        close = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(KEYS)}"
        super().__init__(f"unknown setting {key!r}{hint}")
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


def key_info(key: str) -> Key:
    try:
        return KEYS[key]
    except KeyError:
        raise UnknownSetting(key) from None


# ---- checking values ----------------------------------------------------------------------------------


class _Bad(Exception):
    pass


def _coerce(k: Key, value: Any) -> Any:
    """A value from the file or the CLI as the setting's type; raises _Bad when it is not one."""
    if value is None:
        if k.optional:
            return None
        raise _Bad
    if k.kind is str:
        if not isinstance(value, str):
            raise _Bad
        if k.meta.choices and value not in k.meta.choices:
            raise _Bad
        return value
    if k.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Bad
        return list(value)
    # Numbers: bool is an int to Python but never what the user meant.
    if isinstance(value, bool):
        raise _Bad
    if k.kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise _Bad
    elif k.kind is float:
        if not isinstance(value, (int, float)):
            raise _Bad
        value = float(value)
    if (k.meta.minimum is not None and value < k.meta.minimum) or (
        k.meta.maximum is not None and value > k.meta.maximum
    ):
        raise _Bad
    return value


def _parse_raw(k: Key, raw: str) -> Any:
    """`config set KEY RAW` text (and env override text) to a value of the setting's type."""
    try:
        if k.kind is int:
            return int(raw)
        if k.kind is float:
            return float(raw)
    except ValueError:
        raise _Bad from None
    if k.kind is list:
        if raw.strip().startswith("["):
            try:
                return toml_read.loads(f"v = {raw}")["v"]
            except toml_read.TOMLDecodeError:
                raise _Bad from None
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


# ---- loading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something in config.toml (or the environment) that load() ignored."""

    source: str  # the file, or "$ENV_NAME"
    key: str
    expected: str
    found: Any

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: expected {self.expected}, found {self.found!r}; using the default"


@dataclass(frozen=True)
class Report:
    settings: Settings
    problems: tuple[Problem, ...]
    origins: dict[str, str]  # key -> "default", "file" or "env"

    def value(self, key: str) -> Any:
        k = key_info(key)
        return getattr(getattr(self.settings, k.section), k.name)


def _read_file(path: Path, problems: list[Problem]) -> dict[str, Any]:
    try:
        return toml_read.load_file(path)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, toml_read.TOMLDecodeError) as exc:
        problems.append(Problem(str(path), "(file)", "a readable TOML file", str(exc)))
        return {}


def _env_value(k: Key, problems: list[Problem]) -> tuple[bool, Any]:
    if not k.meta.env:
        return False, None
    raw = os.environ.get(k.meta.env)
    if raw is None or raw == "":
        return False, None
    try:
        value = _parse_raw(k, raw)
        if k.meta.env_per_unit != 1:
            value = value / k.meta.env_per_unit
        return True, _coerce(k, value)
    except _Bad:
        problems.append(Problem(f"${k.meta.env}", k.key, k.expected(), raw))
        return False, None


def load_report() -> Report:
    path = paths.config_path()
    problems: list[Problem] = []
    data = _read_file(path, problems)
    origins: dict[str, str] = {}
    sections: dict[str, dict[str, Any]] = {}
    for sec, table in data.items():
        if not isinstance(table, dict):
            problems.append(Problem(str(path), sec, "a [section] table", table))
            continue
        for name, value in table.items():
            if f"{sec}.{name}" not in KEYS:
                problems.append(Problem(str(path), f"{sec}.{name}", "a known setting", value))
    for k in KEYS.values():
        origin, value = "default", copy.copy(k.default)  # a list default is not shared between loads
        table = data.get(k.section)
        if isinstance(table, dict) and k.name in table:
            try:
                value, origin = _coerce(k, table[k.name]), "file"
            except _Bad:
                problems.append(Problem(str(path), k.key, k.expected(), table[k.name]))
        from_env, env_value = _env_value(k, problems)
        if from_env:
            value, origin = env_value, "env"
        sections.setdefault(k.section, {})[k.name] = value
        origins[k.key] = origin
    built = {name: _SECTIONS[name](**values) for name, values in sections.items()}
    return Report(Settings(**built), tuple(problems), origins)


def load() -> Settings:
    """The settings now (config.toml read once, env overrides applied); never raises for a bad value."""
    return load_report().settings


def get(key: str) -> Any:
    return load_report().value(key)


# ---- editing ------------------------------------------------------------------------------------------


def _edit(change: Callable[[Any], bool]) -> bool:
    import tomlkit

    path = paths.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomlkit's errors share no useful base; the message names the spot
        raise SettingsError(f"{path}: cannot edit a broken TOML file: {exc}") from exc
    changed = change(doc)
    if changed:
        atomic_write_text(path, tomlkit.dumps(doc))
    return changed


def check(key: str, raw: str) -> Any:
    """RAW as KEY's value, or SettingsError naming the key and what it expects."""
    k = key_info(key)
    try:
        value = _coerce(k, _parse_raw(k, raw))
    except _Bad:
        raise SettingsError(f"{paths.config_path()}: {key}: expected {k.expected()}, found {raw!r}") from None
    _check_exists(k, value)
    return value


# What each `exists` kind accepts, and its name in the error (noun, with its article).
_EXISTS: dict[str, tuple[Callable[[str], bool], str, str]] = {
    "folder": (os.path.isdir, "folder", "a folder"),
    "program": (lambda p: os.path.isfile(p) and os.access(p, os.X_OK), "executable file", "an executable file"),
}


def _check_exists(k: Key, value: Any) -> None:
    if k.meta.exists is None or not value:  # unset, or "" (what `config set KEY ""` has always meant: none)
        return
    test, noun, with_article = _EXISTS[k.meta.exists]
    for item in value if isinstance(value, list) else [value]:
        path = os.path.expanduser(item)
        if not test(path):
            problem = f"not {with_article}" if os.path.lexists(path) else f"no such {noun}"
            raise SettingsError(f"{k.key}: {item}: {problem} (expected {k.help}); nothing was changed")


def set_value(key: str, raw: str) -> Any:
    """Write KEY = RAW (checked) into config.toml, keeping its comments; returns the value written."""
    import tomlkit

    k = key_info(key)
    value = check(key, raw)

    def change(doc: Any) -> bool:
        table = doc.get(k.section)
        if not isinstance(table, dict):
            table = tomlkit.table()
            doc[k.section] = table
        table[k.name] = value
        return True

    _edit(change)
    return value


def unset(key: str) -> bool:
    """Remove KEY from config.toml (it goes back to its default); False when it was not set."""
    k = key_info(key)

    def change(doc: Any) -> bool:
        table = doc.get(k.section)
        if not isinstance(table, dict) or k.name not in table:
            return False
        del table[k.name]
        if not table:
            del doc[k.section]
        return True

    return _edit(change)


def iter_keys() -> Iterator[Key]:
    return iter(KEYS.values())


# ---- docs ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value)


def render_markdown() -> str:
    """docs/config.md: the table as a user reads it (a test keeps the committed file equal to this)."""
    lines = [
        "# Settings (`dpdeck config`)",
        "",
        "<!-- Generated from statefiles/settings.py by `python -m statefiles.settings > docs/config.md`;",
        "     edit the model there, not this file (tests/test_settings.py compares them). -->",
        "",
        "dpdeck keeps its settings in `$DPDECK_HOME/config.toml`, one `[section]` per first part of the key.",
        "`dpdeck config list` shows every setting with its value and default, `dpdeck config get KEY` one,",
        "`dpdeck config set KEY VALUE` writes one (checked, comments in the file kept) and",
        "`dpdeck config unset KEY` returns it to its default. A value of the wrong type in the file is ignored",
        "(the default is used) and reported by `dpdeck config list`. An environment override, where a",
        "setting has one, wins over the file. `config set` refuses (exit 2, nothing written) a path that must",
        "exist and does not: " + ", ".join(f"`{k.key}` ({_EXISTS[k.meta.exists][2]})" for k in KEYS.values()
                                           if k.meta.exists) + ".",
        "",
        "| Key | Type | Default | Env override | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in KEYS.values():
        env = f"`{k.meta.env}`" if k.meta.env else ""
        if k.meta.env and k.meta.env_per_unit != 1:
            env += " (bytes)"
        lines.append(f"| `{k.key}` | {k.expected()} | `{_show(k.default)}` | {env} | {k.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
