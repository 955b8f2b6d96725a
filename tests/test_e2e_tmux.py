"""The real `dpdeck` in a real tmux session at 80x24: every area, a profile from a template in Easy mode, quit."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.tmux, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]


class Tmux:
    def __init__(self, home: Path) -> None:
        self.socket = f"dpdeck-test-{uuid.uuid4().hex[:8]}"  # a private server: never touches the user's tmux
        self.home = home

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return out.stdout

    def start(self, command: str) -> None:
        env = {**os.environ, "DPDECK_HOME": str(self.home)}
        env.pop("TMUX", None)
        subprocess.run(
            [
                "tmux",
                "-L",
                self.socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "deck",
                "-x",
                "80",
                "-y",
                "24",
                "-e",
                f"DPDECK_HOME={self.home}",
                "-e",  # this checkout's packages, whatever the installed copy points at
                f"PYTHONPATH={REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                command,
            ],
            check=True,
            env=env,
            timeout=30,
        )
        self.tmux("set", "-sg", "escape-time", "10")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "deck")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "deck", *keys)

    def wait(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if needle in text:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not shown within {timeout}s; screen:\n{text}")

    def wait_any(self, needles: list[str], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if any(n in text for n in needles):
                return text
            time.sleep(0.2)
        raise AssertionError(f"none of {needles} shown within {timeout}s; screen:\n{text}")

    def alive(self) -> bool:
        return (
            subprocess.run(
                ["tmux", "-L", self.socket, "has-session", "-t", "deck"], capture_output=True
            ).returncode
            == 0
        )

    def kill_tmux_only(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        tmpdir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (tmpdir / self.socket).unlink(missing_ok=True)  # our private server's socket file

    def kill(self) -> None:
        self.kill_tmux_only()
        # The deck starts the engine daemon when one exists; end whatever ran with this test's DPDECK_HOME.
        import psutil

        mine = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("DPDECK_HOME") == str(self.home):
                    mine.append(proc)
            except (psutil.Error, OSError):
                continue
        for proc in mine:
            with contextlib.suppress(psutil.NoSuchProcess):  # it may end on its own meanwhile
                proc.terminate()
        _, alive = psutil.wait_procs(mine, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@pytest.fixture
def tmux(dpdeck_home: Path):  # type: ignore[no-untyped-def]
    session = Tmux(dpdeck_home)
    yield session
    session.kill()


def test_deck_in_tmux_navigates_and_creates_a_profile(tmux: Tmux, dpdeck_home: Path) -> None:
    exe = shutil.which("dpdeck")
    assert exe, "dpdeck is not installed (pip install -e .)"
    tmux.start(f"{exe}; sleep 30")  # the sleep keeps the pane readable if dpdeck dies early
    tmux.wait("Templates")
    for key, needle in (
        ("2", "exit reason"),
        ("3", "No jobs yet"),
        ("4", "GPUs"),
        ("5", "without caption"),
        ("6", "Downloads"),
        ("1", "Templates"),
    ):
        tmux.keys(key)
        tmux.wait(needle)
    tmux.keys("G")  # vim bottom: the last template, demo-tiny
    tmux.wait("A tiny random SD1.5")
    tmux.keys("Enter")
    tmux.wait("Name:")
    tmux.keys("Enter")  # the suggested name: my-demo-tiny
    tmux.wait("new, not saved yet")
    tmux.wait("epochs")
    tmux.keys("C-s")
    main = dpdeck_home / "profiles" / "my-demo-tiny" / "main.toml"
    deadline = time.monotonic() + 30
    while not main.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert main.is_file(), tmux.screen()
    tmux.wait("Saved my-demo-tiny v1")  # the deck's own word ("saved" alone also matches "not saved yet")
    tmux.keys("C-w")
    tmux.wait("my-demo-tiny")
    tmux.wait("Your profiles")
    # `q` on an area quits, as in lazygit or k9s. On a loaded box a key sent while the editor is still closing
    # can land on the closing screen: if the deck is still up after a while, press q again (a user would too).
    for _ in range(3):
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while "Templates" in tmux.screen() and time.monotonic() < deadline:
            time.sleep(0.2)
        if "Templates" not in tmux.screen():
            break
    assert "Templates" not in tmux.screen(), "dpdeck did not quit"
    tmux.wait("the daemon keeps running")  # the exit line says training goes on without the deck
    from statefiles import toml as tomllib

    assert tomllib.loads(main.read_text())["model"]["type"] == "sd15"


def test_slash_and_letters_in_one_send_keys_reach_the_filter(tmux: Tmux, dpdeck_home: Path) -> None:
    """`/` opens a text field; the letters tmux sends in the same write must land in it, not in the list."""
    from profiles import store

    store.create_from_template("demo-tiny", "alpha-zeta")
    exe = shutil.which("dpdeck")
    assert exe
    tmux.start(f"{exe}; sleep 30")
    tmux.wait("alpha-zeta")
    tmux.keys("/zeta")  # ONE send-keys: the four letters arrive right behind the slash
    deadline = time.monotonic() + 30
    text = tmux.screen()
    while not any(line.strip() == "zeta" for line in text.splitlines()) and time.monotonic() < deadline:
        time.sleep(0.2)
        text = tmux.screen()
    assert any(line.strip() == "zeta" for line in text.splitlines()), text  # the filter row holds all four
    assert "search profiles" not in text and "alpha-zeta  [sd15]" in text


@pytest.mark.slow
def test_deck_in_tmux_runs_the_demo_job_and_survives_a_closed_deck(tmux: Tmux, dpdeck_home: Path) -> None:
    """Enqueue the tiny demo profile from the deck, close the deck (kill tmux) while it trains, open a new
    deck and watch the job complete in the Run screen with its loss curve and saves."""
    pytest.importorskip("engine.jobs.client")
    pytest.importorskip("deepspeed")
    from engine.demo import prepare
    from profiles import store

    main_toml = prepare(dpdeck_home / "demo")  # the real tiny model and dataset, built locally
    files = {name: (main_toml.parent / name).read_text() for name in ("main.toml", "dataset.toml")}
    store.save("demo", files, "demo profile for the e2e test", create=True)
    exe = shutil.which("dpdeck")
    assert exe
    tmux.start(f"{exe}; sleep 30")
    tmux.wait("Templates")
    tmux.keys("g")  # vim top: the first of your profiles, the only one
    tmux.wait("demo  profile · sd15")
    tmux.keys("E")  # enqueue
    tmux.wait("GPUs (e.g. 0,1")
    tmux.keys("Enter")  # any free GPU (CPU here)
    # The deck's own answer first: a key sent while the dialog is still closing would land in its input.
    tmux.wait("job 1 queued: demo")
    tmux.keys("2")
    tmux.wait("▶ running", timeout=120)

    tmux.kill_tmux_only()  # the deck dies with its terminal; the daemon and the job must not
    session2 = Tmux(dpdeck_home)
    session2.socket = tmux.socket + "b"
    tmux.socket = session2.socket  # the fixture's teardown cleans this one up too
    tmux.start(f"{exe}; sleep 30")
    tmux.wait("Templates")
    tmux.keys("2")
    tmux.wait_any(["▶ running", "✓ completed"])  # the job's row, whatever it reached meanwhile
    tmux.keys("Enter")
    tmux.wait("job 1")
    text = tmux.wait("✓ completed", timeout=240)
    assert "step" in text
    text = tmux.wait("✓ epoch 16", timeout=30)  # the final save, listed in the Run screen
    assert "loss" in text and "no data yet" not in text.split("loss", 1)[1][:40]
    # Log search typed in one burst: `N` (previous match) is a Run key, so a letter that missed the field
    # would jump instead of typing. The line under the log counts the matches.
    tmux.keys("/TRAINING")
    time.sleep(0.5)
    tmux.keys("Enter")
    text = tmux.wait("'TRAINING' · ", timeout=10)
    assert "not in the last" not in text, text


# The README's "first run" paragraph, as it must read: the keys in it are taken from the README itself, so a
# changed key (the enqueue key moved from `q` to `E` with issue 16) changes the walk, and a reworded paragraph
# fails here first, naming what to check.
FIRST_RUN = re.compile(
    r"A first run, keyboard only: `(?P<profiles>[^`]+)`, highlight the `(?P<template>[^`]+)` template, "
    r"Enter \(name it\), `(?P<save>[^`]+)`, `(?P<close>[^`]+)`, `(?P<enqueue>[^`]+)`, Enter \(any free GPU\); "
    r"`(?P<queue>[^`]+)` shows it queued; Enter on it follows it to completed with its curve and saves\."
)
SAVE_LINE = re.compile(r"✓ (epoch|step|final)\b")  # a Saves line; the header's state reads "✓ completed"
# README key -> the binding id that must carry it (the README is checked against the app, not only walked).
FIRST_RUN_IDS = {
    "profiles": "deck.profiles",
    "save": "editor.save",
    "close": "editor.close",
    "enqueue": "profiles.enqueue",
    "queue": "deck.queue",
}


def first_run_steps() -> dict[str, str]:
    """The README's first-run keys by role; an assertion names the paragraph when it no longer parses."""
    text = " ".join((REPO / "README.md").read_text().split())
    found = FIRST_RUN.search(text)
    assert found, (
        "README.md's 'A first run, keyboard only: ...' paragraph changed shape: update FIRST_RUN in "
        "tests/test_e2e_tmux.py to the new wording (and check the walk below still matches it)"
    )
    return found.groupdict()


