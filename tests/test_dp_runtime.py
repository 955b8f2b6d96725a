"""The diffusion-pipe backend at run time: its console, save_quit, TensorBoard metrics, its venv, W&B.

The console lines are upstream's (tdrussell/diffusion-pipe at commit 8f83dbf: train.py, utils/saver.py, and
the DeepSpeed lines they trigger); where ../shared/upstream/diffusion-pipe is present, the lines are also
built from upstream's own format strings. The end-to-end tests run the fake train.py
(tests/fake_diffusion_pipe), which prints those lines and writes real TensorBoard event files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import (
    make_profile,
    setup_engine,
    teardown_engine,
    use_fake_wandb,
    wait_for,
    wait_state,
    wait_step,
)

from engine.jobs import classify, launch
from engine.jobs.job import JobState
from engine.jobs.progress import Progress, feed_line, seeded
from engine.jobs.tb_events import MISSING, RunWatcher, TbReader, read_run
from statefiles import settings

UPSTREAM = Path(__file__).resolve().parents[2] / "shared/upstream/diffusion-pipe"
FINAL = ("completed", "failed", "cancelled", "oom", "hung", "interrupted")
DS = "[2026-01-01 00:00:00,000] [INFO] [logging.py:128:log_dist] [Rank 0] "


def _feed(prog: Progress, *lines: str) -> Progress:
    for line in lines:
        feed_line(prog, line)
    return prog


# ----- console parsing ----------------------------------------------------------------------------------


def test_first_epoch_is_known_from_the_first_step_and_steps_per_epoch_from_the_second() -> None:
    prog = _feed(
        seeded({"epochs": 3}),
        "Global batch size = 4",
        DS + "step=1, skipped=0, lr=[2e-05, 2e-05], mom=[(0.9, 0.99), (0.9, 0.99)]",
        "steps: 1 loss: 0.5000 iter time (s): 1.000 samples/sec: 4.000",
    )
    assert (prog.step, prog.epoch, prog.lr, prog.total_epochs, prog.total_steps) == (1, 1, 2e-05, 3, None)
    _feed(prog, "steps: 2 loss: 0.4000 iter time (s): 1.000 samples/sec: 4.000",
          "Saving model to directory epoch1", "Started new epoch: 2",
          "steps: 3 loss: 0.3000 iter time (s): 1.000 samples/sec: 4.000")
    assert (prog.epoch, prog.steps_per_epoch, prog.total_steps) == (2, 2, 6)
    assert [(m["step"], m["epoch"]) for m in prog.take_metrics()] == [(1, 1), (2, 1), (3, 2)]


def test_max_steps_caps_the_total() -> None:
    prog = _feed(seeded({"epochs": 100, "max_steps": 5}), "steps: 1 loss: 0.5 iter time (s): 1 samples/sec: 1")
    assert prog.total_steps == 5
    _feed(prog, "Started new epoch: 2")
    assert prog.total_steps == 5


def test_gradient_release_lr_line_has_no_brackets() -> None:
    # train.py's own _report_progress when optimizer.gradient_release is on: lr={lr[0]}, mom={mom[0]}
    prog = _feed(Progress(), DS + "step=7, skipped=0, lr=3e-05, mom=(0.9, 0.99)")
    assert prog.lr == 3e-05


def test_step_line_with_extra_losses() -> None:
    # PipelineEngine.train_batch prints each additional loss between `loss:` and `iter time`.
    prog = _feed(Progress(), "steps: 12 loss: 0.2500 mse: 0.1000 aux_loss: 0.0500 iter time (s): 0.500 samples/sec: 8.000")
    assert (prog.step, prog.loss, prog.samples_per_s) == (12, 0.25, 8.0)


def test_resume_line_gives_the_epoch_and_saves_resolve_in_the_run_folder() -> None:
    prog = _feed(Progress(), "Resuming training from checkpoint. Resuming at epoch: 3, step: 41")
    assert prog.epoch == 3 and prog.step is None  # step 41 is the next one to run, not one that ran
    prog.run_dir = "/runs/20260101_00-00-00"
    _feed(prog, "steps: 41 loss: 0.1 iter time (s): 1 samples/sec: 1", "Saving model to directory step41",
          DS + "Saving model checkpoint: /runs/20260101_00-00-00/global_step41/mp_rank_00_model_states.pt")
    assert prog.epoch == 3
    assert prog.saves == [
        {"kind": "save", "path": "/runs/20260101_00-00-00/step41", "name": "step41"},
        {"kind": "checkpoint", "path": "/runs/20260101_00-00-00/global_step41", "name": "global_step41"},
    ]


def test_a_relative_save_before_the_run_folder_is_known_is_never_taken_for_a_path() -> None:
    prog = _feed(Progress(), "Saving model to directory epoch1")
    assert prog.saves[0]["path"] == "epoch1"  # the daemon only infers the run folder from absolute paths


def test_manual_quit_is_save_quit_never_a_crash() -> None:
    tail = ["steps: 3 loss: 0.1 iter time (s): 1 samples/sec: 1",
            DS + "Saving model checkpoint: /r/global_step3/mp_rank_00_model_states.pt", "Manually quitting"]
    prog = _feed(Progress(), *tail)
    assert prog.manual_quit and not prog.complete
    reason = classify.classify(0, tail, manual_quit=prog.manual_quit)
    assert reason == "save_quit" and classify.state_for(reason) == JobState.CANCELLED
    assert classify.classify(0, tail) == "crashed"  # what it was before: exit 0 without TRAINING COMPLETE!


def _upstream_format(path: str, needle: str) -> str:
    """The f-string of upstream's print that contains `needle`."""
    text = (UPSTREAM / path).read_text()
    m = re.search(r"print\(f?(['\"])(.*?" + re.escape(needle) + r".*?)\1\)", text)
    assert m, f"{path}: no print containing {needle!r}"
    return m.group(2)


