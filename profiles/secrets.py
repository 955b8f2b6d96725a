"""Secrets (W&B API key, Hugging Face token): read from the environment or a 0600 TOML file, never stored
in profiles, exports, logs or printed output.

The secrets file lives at `statefiles.paths.secrets_path()`. It is written atomically with mode 0600 from the
first byte, and a file that others can read is refused rather than trusted: a leaked key is worse than a
failed run.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from profiles.errors import ProfileError
from statefiles.atomic import atomic_write_text
from statefiles.paths import secrets_path

# Canonical secret name -> environment variables that provide it (first set wins).
ENV_VARS: dict[str, tuple[str, ...]] = {
    "wandb_api_key": ("WANDB_API_KEY",),
    "hf_token": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
}

# Keys that carry a secret when they appear anywhere in a profile TOML, and the secret they hold.
PROFILE_SECRET_KEYS: dict[str, str] = {
    "wandb_api_key": "wandb_api_key",
    "wandb_key": "wandb_api_key",
    "hf_token": "hf_token",
    "huggingface_token": "hf_token",
    "hf_api_token": "hf_token",
    "hub_token": "hf_token",
}

# Environment variables that look like credentials: never copied from a client's environment into a job's.
_SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY", re.IGNORECASE)
# Names that match the pattern but configure a library (HF tokenizers), not a credential.
_NOT_SECRET_ENV = frozenset({"TOKENIZERS_PARALLELISM"})

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MASK = "***"
# W&B keys are 40 hex chars (also seen as `local-<40 hex>`); HF tokens start with `hf_`.
_WANDB_SHAPE = re.compile(r"(?<![0-9A-Za-z])(?:local-)?[0-9a-f]{40}(?![0-9A-Za-z])")
_HF_SHAPE = re.compile(r"(?<![0-9A-Za-z_])hf_[A-Za-z0-9]{16,}")


class SecretsError(ProfileError):
    """The secrets file is unsafe or unreadable, or a secret name is invalid."""


@dataclass(frozen=True)
class SecretInfo:
    name: str
    source: str  # "env:VAR" or "file"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise SecretsError(f"invalid secret name {name!r}: expected 1-64 characters from A-Z a-z 0-9 _ . -")
    return name


def _check_permissions(path: Path) -> None:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise SecretsError(f"{path}: is not a regular file, expected the 0600 secrets TOML")
    if st.st_mode & 0o077:
        raise SecretsError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read your secrets; "
            f"refusing to use it. Fix with: chmod 600 {path}"
        )


def _read_file(path: Path | None = None) -> dict[str, str]:
    path = path or secrets_path()
    if not path.exists():
        return {}
    _check_permissions(path)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.TOMLKitError) as exc:
        raise SecretsError(f"{path}: cannot read the secrets file: {exc}") from exc
    out: dict[str, str] = {}
    for key, value in doc.unwrap().items():
        if isinstance(value, str):
            out[str(key)] = value
    return out


def _write_file(values: dict[str, str], path: Path | None = None) -> None:
    path = path or secrets_path()
    doc = tomlkit.document()
    doc.add(tomlkit.comment("dpdeck secrets: keep this file mode 0600. Managed by `dpdeck secrets`."))
    for key in sorted(values):
        doc[key] = values[key]
    atomic_write_text(path, tomlkit.dumps(doc), mode=0o600)


def _from_env(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    environ = os.environ if environ is None else environ
    for var in ENV_VARS.get(name, (name.upper(),)):
        value = environ.get(var)
        if value:
            return var, value
    return None


def get_secret(name: str) -> str | None:
    """The secret's value: environment first, then the secrets file; None when unset anywhere."""
    check_name(name)
    env = _from_env(name)
    if env is not None:
        return env[1]
    return _read_file().get(name)


def set_secret(name: str, value: str) -> Path:
    """Store a secret in the 0600 secrets file (atomically); returns the file's path."""
    check_name(name)
    if not value or "\n" in value:
        raise SecretsError(f"secret {name!r}: expected a non-empty single-line value")
    values = _read_file()
    values[name] = value
    _write_file(values)
    return secrets_path()


def delete_secret(name: str) -> bool:
    check_name(name)
    values = _read_file()
    if name not in values:
        return False
    del values[name]
    _write_file(values)
    return True


def list_secrets() -> list[SecretInfo]:
    """Names (never values) of the secrets available, with where each comes from."""
    found: dict[str, SecretInfo] = {}
    for name in ENV_VARS:
        env = _from_env(name)
        if env is not None:
            found[name] = SecretInfo(name, f"env:{env[0]}")
    for name in _read_file():
        found.setdefault(name, SecretInfo(name, "file"))
    return [found[k] for k in sorted(found)]


def known_values() -> list[str]:
    """Every secret value we know of; an unsafe secrets file is skipped here (redaction must not fail)."""
    values = [v for name in ENV_VARS if (env := _from_env(name)) for v in [env[1]]]
    try:
        values.extend(_read_file().values())
    except (SecretsError, OSError):
        pass
    # Longest first so a value that contains another is masked whole.
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def redact(text: str, extra: list[str] | None = None) -> str:
    """Mask known secret values and anything shaped like a W&B key or HF token with `***`."""
    for value in [*(extra or []), *known_values()]:
        if value:
            text = text.replace(value, MASK)
    text = _WANDB_SHAPE.sub(MASK, text)
    return _HF_SHAPE.sub(MASK, text)