def tmux_key(readme_key: str) -> str:
    """`ctrl+s` (README and Textual spelling) -> `C-s` (tmux send-keys spelling)."""
    mod, plus, key = readme_key.partition("+")
    return f"C-{key}" if plus and mod == "ctrl" else readme_key


def bound_keys(binding_id: str) -> set[str]:
    """The keys the app binds under `binding_id` (Textual's binding ids are what keymap.toml names)."""
    from textual.binding import Binding

    from tui.app import DeckApp
    from tui.screens.editor import EditorScreen
    from tui.screens.profiles import ProfilesScreen

    keys: set[str] = set()
    for cls in (DeckApp, ProfilesScreen, EditorScreen):
        for binding in cls.BINDINGS:
            if isinstance(binding, Binding) and binding.id == binding_id:
                keys |= {k.strip() for k in binding.key.split(",")}
    return keys


def test_readme_first_run_keys_are_the_apps_keys() -> None:
    """Fast half of the first-run check: every key the README names is bound to what the README says it does."""
    steps = first_run_steps()
    for role, binding_id in FIRST_RUN_IDS.items():
        assert steps[role] in bound_keys(binding_id), (
            f"README's first run says `{steps[role]}` for {role}, but {binding_id} is bound to "
            f"{sorted(bound_keys(binding_id))}"
        )
    from profiles import templates

    assert steps["template"] in {t.name for t in templates.list_templates()}