def test_lines_built_from_upstream_format_strings() -> None:
    if not (UPSTREAM / "train.py").is_file():
        pytest.skip("../shared/upstream/diffusion-pipe absent: upstream's print formats cannot be read")
    resume = _upstream_format("train.py", "Resuming training from checkpoint")
    epoch = _upstream_format("utils/saver.py", "Started new epoch")
    save = _upstream_format("utils/saver.py", "Saving model to directory")
    quit_line = _upstream_format("utils/saver.py", "Manually quitting")
    complete = _upstream_format("train.py", "TRAINING COMPLETE")
    values = {"train_dataloader.epoch": "2", "step": "11", "epoch": "3", "name": "epoch2"}

    def fill(fmt: str) -> str:
        return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], fmt)

    prog = _feed(Progress(), fill(resume))
    assert prog.epoch == 2
    _feed(prog, "steps: 11 loss: 0.1 iter time (s): 1 samples/sec: 1", fill(save), fill(epoch))
    assert prog.epoch == 3 and prog.saves[-1]["name"] == "epoch2"
    _feed(prog, fill(quit_line))
    assert prog.manual_quit
    _feed(prog, fill(complete))
    assert prog.complete


# ----- TensorBoard events ---------------------------------------------------------------------------------


def _writer(run_dir: Path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def test_tb_reader_reads_only_what_was_appended(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.add_scalar("train/loss", 0.9, 1)
    w.add_scalar("train/epoch_loss", 0.8, 1)
    w.add_scalar("val/loss", 0.7, 1)
    w.add_scalar("val/loss_quantile_0.10", 0.1, 1)
    w.add_scalar("eval/eval_time_sec", 2.0, 1)
    w.flush()
    watcher = RunWatcher(TbReader(tmp_path))
    first = watcher.poll().as_dict()
    assert first["epoch_loss"] == [{"epoch": 1, "loss": pytest.approx(0.8)}]
    assert list(first["evals"]) == ["val"]  # not eval/ (the eval's duration) nor the quantiles
    assert watcher.reader.read_new() == []  # nothing new
    w.add_scalar("val/loss", 0.5, 4)
    w.add_scalar("other/loss", 0.6, 4, new_style=True)  # tensorboard's tensor form of a scalar
    w.flush()
    new = watcher.reader.read_new()
    assert [(s.tag, s.step) for s in new] == [("val/loss", 4), ("other/loss", 4)]
    assert new[1].value == pytest.approx(0.6)
    w.close()


def test_tb_reader_waits_for_a_record_still_being_written(tmp_path: Path) -> None:
    w = _writer(tmp_path / "src")
    for step in range(1, 4):
        w.add_scalar("val/loss", step / 10, step)
    w.close()
    [src] = (tmp_path / "src").glob("events.out.tfevents.*")
    data = src.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    dst = run / src.name
    dst.write_bytes(data[:-7])  # the last record cut short, as a writer mid-flush leaves it
    reader = TbReader(run)
    got = [s.step for s in reader.read_new()]
    assert got == [1, 2]
    with open(dst, "ab") as fh:
        fh.write(data[-7:])
    assert [s.step for s in reader.read_new()] == [3]


def test_tb_without_the_package_says_so_and_returns_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"\0" * 64)
    for name in [m for m in sys.modules if m.partition(".")[0] == "tensorboard"] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # import tensorboard... -> ImportError
    metrics = read_run(tmp_path)
    assert metrics.as_dict() == {"epoch_loss": [], "evals": {}, "note": MISSING}


def test_tb_damaged_file_is_skipped_with_a_note(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"\xff" * 64)  # an absurd record length
    metrics = read_run(tmp_path)
    assert metrics.epoch_loss == {} and "unreadable" in (metrics.note or "")


# ----- diffusion_pipe.python ------------------------------------------------------------------------------


def _venv(path: Path, system_site: bool) -> Path:
    args = [sys.executable, "-m", "venv", "--without-pip", str(path)]
    if system_site:
        args.insert(4, "--system-site-packages")
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return path / "bin" / "python"


def test_dp_python_runs_its_own_deepspeed_never_path_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    setup_engine()
    python = _venv(tmp_path / "venv", system_site=True)  # deepspeed importable, no bin/deepspeed script
    assert not (python.parent / "deepspeed").exists()
    decoy = tmp_path / "other-env" / "bin"
    decoy.mkdir(parents=True)
    (decoy / "deepspeed").write_text("#!/bin/sh\nexit 99\n")
    (decoy / "deepspeed").chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoy}{os.pathsep}{os.environ['PATH']}")
    settings.set_value("diffusion_pipe.python", str(python))
    main = make_profile(tmp_path, name="venv")
    argv, _ = launch.build_command("diffusion-pipe", main, 29600, gpus=None, num_gpus=1, has_nvidia=False,
                                   rank_log_dir=tmp_path / "ranks")
    assert argv[:3] == [str(python), "-m", "deepspeed.launcher.runner"]
    assert str(decoy) not in " ".join(argv)
    # Without diffusion_pipe.python: dpdeck's own interpreter's runner, as before.
    settings.set_value("diffusion_pipe.python", "")
    argv, _ = launch.build_command("diffusion-pipe", main, 29600, gpus=None, num_gpus=1, has_nvidia=False,
                                   rank_log_dir=tmp_path / "ranks")
    assert str(python) not in argv[0]


