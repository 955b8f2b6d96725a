"""The CLI's rough edges (issue 16): a reader that leaves the pipe, paths checked before they are stored, one exit
status for "that names nothing", and `dataset buckets` taking what `dataset scan` takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    # Without PYTHONUNBUFFERED, as a user's shell runs dpdeck: output sits in Python's buffer until exit,
    # which is where a closed pipe used to turn into "Exception ignored ... BrokenPipeError".
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def _dataset(folder: Path) -> Path:
    folder.mkdir()
    for i, (w, h) in enumerate([(512, 512), (768, 512), (512, 768), (600, 600)]):
        Image.new("RGB", (w, h)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("a cat")
    return folder


# ---- a reader that leaves ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["config", "list"], ["profile", "templates"], ["config", "get", "ports.low"]]
)
def test_closed_pipe_ends_quietly(args: list[str]) -> None:
    """Writing into a pipe whose reader has gone: no traceback, no "Exception ignored", status 141 (as a
    SIGPIPE'd shell tool)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tui.cli", *args],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141


def test_pipe_into_head_shows_the_first_line_only(tmp_path: Path) -> None:
    """The real thing: a shell pipeline into `head -1`."""
    shell = f"{sys.executable} -m tui.cli profile templates | head -1"
    proc = subprocess.run(
        ["bash", "-c", shell], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.stdout.startswith("TEMPLATE"), proc.stdout
    assert proc.stdout.count("\n") == 1
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- config ------------------------------------------------------------------------------------------


def test_config_set_refuses_a_path_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkout"
    out = _cli("config", "set", "diffusion_pipe.path", str(missing))
    assert out.returncode == 2
    assert f"diffusion_pipe.path: {missing}: no such folder" in out.stderr
    assert "nothing was changed" in out.stderr
    assert _cli("config", "get", "diffusion_pipe.path").stdout.strip() == ""  # not stored

    a_file = tmp_path / "train.py"
    a_file.write_text("")
    out = _cli("config", "set", "diffusion_pipe.path", str(a_file))
    assert out.returncode == 2 and f"{a_file}: not a folder" in out.stderr

    out = _cli("config", "set", "diffusion_pipe.python", str(a_file))  # not executable
    assert out.returncode == 2 and "not an executable file" in out.stderr

    out = _cli("config", "set", "models.folders", f"{tmp_path},{missing}")
    assert out.returncode == 2 and f"{missing}: no such folder" in out.stderr

    out = _cli("config", "set", "diffusion_pipe.path", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert _cli("config", "get", "diffusion_pipe.path").stdout.strip() == str(tmp_path)


def test_config_unset_and_help_list_the_actions(tmp_path: Path) -> None:
    assert _cli("config", "set", "ports.low", "29600").returncode == 0
    out = _cli("config", "unset", "ports.low")
    assert out.returncode == 0 and out.stdout.startswith("ports.low = 29500"), out.stdout
    assert "(was not set)" in _cli("config", "unset", "ports.low").stdout
    assert _cli("config", "unset", "no.such").returncode == 2

    help_text = _cli("config", "--help").stdout
    for action in ("get", "set", "unset", "list"):
        assert f"    {action} " in help_text, help_text


# ---- one exit status for "that names nothing" ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["dataset", "scan", "/definitely/not/here"],
        ["dataset", "scan", "/definitely/not/here", "--json"],
        ["dataset", "dupes", "/definitely/not/here"],
        ["dataset", "buckets", "/definitely/not/here"],
        ["dataset", "caption", "/definitely/not/here.png", "--lowercase"],
        ["dataset", "image", "/definitely/not/here", "--strip-exif"],
        ["dataset", "undo", "no-such-op"],
        ["models", "scan", "/definitely/not/here"],
        ["models", "info", "/definitely/not/here.safetensors"],
        ["models", "pull", "no-such-entry"],
        ["models", "check", "--profile", "no-such-profile"],
        ["profile", "validate", "/definitely/not/here.toml"],
        ["profile", "show", "no-such-profile"],
        ["show", "999"],
        ["config", "get", "no.such"],
    ],
)
def test_naming_nothing_is_a_usage_error(args: list[str]) -> None:
    out = _cli(*args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("dpdeck: error: "), out.stderr
    assert "Traceback" not in out.stderr


# ---- dataset buckets FOLDER ----------------------------------------------------------------------------


def test_dataset_buckets_takes_a_folder(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "cats")
    scan = _cli("dataset", "scan", str(folder))
    assert scan.returncode == 0, scan.stderr

    out = _cli("dataset", "buckets", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["settings_from"].startswith("template ")
    assert sum(b["items"] + b["dropped"] for b in data["buckets"]) == 4  # every image went to a bucket

    text = _cli("dataset", "buckets", str(folder), "--profile", "sd15")
    assert text.returncode == 0, text.stderr
    assert "settings from profile sd15" in text.stdout
    assert _cli("dataset", "buckets", str(folder), "--profile", "no-such-profile").returncode == 2

    # The same folder through a dataset TOML of its own counts the same images.
    toml = tmp_path / "ds.toml"
    toml.write_text(
        f"resolutions = [512]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\n"
        f"num_ar_buckets = 3\n[[directory]]\npath = '{folder}'\n"
    )
    via_toml = json.loads(_cli("dataset", "buckets", str(toml), "--json").stdout)
    assert sum(b["items"] + b["dropped"] for b in via_toml["buckets"]) == 4


# ---- human units ---------------------------------------------------------------------------------------


def test_units_read_as_a_person_writes_them() -> None:
    from tui import units

    now = 1_796_152_493.0
    assert units.when(now - 180, now).endswith(" (3 min ago)")
    assert units.when(now - 180, now)[:16] == time.strftime("%Y-%m-%d %H:%M", time.localtime(now - 180))
    assert units.age(now + 300, now) == "in 5 min" and units.age(now - 2, now) == "just now"
    assert [units.duration(s) for s in (42, 200, 180, 7500, 3 * 86400 + 4 * 3600)] == [
        "42 s",
        "3 min 20 s",
        "3 min",
        "2 h 05 min",
        "3 d 04 h",
    ]
    assert units.counts({"cancelled": 2, "completed": 1}) == "2 cancelled, 1 completed"
    assert units.counts({"queued": 1, "running": 2, "failed": 0}, order=["running"]) == "2 running, 1 queued"
    assert units.counts({}) == "none"
    assert (units.yes_no(True), units.yes_no(False), units.yes_no(None)) == ("yes", "no", "unknown")
    assert units.size(23.8e9) == "23.8 GB" and units.size(900) == "900 B"
    path = "/home/user/work/loras/x.safetensors"
    assert units.middle(path, 80) == path
    assert units.middle(path, 30) == "/home/…/loras/x.safetensors"
    relative = "checkpoints-by-family/sdxl-finetunes-2026/my_pony.safetensors"
    assert (
        units.middle(relative, 40).endswith("/my_pony.safetensors") and len(units.middle(relative, 40)) <= 40
    )
    assert units.middle(relative, 24) == "…/my_pony.safetensors"  # the name whole before the folder's start
    for width in range(2, 40):
        assert len(units.middle(path, width)) <= width
        assert units.middle(path, width).endswith(("s", "…"))  # the end (the file) stays as long as it fits


def test_show_prints_times_as_local_dates_with_age(tmp_path: Path) -> None:
    from engine.jobs import client
    from tests.engine_helpers import make_profile, setup_engine

    setup_engine()
    client.set_queue_paused(True)  # the job stays queued: nothing runs
    job_id = client.enqueue(str(make_profile(tmp_path, name="shown", epochs=1)), name="shown")
    out = _cli("show", str(job_id))
    assert out.returncode == 0, out.stderr
    created = next(line for line in out.stdout.splitlines() if line.strip().startswith("created_at:"))
    stamp = client.get_job(job_id).created_at
    assert created.split(": ", 1)[1].startswith(time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)))
    assert created.endswith("ago)") or created.endswith("(just now)"), created
    raw = json.loads(_cli("show", str(job_id), "--json").stdout)
    assert raw["created_at"] == stamp  # scripts keep the raw number


def test_doctor_names_the_torch_runtime_in_words() -> None:
    pytest.importorskip("torch")
    out = _cli("doctor", "--json")
    line = next(c for c in json.loads(out.stdout) if c["name"] == "torch runtime")
    assert not line["detail"].endswith((" True", " False")), line
    assert "CUDA" in line["detail"], line


def test_profile_history_and_list_show_local_times_with_age() -> None:
    assert _cli("profile", "new", "timed", "--from", "sd15").returncode == 0
    for args, header in ((["profile", "history", "timed"], "SAVED"), (["profile", "list"], "MODIFIED")):
        before = time.strftime("%Y-%m-%d %H:", time.localtime())
        out = _cli(*args).stdout
        after = time.strftime("%Y-%m-%d %H:", time.localtime())  # an hour may turn meanwhile
        assert header in out and "(UTC)" not in out and "+00:00" not in out, out
        assert (before in out or after in out) and ("(just now)" in out or "ago)" in out), out
    raw = json.loads(_cli("profile", "history", "timed", "--json").stdout)
    assert raw[0]["timestamp"].endswith("+00:00")  # scripts keep the UTC stamp


def test_doctor_names_every_type_the_built_in_trainer_trains() -> None:
    from profiles.model_types import BUILTIN_TYPES

    line = next(c for c in json.loads(_cli("doctor", "--json").stdout) if c["name"] == "diffusion-pipe")
    assert all(t in line["detail"] for t in BUILTIN_TYPES), line
    assert "backend install diffusion-pipe" in line["fix"]


def test_config_set_empty_path_still_means_none() -> None:
    out = _cli("config", "set", "diffusion_pipe.python", "")
    assert out.returncode == 0, out.stderr