def looks_like_real_value(value: object) -> bool:
    """A placeholder such as '' or '<your key>' is stripped but not worth storing as a secret."""
    if not isinstance(value, str):
        return False
    stripped = value.strip()
    return bool(stripped) and not any(c in stripped for c in "<> \t") and len(stripped) >= 8


@dataclass(frozen=True)
class FoundSecret:
    """A secret found inside a profile file (the value is kept only to move it to the secrets store)."""

    file: str
    keypath: str
    secret: str  # canonical secret name, e.g. wandb_api_key
    value: object

    @property
    def storable(self) -> bool:
        return looks_like_real_value(self.value)


def _secret_keypaths(node: object, prefix: list[str | int]) -> list[tuple[list[str | int], str]]:
    found: list[tuple[list[str | int], str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            secret = PROFILE_SECRET_KEYS.get(str(key).lower())
            if secret is not None:
                found.append(([*prefix, str(key)], secret))
            else:
                found.extend(_secret_keypaths(value, [*prefix, str(key)]))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_secret_keypaths(value, [*prefix, index]))
    return found


def strip_secrets(text: str, file: str) -> tuple[str, list[FoundSecret]]:
    """Remove every secret-carrying key from TOML text; returns the new text and what was removed.

    Text without secrets comes back unchanged byte for byte. Raises ProfileParseError on invalid TOML.
    """
    from profiles.document import TomlFile, join_keypath

    toml = TomlFile.from_text(text, source=file)
    hits = _secret_keypaths(toml.data(), [])
    if not hits:
        return text, []
    found: list[FoundSecret] = []
    # Delete deepest / last first so list indexes of earlier hits stay valid.
    for parts, secret in sorted(hits, key=lambda h: [str(p) for p in h[0]], reverse=True):
        keypath = join_keypath(parts)
        found.append(FoundSecret(file, keypath, secret, toml.get(keypath)))
        toml.delete(keypath)
    return toml.dumps(), sorted(found, key=lambda f: f.keypath)


def move_to_store(found: list[FoundSecret]) -> list[str]:
    """Store real secret values found in a profile; returns one warning line per removed key."""
    warnings: list[str] = []
    for item in found:
        if item.storable:
            existing = _read_file().get(item.secret)
            if existing == item.value:
                note = "it was already in the secrets store"
            elif existing is not None:
                # Never clobber a working key with one from an old or someone else's profile.
                note = (
                    f"kept the different '{item.secret}' already in the secrets store and dropped this one "
                    f"(to use it instead: dpdeck secrets set {item.secret})"
                )
            else:
                set_secret(item.secret, str(item.value))
                note = f"moved it to the secrets store as '{item.secret}' ({secrets_path()})"
        else:
            note = "it held a placeholder, nothing was stored"
        warnings.append(
            f"{item.file}: {item.keypath}: secrets never stay in profiles; removed the key and {note}"
        )
    return warnings


# ----- secrets of a job -----------------------------------------------------------------------------------


def env_var_for(name: str) -> str:
    """The environment variable a job receives the secret in (WANDB_API_KEY, HF_TOKEN, ...)."""
    return ENV_VARS.get(name, (name.upper(),))[0]


def is_secret_env_name(name: str) -> bool:
    if name in _NOT_SECRET_ENV:
        return False
    return any(name in names for names in ENV_VARS.values()) or bool(_SECRET_ENV_NAME.search(name))


def scrub_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of an environment without the variables that look like credentials."""
    return {k: v for k, v in environ.items() if not is_secret_env_name(k)}


def secrets_asked(docs: Iterable[Mapping[str, object]]) -> dict[str, str | None]:
    """The secrets a profile's TOMLs (main first, then dataset/eval) ask for -> the value written in them.

    A profile asks for a secret by carrying its key anywhere (the value itself is stripped before the job is
    frozen) and for the W&B key by `[monitoring] enable_wandb = true`. The value is None unless the profile
    held a real one.
    """
    asked: dict[str, str | None] = {}
    for index, data in enumerate(docs):
        monitoring = data.get("monitoring") if index == 0 else None
        if isinstance(monitoring, Mapping) and monitoring.get("enable_wandb") is True:
            asked.setdefault("wandb_api_key", None)
        for parts, secret in _secret_keypaths(dict(data), []):
            value = _value_at(data, parts)
            asked.setdefault(secret, None)
            if asked[secret] is None and looks_like_real_value(value):
                asked[secret] = str(value).strip()
    return asked


def _value_at(data: object, parts: list[str | int]) -> object:
    for part in parts:
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def secret_env(asked: Mapping[str, str | None], environ: Mapping[str, str]) -> dict[str, str]:
    """{ENV VAR: value} for the secrets a job asks for.

    Each comes from `environ` (the enqueuing client's environment), else the 0600 secrets file, else the value
    the profile itself held; a secret found nowhere is left out (the trainer then says W&B is off).
    Raises SecretsError when the secrets file is unsafe.
    """
    out: dict[str, str] = {}
    stored: dict[str, str] | None = None
    for name in sorted(asked):
        env = _from_env(name, environ)
        value = env[1] if env else None
        if value is None:
            if stored is None:
                stored = _read_file()
            value = stored.get(name) or asked[name]
        if value:
            out[env_var_for(name)] = value
    return out