def test_dp_python_without_deepspeed_is_refused_at_enqueue(tmp_path: Path) -> None:
    from engine.jobs import client

    setup_engine()
    python = _venv(tmp_path / "bare", system_site=False)
    settings.set_value("diffusion_pipe.python", str(python))
    main = make_profile(tmp_path, name="bare")
    with pytest.raises(launch.EnqueueError, match=r"has no deepspeed.*-m pip install deepspeed"):
        client.enqueue(str(main), name="bare")
    # A python that was there when set and is gone since (`config set` refuses one that is not there).
    gone = tmp_path / "gone" / "python"
    gone.parent.mkdir()
    gone.write_text("#!/bin/sh\n")
    gone.chmod(0o755)
    settings.set_value("diffusion_pipe.python", str(gone))
    gone.unlink()
    with pytest.raises(launch.EnqueueError, match="not an executable file"):
        client.enqueue(str(main), name="bare")


# ----- end to end: the fake train.py through the queue -------------------------------------------------


def _dp_profile(root: Path, name: str, *, wandb: bool = False, **fake: object) -> Path:
    """make_profile's run plus an eval set (evaluated every epoch) and, optionally, W&B."""
    main = make_profile(root, name=name, **fake)
    (root / "eval.toml").write_text(f'resolutions = [64]\n\n[[directory]]\npath = "{root / "images"}"\n')
    text = main.read_text().replace("save_every_n_epochs = 1\n", "save_every_n_epochs = 1\neval_every_n_epochs = 1\n")
    text += f'\n[[eval_datasets]]\nname = "val"\nconfig = "{root / "eval.toml"}"\n'
    if wandb:
        text += ('\n[monitoring]\nenable_wandb = true\nwandb_api_key = ""\nwandb_tracker_name = "dpdeck-test"\n'
                 'wandb_run_name = "e2e"\n')
    main.write_text(text)
    return main


@pytest.fixture
def engine(tmp_path: Path):
    setup_engine(cpu_slots=1)
    yield tmp_path
    teardown_engine()


def _files_holding(roots: list[Path], needle: bytes, skip: set[Path]) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path not in skip and needle in path.read_bytes():
                found.append(path)
    return found