@pytest.mark.slow
def test_readme_first_run_walked_in_tmux(tmux: Tmux, dpdeck_home: Path) -> None:
    """README's first run, keyboard only, at 80x24: template -> named profile -> saved -> closed -> enqueued ->
    Queue shows it -> Enter follows it to completed, with its loss curve and its saves in the Run screen."""
    pytest.importorskip("deepspeed")
    steps = first_run_steps()
    template = steps["template"]
    tmux.start(f"{sys.executable} -m tui.cli; sleep 30")  # the sleep keeps the pane readable if it dies early
    tmux.wait("Templates")
    tmux.keys(tmux_key(steps["profiles"]))
    # "highlight the template": filter the list down to it, then the last row is the only template left.
    tmux.keys(f"/{template}")
    tmux.wait(f"{template}  [")
    tmux.keys("Enter")
    time.sleep(0.3)  # the list takes the focus back from the filter before G moves in it
    tmux.keys("G")
    tmux.wait("A tiny random SD1.5")  # the template's description: it is the highlighted row
    tmux.keys("Enter")
    tmux.wait("Name:")
    tmux.keys("Enter")  # "name it": the suggested name
    name = f"my-{template}"
    tmux.wait("new, not saved yet")
    tmux.keys(tmux_key(steps["save"]))
    tmux.wait(f"Saved {name} v1")
    tmux.keys(tmux_key(steps["close"]))
    tmux.wait("Your profiles")
    tmux.wait(f"{name}  [")
    tmux.keys(tmux_key(steps["enqueue"]))
    tmux.wait("GPUs (e.g. 0,1")  # "Enter (any free GPU)"
    tmux.keys("Enter")
    deadline = time.monotonic() + 30
    while "GPUs (e.g. 0,1" in tmux.screen() and time.monotonic() < deadline:
        time.sleep(0.2)  # a key sent while the dialog is still closing would land in its input
    tmux.keys(tmux_key(steps["queue"]))
    # "shows it queued": its row (the demo model is built before the enqueue lands: seconds, once), in whatever
    # state it reached by then (the daemon may have started it already).
    from engine.jobs.job import JobState
    from tui.theme import STATE_BADGES

    badges = [
        f"{STATE_BADGES[s][0]} {s.value}"
        for s in (JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.COMPLETED)
    ]
    # The row: a state badge, then the name in the next column (a notification names the job too); at 80
    # columns the name may end in an ellipsis, so its first letters are what must follow the badge.
    row = re.compile("(" + "|".join(map(re.escape, badges)) + r")\s+" + re.escape(name[:6]))
    deadline = time.monotonic() + 120
    text = tmux.screen()
    while not row.search(text) and time.monotonic() < deadline:
        time.sleep(0.3)
        text = tmux.screen()
    assert row.search(text), text
    tmux.keys("Enter")
    tmux.wait("job 1")
    text = tmux.wait("✓ completed", timeout=300)
    assert name in text
    # "and saves": the Saves panel lists at least one complete save (`✓ <kind> <name>`).
    text = tmux.wait("Saves", timeout=30)
    deadline = time.monotonic() + 30
    while not SAVE_LINE.search(text) and time.monotonic() < deadline:
        time.sleep(0.3)
        text = tmux.screen()
    assert SAVE_LINE.search(text), text
    # "with its curve": the loss chart is drawn, not its empty placeholder.
    assert "loss" in text and "no data yet" not in text, text
