"""`dpdeck backend install|status|update diffusion-pipe` against a local "upstream" built in the test.

The upstream is a bare repository with a tiny train.py (its imports: stdlib, a package installed here, the
checkout's own utils/ and a git SUBMODULE), a requirements.txt naming only installed packages plus a torch
pin that must be left to the system, and pip runs with PIP_NO_INDEX so nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statefiles import settings
from tui.cli import main

REPO = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "protocol.file.allow=always",
       "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"]

TRAIN_PY = '''\
import argparse
import json
from pathlib import Path

import tomlkit
from utils import common
from utils.common import helper
from submodules.tiny import TINY

print("train.py must never be run by the verify step")
raise SystemExit(3)
'''
REQUIREMENTS = "# upstream's pins\ntorch>=2.0\ntorchvision\ntomlkit\npsutil>=5\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _commit(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD:main", "--tags")
    return git(work, "rev-parse", "HEAD")


class Upstream:
    """A bare `upstream.git` (+ `tiny.git`, its submodule) and a work clone to push new commits from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root / "upstream.git")
        sub_work = root / "tiny-work"
        sub_work.mkdir()
        git(sub_work, "init", "-q")
        (sub_work / "__init__.py").write_text("TINY = 1\n")
        git(sub_work, "add", "-A")
        git(sub_work, "commit", "-q", "-m", "tiny")
        git(root, "clone", "-q", "--bare", str(sub_work), "tiny.git")
        git(root, "init", "-q", "--bare", "upstream.git")
        self.work = root / "work"
        git(root, "clone", "-q", self.url, "work")
        (self.work / "train.py").write_text(TRAIN_PY)
        (self.work / "requirements.txt").write_text(REQUIREMENTS)
        (self.work / "utils").mkdir()
        (self.work / "utils" / "__init__.py").write_text("")
        (self.work / "utils" / "common.py").write_text("def helper() -> int:\n    return 1\n")
        git(self.work, "submodule", "add", "-q", str(root / "tiny.git"), "submodules/tiny")
        self.first = _commit(self.work, "first")
        git(self.work, "tag", "v1")
        git(self.work, "push", "-q", "origin", "v1")

    def commit(self, message: str, **files: str) -> str:
        for name, text in files.items():
            (self.work / name).write_text(text)
        (self.work / "CHANGES").write_text(message)
        return _commit(self.work, message)


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip may only find what is installed already
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return Upstream(tmp_path)


def dp(*argv: str) -> int:
    return main(["backend", *argv])


def status_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    capsys.readouterr()
    dp("status", "--json", *extra)
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def configured() -> tuple[str | None, str | None]:
    s = settings.load().diffusion_pipe
    return s.path, s.python