@pytest.mark.slow
def test_run_with_eval_and_wandb_end_to_end(engine: Path, monkeypatch: pytest.MonkeyPatch,
                                            dpdeck_home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from engine.jobs import client
    from profiles.secrets import set_secret
    from statefiles import paths

    key = "wandb-key-" + "7" * 30
    secrets_file = set_secret("wandb_api_key", key)
    record = tmp_path_factory.mktemp("wandb-record") / "calls.jsonl"
    use_fake_wandb(monkeypatch, record)
    # The run goes through the user's diffusion-pipe venv (no bin/deepspeed there): `python -m deepspeed...`.
    python = _venv(tmp_path_factory.mktemp("dp-venv") / "venv", system_site=True)
    settings.set_value("diffusion_pipe.python", str(python))
    main = _dp_profile(engine, "e2e", wandb=True, epochs=2, steps_per_epoch=3, sleep_s=0.3)
    job_id = client.enqueue(str(main), name="e2e")
    client.ensure_daemon()
    job = wait_step(job_id, 1)
    spec = json.loads((Path(job.job_dir) / "launch.json").read_text())
    assert spec["argv"][:3] == [str(python), "-m", "deepspeed.launcher.runner"]
    assert job.epoch is not None, "the first epoch is known from the first step"
    job = wait_state(job_id, FINAL, timeout=240)
    assert job.state == "completed", (job.state, job.exit_reason, job.evidence)
    assert (job.total_epochs, job.total_steps, job.step) == (2, 6, 6)
    assert {m["epoch"] for m in client.job_metrics(job_id) if m["step"] <= 3} == {1}  # upstream never prints epoch 1

    tb = client.job_tb_metrics(job_id)
    assert [p["epoch"] for p in tb["epoch_loss"]] == [1, 2]
    assert [p["step"] for p in tb["evals"]["val"]] == [0, 3, 6]
    shown = subprocess.run([sys.executable, "-m", "tui.cli", "show", str(job_id), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tensorboard"] == json.loads(json.dumps(tb))
    shown = subprocess.run([sys.executable, "-m", "tui.cli", "show", str(job_id)], capture_output=True, text=True,
                           timeout=120)
    assert "epoch loss: epoch 2" in shown.stdout and "eval val: step 0" in shown.stdout

    calls = [json.loads(line) for line in record.read_text().splitlines()]
    login = next(c for c in calls if c["event"] == "login")
    assert login == {"event": "login", "explicit": False, "key": key}  # the blank key fell back to the env
    init = next(c for c in calls if c["event"] == "init")
    assert init["project"] == "dpdeck-test" and init["config_key"] == ""
    assert any(c["event"] == "log" and "train/epoch_loss" in c["data"] for c in calls)
    # The key reached W&B and nothing that outlives the launch: job folder (spec, logs, frozen TOMLs), the
    # store, the daemon's logs, the run folder. Only the 0600 secrets file holds it.
    leaks = _files_holding([dpdeck_home, Path(job.run_dir)], key.encode(), skip={secrets_file})
    assert leaks == [], leaks
    assert paths.store_path().is_file()


@pytest.mark.slow
def test_save_quit_by_hand_ends_resumable_and_the_resume_knows_its_epoch(engine: Path) -> None:
    from engine.jobs import client
    from engine.jobs.protocol import Action, Request

    main = _dp_profile(engine, "quit", epochs=3, steps_per_epoch=4, sleep_s=0.3)
    job_id = client.enqueue(str(main), name="quit")
    client.ensure_daemon()
    wait_step(job_id, 6)
    run_dir = Path(wait_for(lambda: client.get_job(job_id).run_dir, 60, what="run dir known"))
    (run_dir / "save_quit").touch()  # upstream's own signal file, not `dpdeck stop`
    job = wait_state(job_id, FINAL, timeout=120)
    assert (job.state, job.exit_reason) == ("cancelled", "save_quit"), job.evidence
    assert job.evidence == []
    quit_at = job.step
    assert (job.epoch, job.total_steps) == (quit_at // 4 + 1, 12)  # epoch 3 starts after step 8
    assert (run_dir / "latest").read_text() == f"global_step{quit_at}"
    new_id = client.send(Request(Action.RESUME, job_id)).check().new_job
    assert new_id is not None
    resumed = wait_state(new_id, FINAL, timeout=180)
    assert resumed.state == "completed", (resumed.state, resumed.evidence)
    # Its console shows at most one epoch start (it resumes in epoch 2 or 3): the total is the parent's.
    assert resumed.total_steps == 12
    first = client.job_metrics(new_id)[0]
    assert first["step"] == quit_at + 1
    assert first["epoch"] == quit_at // 4 + 1, "the resume line gives the epoch of the first resumed step"
    assert [p["epoch"] for p in client.job_tb_metrics(new_id)["epoch_loss"]] == [1, 2, 3]
