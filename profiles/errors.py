"""The profile layer's own errors. Anything else escaping `profiles` is a bug."""

from __future__ import annotations


class ProfileError(Exception):
    """A profile could not be loaded, parsed, stored or found. The message is for the user."""


class ProfileNotFound(ProfileError):
    pass


class ProfileParseError(ProfileError):
    """The file is not TOML we can read; carries file and line so the user can go there."""

    def __init__(self, file: str, line: int | None, detail: str):
        self.file = file
        self.line = line
        self.detail = detail
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {detail}")
