"""Secrets: env first, then a 0600 file; unsafe files refused; redaction; stripping from profile TOML."""

from __future__ import annotations

import os
import stat

import pytest

from profiles import secrets
from statefiles.paths import secrets_path

WANDB = "0123456789abcdef0123456789abcdef01234567"
HF = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def test_set_get_file_is_0600_from_the_start() -> None:
    assert secrets.get_secret("wandb_api_key") is None
    path = secrets.set_secret("wandb_api_key", WANDB)
    assert path == secrets_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secrets.get_secret("wandb_api_key") == WANDB
    secrets.set_secret("hf_token", HF)
    assert secrets.get_secret("wandb_api_key") == WANDB  # earlier values kept
    assert [(i.name, i.source) for i in secrets.list_secrets()] == [
        ("hf_token", "file"),
        ("wandb_api_key", "file"),
    ]
    assert secrets.delete_secret("hf_token") and secrets.get_secret("hf_token") is None


def test_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.set_secret("hf_token", HF)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_fromenvironment0000000")
    assert secrets.get_secret("hf_token") == "hf_fromenvironment0000000"
    monkeypatch.setenv("HF_TOKEN", "hf_preferredvariable00000")
    assert secrets.get_secret("hf_token") == "hf_preferredvariable00000"
    assert ("hf_token", "env:HF_TOKEN") in [(i.name, i.source) for i in secrets.list_secrets()]


def test_group_readable_file_is_refused_with_chmod_hint() -> None:
    secrets.set_secret("wandb_api_key", WANDB)
    path = secrets_path()
    os.chmod(path, 0o644)
    with pytest.raises(secrets.SecretsError, match=rf"chmod 600 {path}"):
        secrets.get_secret("wandb_api_key")
    with pytest.raises(secrets.SecretsError, match="0644"):
        secrets.set_secret("hf_token", HF)
    assert path.stat().st_mode & 0o777 == 0o644  # we did not silently rewrite it


def test_bad_names_and_values() -> None:
    with pytest.raises(secrets.SecretsError, match="invalid secret name"):
        secrets.set_secret("../x", "v")
    with pytest.raises(secrets.SecretsError, match="non-empty single-line"):
        secrets.set_secret("wandb_api_key", "a\nb")
    assert not secrets_path().exists()


def test_redact_known_values_and_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.set_secret("custom", "s3cr3t-value-xyz")
    monkeypatch.setenv("WANDB_API_KEY", "local-notahexkeybutsecret")
    text = f"key={WANDB} tok={HF} custom=s3cr3t-value-xyz env=local-notahexkeybutsecret sha=abc123 ok"
    out = secrets.redact(text)
    for value in (WANDB, HF, "s3cr3t-value-xyz", "local-notahexkeybutsecret"):
        assert value not in out
    assert out.count("***") == 4 and out.endswith("sha=abc123 ok")


def test_redact_still_works_when_file_is_unsafe() -> None:
    secrets.set_secret("custom", "s3cr3t-value-xyz")
    os.chmod(secrets_path(), 0o640)
    assert secrets.redact(f"a {WANDB} b") == "a *** b"


def test_strip_secrets_nested_and_untouched() -> None:
    plain = "epochs = 1  # comment\n\n[model]\ntype = 'chroma'\n"
    assert secrets.strip_secrets(plain, "main.toml") == (plain, [])
    text = (
        "epochs = 1\n[monitoring]\nenable_wandb = true\nwandb_api_key = '" + WANDB + "'\n"
        "[[extra]]\nhf_token = '" + HF + "'\n[[extra]]\nHF_TOKEN = '<your token>'\n"
    )
    clean, found = secrets.strip_secrets(text, "main.toml")
    assert WANDB not in clean and HF not in clean and "your token" not in clean
    assert "enable_wandb = true" in clean
    assert [(f.keypath, f.secret, f.storable) for f in found] == [
        ("extra[0].hf_token", "hf_token", True),
        ("extra[1].HF_TOKEN", "hf_token", False),
        ("monitoring.wandb_api_key", "wandb_api_key", True),
    ]
    notes = secrets.move_to_store(found)
    assert secrets.get_secret("wandb_api_key") == WANDB and secrets.get_secret("hf_token") == HF
    assert len(notes) == 3 and "placeholder" in notes[1]


def test_move_to_store_never_clobbers_a_different_stored_secret() -> None:
    secrets.set_secret("wandb_api_key", WANDB)
    other = "ffffffffffffffffffffffffffffffffffffffff"
    _, found = secrets.strip_secrets(f"[monitoring]\nwandb_api_key = '{other}'\n", "main.toml")
    notes = secrets.move_to_store(found)
    assert secrets.get_secret("wandb_api_key") == WANDB
    assert "kept the different 'wandb_api_key'" in notes[0] and other not in notes[0]
