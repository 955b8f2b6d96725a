"""Errors of the models engine. Every message is meant for the user as is."""

from __future__ import annotations


class ModelsError(Exception):
    """A model file, registry entry or download request is unusable; the message says why and what to do."""


class HeaderError(ModelsError):
    """A file is not a readable safetensors file (bad length, bad JSON, truncated, a directory...)."""


class RegistryError(ModelsError):
    """The shipped registry is malformed or an entry name is unknown."""


class UnknownEntry(RegistryError):
    """An entry id that the registry does not hold (a usage error to the CLI, exit 2)."""


class DownloadError(ModelsError):
    """A download could not start or did not finish; `code` is a stable short tag for scripts."""

    def __init__(self, message: str, code: str = "error"):
        super().__init__(message)
        self.code = code
