"""What every rule shares: the `Problem` a check reports, the `Ctx` it reports into, small value helpers."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from profiles import dp_keys
from profiles.document import TomlFile, find_line
from profiles.templates import field_help

Severity = Literal["error", "warning"]
CheckPaths = Literal["error", "warn", "off"]

SECRET_KEYS = ("wandb_api_key",)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    file: str
    key: str
    line: int | None
    found: str | None
    expected: str | None
    message: str
    code: str = ""  # which check, for programs: type, required, unknown_key, path, placeholder, ...

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json output (the text form is included as `text`)."""
        return {
            "severity": self.severity,
            "file": self.file,
            "key": self.key,
            "line": self.line,
            "found": self.found,
            "expected": self.expected,
            "message": self.message,
            "code": self.code,
            "text": str(self),
        }

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"
        details = [
            f"found {self.found}" if self.found is not None else "",
            f"expected {self.expected}" if self.expected else "",
        ]
        shown = ", ".join(d for d in details if d)
        return f"{text} ({shown})" if shown else text


def has_errors(problems: list[Problem]) -> bool:
    return any(getattr(p, "severity", "") == "error" for p in problems)


def show(value: Any, limit: int = 80) -> str:
    """A TOML-ish rendering of a found value, cut short so messages stay one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: a bool is an int
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def type_name(value: Any) -> str:
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label(toml: TomlFile) -> str:
    return str(toml.path) if toml.path is not None else toml.source


def is_secret_key(keypath: str) -> bool:
    """Never echo these values, whatever the check (a key pasted as a number is still a key)."""
    leaf = keypath.rsplit(".", 1)[-1].split("[", 1)[0].lower()
    return (
        leaf in SECRET_KEYS or leaf.endswith(("api_key", "_token", "secret", "password")) or leaf == "token"
    )


def did_you_mean(value: str, choices: tuple[str, ...]) -> str:
    lowered = {c.lower().replace("-", "_"): c for c in choices}
    exact = lowered.get(value.lower().replace("-", "_").replace(" ", "_"))
    if exact:
        return exact
    close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else ""


def as_expectation(help_line: str) -> str:
    """A help sentence reused after "expected": lower-case start, no final full stop."""
    text = help_line.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else ""


def help_expectation(key: str) -> str:
    return as_expectation(field_help(key))


@dataclass
class Ctx:
    backend: str
    check_paths: CheckPaths
    roots: list[Path]
    # What the diffusion-pipe in use reads: the configured checkout's scan, or built-in knowledge of upstream.
    keys: dp_keys.DpKeys = field(default_factory=dp_keys.builtin)
    problems: list[Problem] = field(default_factory=list)
    placeholders: set[tuple[str, str]] = field(default_factory=set)  # (file, key) holding a placeholder
    _texts: dict[int, str] = field(default_factory=dict)

    def add(
        self,
        severity: Severity,
        toml: TomlFile,
        key: str,
        message: str,
        *,
        found: Any = None,
        expected: str | None = None,
        code: str = "",
        raw_found: str | None = None,
        at: str | None = None,
    ) -> None:
        """Record a problem. `at`: a related key to point at when `key` itself is absent from the file."""
        text = self._texts.get(id(toml))
        if text is None:
            text = self._texts[id(toml)] = toml.dumps()
        line = find_line(text, key) if key else None
        parent = key.rpartition(".")[0]
        if at and (line is None or (parent and line == find_line(text, parent))):
            # `key` is absent (find_line fell back to its table's header): point at the related key instead
            line = find_line(text, at) or line
        shown = raw_found if raw_found is not None else (None if found is None else show(found))
        if shown is not None and is_secret_key(key):
            shown = "***"
        self.problems.append(Problem(severity, label(toml), key, line, shown, expected, message, code))

    @property
    def path_severity(self) -> Severity:
        return "error" if self.check_paths == "error" else "warning"

    def holds_placeholder(self, toml: TomlFile, key: str) -> bool:
        return (label(toml), key) in self.placeholders
