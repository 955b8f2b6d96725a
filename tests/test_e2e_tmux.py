"""The real `dpdeck` in a real tmux session at 80x24: every area, a profile from a template in Easy mode, quit."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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