def test_install_end_to_end_then_rerun_is_a_no_op(upstream: Upstream, dpdeck_home: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    out = capsys.readouterr().out
    for n, name in enumerate(("clone", "checkout", "venv", "requirements", "verify", "configure"), 1):
        assert f"[{n}/6] {name}" in out
    assert "left to the system: torch>=2.0, torchvision" in out
    path, python = configured()
    assert path and python
    checkout = Path(path)
    assert (checkout / "train.py").is_file() and (checkout / "submodules/tiny/__init__.py").is_file()
    assert checkout.name == upstream.first[:12] and checkout.is_relative_to(dpdeck_home / "backend")
    # The venv sees the system's packages (its torch) and installed nothing over them.
    probe = subprocess.run([python, "-c", "import sys, tomlkit; print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "True", probe.stderr
    installed = (Path(python).parent.parent / "dpdeck-requirements.txt").read_text()
    assert "tomlkit" in installed and "torch" not in installed
    rep = status_json(capsys)
    assert rep["commit"] == upstream.first and rep["dirty"] == [] and rep["behind"] == 0
    assert rep["verified"] is True and rep["managed"] is True and rep["problems"] == []
    progress = rep["progress"]
    assert isinstance(progress, dict) and progress["ok"] is True and len(progress["steps"]) == 6

    mtime = checkout.stat().st_mtime_ns
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    again = capsys.readouterr().out
    assert "already installed" in again and again.count("–") == 6, again
    assert configured() == (path, python) and checkout.stat().st_mtime_ns == mtime
    assert not (checkout.parent / "incoming").exists()


def test_status_counts_behind_and_update_fast_forwards(upstream: Upstream,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    old_path, old_python = configured()
    second = upstream.commit("second")
    assert status_json(capsys)["behind"] == 0  # not fetched yet: the last fetch's view
    rep = status_json(capsys, "--fetch")
    assert rep["remote"] == "reachable" and rep["behind"] == 1 and rep["commit"] == upstream.first
    capsys.readouterr()
    assert dp("update", "diffusion-pipe") == 0
    out = capsys.readouterr().out
    assert "requirements.txt unchanged" in out  # pip is run only when requirements.txt changed
    path, python = configured()
    assert path != old_path and python == old_python and Path(str(old_path)).is_dir()  # the old one is kept
    rep = status_json(capsys)
    assert rep["commit"] == second and rep["behind"] == 0 and rep["verified"] is True
    assert dp("update", "diffusion-pipe") == 0
    assert "has nothing new" in capsys.readouterr().out


def test_a_pinned_ref_stays_until_moved(upstream: Upstream, capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url, "--ref", "v1") == 0
    second = upstream.commit("second")
    assert dp("update", "diffusion-pipe") == 0
    assert "pinned at v1" in capsys.readouterr().out
    rep = status_json(capsys, "--fetch")
    assert rep["commit"] == upstream.first and rep["pinned"] is True and rep["behind"] == 1
    assert dp("update", "diffusion-pipe", "--ref", "main") == 0
    rep = status_json(capsys)
    assert rep["commit"] == second and rep["pinned"] is False and rep["branch"] == "main"


def test_a_bad_ref_names_step_2_and_the_ref(upstream: Upstream, capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url, "--ref", "no-such-tag") == 1
    err = capsys.readouterr().err
    assert "step 2 (checkout) failed" in err and "'no-such-tag'" in err and "git ls-remote" in err
    assert configured() == (None, None)


def test_a_wrong_url_names_step_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", str(tmp_path / "nowhere.git")) == 1
    err = capsys.readouterr().err
    assert "step 1 (clone) failed" in err and "nowhere.git" in err and "command: git" in err
    assert configured() == (None, None)


def test_a_missing_submodule_is_named_and_the_previous_checkout_stays(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    before = configured()
    # Upstream moves its submodule to a commit its submodule repository does not have.
    sub = upstream.work / "submodules" / "tiny"
    (sub / "extra.py").write_text("X = 1\n")
    git(sub, "add", "-A")
    git(sub, "commit", "-q", "-m", "never pushed")
    upstream.commit("bump the submodule to an unpushed commit")
    capsys.readouterr()
    assert dp("update", "diffusion-pipe") == 1
    err = capsys.readouterr().err
    assert "step 2 (checkout) failed" in err and "submodule" in err and "output (last lines)" in err
    assert configured() == before


def test_a_requirements_failure_names_step_4_and_keeps_the_previous_checkout(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    before = configured()
    upstream.commit("a requirement not to be found offline",
                    **{"requirements.txt": REQUIREMENTS + "dpdeck-no-such-package-xyz==1.0\n"})
    capsys.readouterr()
    assert dp("update", "diffusion-pipe") == 1
    err = capsys.readouterr().err
    assert "step 4 (requirements) failed" in err and "dpdeck-no-such-package-xyz" in err
    assert "pip install" in err and "stays configured" in err
    assert configured() == before
    rep = status_json(capsys)
    assert rep["verified"] is True and rep["commit"] == upstream.first
    # Fixed upstream: the same command resumes (the partial clone is fetched into, not cloned again).
    third = upstream.commit("drop it again", **{"requirements.txt": REQUIREMENTS})
    capsys.readouterr()
    assert dp("update", "diffusion-pipe") == 0
    assert "fetched into the partial clone" in capsys.readouterr().out
    assert status_json(capsys)["commit"] == third


def test_verify_names_the_imports_that_fail(upstream: Upstream, capsys: pytest.CaptureFixture[str]) -> None:
    upstream.commit("needs a module nobody has", **{"train.py": "import dpdeck_missing_module_xyz\n" + TRAIN_PY})
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 1
    err = capsys.readouterr().err
    assert "step 5 (verify) failed" in err and "dpdeck_missing_module_xyz" in err
    assert "train.py must never be run" not in err
    assert configured() == (None, None)


def test_a_base_python_inside_a_venv_lends_its_packages(upstream: Upstream, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # GPU images ship their CUDA torch inside a venv (/opt/torch/.venv): --system-site-packages alone would
    # reach only the interpreter under it. A module only that venv has stands in for its torch.
    base = tmp_path / "image-venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(base)], check=True)
    site = subprocess.run([str(base / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dpdeck_image_torch.py").write_text("CUDA = True\n")
    # The image's venv also has what requirements.txt names (pip runs offline), here through a .pth of its own,
    # as an editable install would: under a venv'd test Python (CI's 3.10 lane) --system-site-packages reaches
    # only the bare interpreter, which lacks tomlkit.
    import tomlkit

    Path(site, "dpdeck_test_deps.pth").write_text(str(Path(tomlkit.__file__).parent.parent) + "\n")
    upstream.commit("needs the image's package", **{"train.py": "import dpdeck_image_torch\n" + TRAIN_PY})
    assert dp("install", "diffusion-pipe", "--url", upstream.url, "--python", str(base / "bin/python")) == 0, \
        capsys.readouterr().err
    assert "seeing" in capsys.readouterr().out
    _, python = configured()
    probe = subprocess.run([str(python), "-c", "import dpdeck_image_torch, tomlkit"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_a_torch_that_cannot_see_the_gpu_fails_step_5(upstream: Upstream, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from engine.jobs.checkout import verify

    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch, a train extra (pip install -e '.[train]')")
    # This box's CPU torch on a box that claims an NVIDIA driver: what a CPU wheel on a GPU box looks like.
    monkeypatch.setattr(verify, "NVIDIA_DRIVER", tmp_path)
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 1
    err = capsys.readouterr().err
    assert "step 5 (verify) failed" in err and "cannot see the GPU" in err and "CUDA build of torch" in err
    assert configured() == (None, None)


def test_verify_reads_upstreams_own_train_py() -> None:
    """Step 5 against upstream's train.py (8f83dbf): its top-level imports, each one tried, none run."""
    import importlib.util

    from engine.jobs.checkout import verify
    from engine.jobs.checkout.steps import StepError

    upstream = Path(__file__).resolve().parents[2] / "shared/upstream/diffusion-pipe"
    if not (upstream / "train.py").is_file():
        pytest.skip("../shared/upstream/diffusion-pipe absent: upstream's train.py is the other side here")
    modules = [m for m, _ in verify.top_imports(upstream / "train.py")]
    for needed in ("toml", "deepspeed", "torch", "wandb", "multiprocess", "utils.common", "utils.saver"):
        assert needed in modules
    absent = [m for m in ("wandb", "toml", "multiprocess") if importlib.util.find_spec(m) is None]
    try:
        verify.imports(Path(sys.executable), upstream)
    except StepError as exc:
        assert exc.step == 5 and all(m in exc.output for m in absent), exc.output
    else:
        assert not absent


def test_status_of_a_wrong_path_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings.set_value("diffusion_pipe.path", str(tmp_path))
    assert dp("status") == 1
    out = capsys.readouterr().out
    assert f"no train.py in {tmp_path}" in out and "not a git repository" in out


def test_status_without_network_says_remote_not_reachable(upstream: Upstream,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    os.rename(upstream.url, upstream.url + ".gone")
    rep = status_json(capsys, "--fetch")
    assert str(rep["remote"]).startswith("remote not reachable") and rep["commit"] == upstream.first


def test_gpu_check_script_parses_and_its_python_imports() -> None:
    script = REPO / "bench" / "gpu" / "diffusion_pipe_sdxl.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    helper = REPO / "bench" / "gpu" / "dp_sdxl_job.py"
    done = subprocess.run([sys.executable, str(helper), "--help"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "tiny SDXL" in done.stdout


@pytest.mark.slow
def test_gpu_check_tiny_sdxl_loads_as_upstream_loads_it(tmp_path: Path) -> None:
    # upstream models/sdxl.py (8f83dbf): from_single_file(checkpoint_path) with no config, so diffusers must
    # find the tiny configs in the offline HF cache the helper writes.
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        pytest.skip("needs diffusers, a train extra (pip install -e '.[train]')")
    helper = REPO / "bench" / "gpu" / "dp_sdxl_job.py"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    built = subprocess.run([sys.executable, str(helper), "build", str(tmp_path)], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    loaded = subprocess.run([sys.executable, str(helper), "check-load", str(tmp_path)], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert '"te2_layers": 10' in loaded.stdout
    assert main(["profile", "validate", str(tmp_path / "profile" / "main.toml"), "--backend", "diffusion-pipe"]) == 0


async def test_system_screen_shows_the_checkout_and_a_run_in_progress(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    from textual.widgets import Static

    from engine.jobs.checkout import state
    from tests.tui_helpers import wait_text, wait_until
    from tui.app import DeckApp

    assert dp("install", "diffusion-pipe", "--url", upstream.url) == 0
    # A run in flight, as `dpdeck backend update` leaves its progress file between two steps.
    progress = state.Progress("update")
    progress.step(1, "clone", "done", "fetched")
    progress.step(2, "checkout", "running", "the default branch")
    app = DeckApp(start_mode="system")

    def backend_section() -> str:
        # The section's own text, not the screen's rows: where the sections above it run longer (the daemon's
        # problems on a busy CI box) it is scrolled below the bottom edge, and the checkout path alone holds
        # the commit's first 12 digits.
        return str(app.screen.query_one("#backend-status", Static).render())

    async def backend_shows(needle: str) -> str:
        await wait_until(pilot, lambda: needle in backend_section(), what=f"{needle!r} in the backend section")
        return backend_section()

    async with app.run_test(size=(140, 70)) as pilot:
        await wait_text(pilot, "diffusion-pipe backend")
        text = await backend_shows(f"commit:   {upstream.first[:12]}")
        assert "tracking origin/main" in text and "verified: yes" in text, text
        await backend_shows("update in progress:")
        await backend_shows("2 checkout: running")
        await pilot.press("I")
        await wait_until(pilot, lambda: any("already running" in str(n.message) for n in app._notifications),
                         what="I refused while a run is in progress")
        progress.finish(True, "up to date")
        await wait_until(pilot, lambda: "update in progress" not in backend_section(),
                         what="the finished run leaves the screen")
        # I runs `dpdeck backend update diffusion-pipe` in the background; the screen follows its progress.
        await pilot.press("I")
        await wait_text(pilot, "backend update diffusion-pipe")
        await pilot.press("y")

        def finished() -> bool:
            done = state.read_progress()
            ours = done is not None and done["pid"] != os.getpid()
            return ours and done is not None and bool(done.get("finished"))

        await wait_until(pilot, finished, timeout=120, what="the background update to finish")
        done = state.read_progress()
        assert done is not None and done["ok"] is True, done
        assert "has nothing new" in done["summary"]
