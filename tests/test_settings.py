"""The one settings model (statefiles/settings.py): `dpdeck config`, the loader's tolerance, env overrides,
the generated docs/config.md, and that no caller repeats a default."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from statefiles import paths, settings
from tui.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent

# A value of each setting's type that differs from its default, as `config set` takes it and get returns it.
# Paths exist (`config set` refuses a folder or program that is not there: tests/test_cli_polish.py).
SAMPLES: dict[str, tuple[str, Any]] = {
    "diffusion_pipe.path": (str(REPO / "tests"), str(REPO / "tests")),
    "diffusion_pipe.python": (sys.executable, sys.executable),
    "scheduler.cpu_slots": ("4", 4),
    "scheduler.min_free_mib": ("0", 0),
    "scheduler.hang_timeout_s": ("60", 60),
    "scheduler.stop_timeout_s": ("30", 30),
    "ports.low": ("30000", 30000),
    "ports.high": ("30010", 30010),
    "models.dir": ("/data/models", "/data/models"),
    "models.folders": (f"{REPO / 'tests'}, {REPO}", [str(REPO / "tests"), str(REPO)]),
    "models.min_free_gb": ("0.5", 0.5),
    "models.max_downloads": ("1", 1),
    "models.download_retries": ("0", 0),
    "datasets.undo_keep": ("7", 7),
    "tui.image_protocol": ("kitty", "kitty"),
}


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in settings.iter_keys():
        if k.meta.env:
            monkeypatch.delenv(k.meta.env, raising=False)


def test_samples_cover_every_key() -> None:
    assert set(SAMPLES) == set(settings.KEYS)


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_every_key_round_trips_set_get_unset(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw, value = SAMPLES[key]
    default = settings.key_info(key).default
    assert value != default
    assert settings.get(key) == default
    assert cli_main(["config", "set", key, raw]) == 0
    assert settings.get(key) == value
    capsys.readouterr()
    assert cli_main(["config", "get", key]) == 0
    shown = capsys.readouterr().out.strip()
    assert shown == (", ".join(value) if isinstance(value, list) else str(value))
    assert cli_main(["config", "unset", key]) == 0
    assert settings.get(key) == default
    assert "was not set" not in capsys.readouterr().out
    assert cli_main(["config", "unset", key]) == 0
    assert "was not set" in capsys.readouterr().out


def test_set_and_unset_keep_the_users_comments() -> None:
    path = paths.config_path()
    path.write_text("# my settings\n[scheduler]\n# two jobs on this box\ncpu_slots = 2\n", encoding="utf-8")
    settings.set_value("ports.low", "30000")
    settings.set_value("scheduler.stop_timeout_s", "60")
    settings.unset("scheduler.stop_timeout_s")
    text = path.read_text(encoding="utf-8")
    assert "# my settings" in text and "# two jobs on this box" in text and "cpu_slots = 2" in text
    assert "stop_timeout_s" not in text
    assert settings.load().scheduler.cpu_slots == 2 and settings.load().ports.low == 30000
    settings.unset("ports.low")
    assert "[ports]" not in path.read_text(encoding="utf-8")  # an emptied section goes too


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("scheduler.cpu_slots", "two", "expected integer >= 1"),
        ("scheduler.cpu_slots", "0", "expected integer >= 1"),
        ("ports.low", "80", "expected integer 1024..65535"),
        ("models.min_free_gb", "lots", "expected number >= 0"),
        ("tui.image_protocol", "iterm", "expected one of auto, halfblock, kitty, sixel"),
        ("models.folders", "[1, 2]", "expected list of strings"),
    ],
)
def test_a_bad_value_is_refused_naming_file_key_and_expected(
    key: str, raw: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(settings.SettingsError) as info:
        settings.set_value(key, raw)
    message = str(info.value)
    assert str(paths.config_path()) in message and key in message and expected in message
    assert not paths.config_path().exists()  # nothing written
    assert cli_main(["config", "set", key, raw]) == 2
    assert expected in capsys.readouterr().err


def test_unknown_key_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config", "get", "scheduler.cpu_slot"], ["config", "set", "scheduler.cpu_slot", "2"],
                 ["config", "unset", "scheduler.cpu_slot"]):
        assert cli_main(argv) == 2
        assert "did you mean 'scheduler.cpu_slots'?" in capsys.readouterr().err
    with pytest.raises(settings.UnknownSetting, match="known: diffusion_pipe.path"):
        settings.get("zzz")


def test_a_typo_in_the_file_falls_back_and_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.models.settings import min_free_bytes

    path = paths.config_path()
    path.write_text(
        '[models]\nmax_downloads = "two"\nmin_free_gb = 1\n[scheduler]\ncpu_slots = 0\nslots = 3\n',
        encoding="utf-8",
    )
    report = settings.load_report()
    assert report.settings.models.max_downloads == 3  # the typo does not stop downloads
    assert min_free_bytes() == 1024**3  # an integer where a number is expected is fine
    assert report.settings.scheduler.cpu_slots == 1
    problems = {p.key: p for p in report.problems}
    assert set(problems) == {"models.max_downloads", "scheduler.cpu_slots", "scheduler.slots"}
    assert problems["models.max_downloads"].source == str(path)
    assert problems["models.max_downloads"].expected == "integer >= 1"
    assert cli_main(["config", "list"]) == 0
    out, err = capsys.readouterr()
    assert "models.max_downloads" in out and "DEFAULT" in out and "HELP" in out
    assert f"{path}: models.max_downloads: expected integer >= 1, found 'two'" in err
    assert "scheduler.slots: expected a known setting" in err


def test_a_broken_file_does_not_stop_reading_but_stops_editing() -> None:
    paths.config_path().write_text("[models\nmax_downloads = 2\n", encoding="utf-8")
    report = settings.load_report()
    assert report.settings == settings.Settings()
    assert report.problems and report.problems[0].source == str(paths.config_path())
    with pytest.raises(settings.SettingsError, match="cannot edit a broken TOML file"):
        settings.set_value("models.max_downloads", "2")


def test_env_override_wins_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.models.settings import min_free_bytes, models_dir

    settings.set_value("models.max_downloads", "2")
    settings.set_value("models.dir", "/from/file")
    monkeypatch.setenv("DPDECK_MAX_DOWNLOADS", "5")
    monkeypatch.setenv("DPDECK_MODELS_DIR", "/from/env")
    monkeypatch.setenv("DPDECK_MIN_FREE_BYTES", "123456789")
    report = settings.load_report()
    assert report.settings.models.max_downloads == 5 and report.origins["models.max_downloads"] == "env"
    assert models_dir() == Path("/from/env")
    assert min_free_bytes() == 123456789
    monkeypatch.setenv("DPDECK_MAX_DOWNLOADS", "0")  # below the minimum: the file's value stands
    report = settings.load_report()
    assert report.settings.models.max_downloads == 2 and report.origins["models.max_downloads"] == "file"
    assert [str(p) for p in report.problems] == [
        "$DPDECK_MAX_DOWNLOADS: models.max_downloads: expected integer >= 1, found '0'; using the default"
    ]


def test_the_image_protocol_choices_are_the_widgets_protocols() -> None:
    from tui.widgets import term_graphics as tg

    k = settings.key_info(tg.SETTING)
    assert k.meta.choices == tg.PROTOCOLS and k.meta.env == tg.ENV_OVERRIDE


def test_committed_docs_equal_the_rendering() -> None:
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == settings.render_markdown(), "regenerate: python -m statefiles.settings > docs/config.md"
    for k in settings.iter_keys():
        assert f"`{k.key}`" in committed


def _sources() -> list[Path]:
    out: list[Path] = []
    for pkg in ("engine", "tui", "profiles", "statefiles", "bench"):
        out += [p for p in (REPO / pkg).rglob("*.py") if p != REPO / "statefiles" / "settings.py"]
    return out


def test_defaults_are_written_once() -> None:
    """No caller reads a setting and supplies its own default (`get("ports.low") or 29500`), no second copy
    of the table survives, and the distinctive defaults appear nowhere but in the model."""
    assert not (REPO / "engine" / "config.py").exists()
    keys = "|".join(re.escape(k) for k in settings.KEYS)
    fallback = re.compile(rf"""["']({keys})["']\s*\)?\s*(or\b|,\s*[^)\s])""")
    distinctive = [k.default for k in settings.iter_keys() if isinstance(k.default, int) and k.default >= 1000]
    distinctive.remove(2048)  # also a model width (engine/models/families.py); not a settings default there
    literal = re.compile(r"\b(" + "|".join(str(d) for d in distinctive) + r")\b")
    offenders = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO)
        offenders += [
            f"{rel}: fallback for {m.group(1)}"
            for m in fallback.finditer(text)
            # writing a value (in code, or a `dpdeck config set KEY VALUE` command line) is not a default
            if not text[: m.start()].endswith(("set_value(", '"set", '))
        ]
        offenders += [f"{rel}: literal {m.group(1)}" for m in literal.finditer(text)]
        if re.search(r"from engine import (.*\b)?config\b|engine\.config\b", text):
            offenders.append(f"{rel}: imports the old engine.config")
    assert offenders == []


def test_settings_tree_and_table_agree() -> None:
    s = settings.Settings()
    for k in settings.iter_keys():
        assert getattr(getattr(s, k.section), k.name) == k.default
        assert k.help and k.kind in (str, int, float, list)
    # Lists are per instance: mutating one load's list must not change the default.
    loaded = settings.load()
    loaded.models.folders.append("/x")
    assert settings.load().models.folders == []
