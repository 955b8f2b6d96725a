"""Engine pieces without launching training: store, ports, progress parsing, classification, enqueue."""

from __future__ import annotations

import json
import multiprocessing
import socket
from pathlib import Path

import pytest
from engine_helpers import make_profile, setup_engine

from engine.jobs import classify, client, launch, ports, store
from engine.jobs.progress import Progress, eta_seconds, feed_line
from statefiles.logtail import LogFollower


def test_store_schema_version_and_wal(dpdeck_home: Path) -> None:
    conn = store.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "requests", "events", "metrics", "leases", "settings"} <= tables


def test_store_refuses_newer_schema(dpdeck_home: Path) -> None:
    conn = store.connect()
    conn.execute(f"PRAGMA user_version={store.SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this dpdeck"):
        store.connect()


def test_port_picker_skips_listeners_and_leases() -> None:
    low, high = ports.port_range((29500, 29999))
    assert high < ports.ephemeral_low()
    low = ports.pick_port(taken=set())  # other tests on this machine may hold the first ports
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", low))
    sock.listen(1)
    try:
        assert not ports.is_free(low)
        picked = ports.pick_port(taken={low + 1}, configured=(low, high))
        assert picked not in (low, low + 1)
        assert ports.bind_probe(picked)
    finally:
        sock.close()


def test_progress_parses_both_backends(tmp_path: Path) -> None:
    prog = Progress()
    feed_line(prog, "Started new epoch: 3")
    feed_line(prog, "steps: 41 loss: 0.1234 iter time (s): 1.500 samples/sec: 2.667")
    feed_line(prog, "[2025-01-01 00:00:00] [INFO] [logging.py:96:log_dist] [Rank 0] step=41, skipped=0, lr=[2.5e-05], mom=[(0.9, 0.99)]")
    assert (prog.epoch, prog.step, prog.loss, prog.samples_per_s, prog.lr) == (3, 41, 0.1234, 2.667, 2.5e-05)
    feed_line(prog, '[dpdeck] {"event": "progress", "step": 42, "total_steps": 100, "epoch": 3, "loss": 0.5, "lr": 0.001, "samples_per_s": 9.0}')
    feed_line(prog, '[dpdeck] {"event": "run_dir", "path": "/x/20250101_00-00-00"}')
    feed_line(prog, "TRAINING COMPLETE!")
    assert prog.step == 42 and prog.total_steps == 100 and prog.run_dir.endswith("00-00-00") and prog.complete
    assert [m["step"] for m in prog.take_metrics()] == [41, 42]
    log = tmp_path / "log"
    log.write_bytes(b"a\rb\nc")
    follower = LogFollower(log)
    assert follower.read_lines() == ["a", "b"]
    with open(log, "ab") as fh:
        fh.write(b"d\n")
    assert follower.read_lines() == ["cd"]
    assert eta_seconds(10, 20, 0.0, 100.0, now=109.0) == pytest.approx(10.0)
    assert eta_seconds(None, 20, 0, None) is None


@pytest.mark.parametrize(
    ("code", "line", "reason"),
    [
        (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "cuda_oom"),
        (250, "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5) ran for 600000 ms", "nccl_timeout"),
        (1, "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use", "port_in_use"),
        (247, "some rank vanished", "killed"),
        (1, "OSError: [Errno 28] No space left on device", "disk_full"),
        (1, "FileNotFoundError: [Errno 2] No such file or directory: '/models/x.safetensors'", "missing_file"),
        (1, "KeyError: 'output_dir'", "config_error"),
        (1, "RuntimeError: boom", "crashed"),
        (0, "TRAINING COMPLETE!", "completed"),
    ],
)
def test_exit_classification(code: int, line: str, reason: str) -> None:
    tail = ["noise"] * 5 + [line] + ["more noise"]
    assert classify.classify(code, tail, complete_seen="COMPLETE" in line) == reason
    if reason != "completed":
        assert line in classify.evidence(tail)


def test_enqueue_freezes_profile(tmp_path: Path) -> None:
    setup_engine()
    # Paused, so the daemon that enqueue starts cannot take the job before it is read back (a CI race: it was
    # once 'starting' already).
    client.set_queue_paused(True)
    main = make_profile(tmp_path, name="frozen", epochs=1)
    job_id = client.enqueue(str(main), name="frozen")
    job = client.get_job(job_id)
    frozen = Path(job.job_dir) / "main.toml"
    main.write_text(main.read_text().replace("epochs = 1", "epochs = 99"))
    assert "epochs = 1\n" in frozen.read_text()
    assert f'dataset = "{Path(job.job_dir) / "dataset.toml"}"' in frozen.read_text()
    assert job.state == "queued" and job.backend == "diffusion-pipe"


def test_enqueue_refuses_invalid_profile(tmp_path: Path) -> None:
    setup_engine()
    main = make_profile(tmp_path, name="bad")
    main.write_text(main.read_text().replace('type = "flux"', 'type = "fluxx"'))
    with pytest.raises(launch.EnqueueError, match="model.type"):
        client.enqueue(str(main))
    assert client.list_jobs(include_finished=True) == []


def _enqueue_many(args: tuple[str, str, int]) -> list[int]:
    import os

    home, main, n = args
    os.environ["DPDECK_HOME"] = home
    return [client.enqueue(main, name="many") for _ in range(n)]


def test_four_clients_fifty_enqueues_each(tmp_path: Path, dpdeck_home: Path) -> None:
    setup_engine()
    store.set_setting(store.connect(), "paused", "1")  # nothing runs: this is about the store
    main = str(make_profile(tmp_path, name="many"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_enqueue_many, [(str(dpdeck_home), main, 50)] * 4)
    ids = [i for chunk in results for i in chunk]
    assert len(ids) == 200 and len(set(ids)) == 200
    jobs = client.list_jobs(include_finished=True)
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert all((Path(j.job_dir) / "main.toml").exists() for j in jobs)


def test_command_generation_pins_gpus_and_passes_port_twice(tmp_path: Path) -> None:
    setup_engine()
    argv, cwd = launch.build_command(
        "diffusion-pipe", tmp_path / "main.toml", 29533, gpus=[1, 3], num_gpus=None, has_nvidia=True,
        rank_log_dir=tmp_path / "ranks", resume_from="20250101_00-00-00",
    )
    joined = " ".join(argv)
    assert "--include localhost:1,3" in joined and "--num_gpus" not in joined
    assert argv.count("--master_port") == 2 and argv.count("29533") == 2
    assert joined.endswith("--resume_from_checkpoint 20250101_00-00-00")
    assert argv[argv.index("--master_port") + 2].endswith("train.py") or "train.py" in joined
    builtin, _ = launch.build_command(
        "builtin", tmp_path / "main.toml", 29600, gpus=None, num_gpus=2, has_nvidia=False,
        rank_log_dir=tmp_path / "ranks",
    )
    assert "--module engine.trainer" in " ".join(builtin) and "--num_gpus 2" in " ".join(builtin)


def test_multi_node_flags_pass_through(tmp_path: Path) -> None:
    setup_engine()
    extra = launch.multi_node_args("/etc/hosts.ds", "slurm", "w0:0,1@w1:0", None, 2, "10.0.0.1")
    argv, _ = launch.build_command(
        "diffusion-pipe", tmp_path / "main.toml", 29501, gpus=None, num_gpus=None, has_nvidia=True,
        rank_log_dir=tmp_path / "ranks", extra_launcher_args=extra,
    )
    joined = " ".join(argv)
    for flag in ("--hostfile /etc/hosts.ds", "--launcher slurm", "--include w0:0,1@w1:0", "--num_nodes 2",
                 "--master_addr 10.0.0.1"):
        assert flag in joined
    assert "--num_gpus" not in joined  # the hosts decide, not a local GPU count
    assert joined.index("--launcher") < joined.index("train.py")  # launcher flags before the script
    with pytest.raises(launch.EnqueueError, match="--launcher"):
        launch.multi_node_args(None, "ssh", None, None, None, None)


def test_port_reservation_is_machine_wide(tmp_path: Path) -> None:
    # Two daemons (two state dirs) must never be handed the same free port at the same time.
    port, fd = ports.pick_and_reserve(set())
    try:
        other, fd2 = ports.pick_and_reserve(set())
        assert other != port
        ports.release(fd2)
        assert ports.reserve(port) is None
    finally:
        ports.release(fd)
    again = ports.reserve(port)
    assert again is not None
    ports.release(again)


def test_job_is_the_one_record_of_a_job() -> None:
    """One Job type and one JobState: the public row is derived from Job's fields, the SQL from the sets."""
    import dataclasses

    from engine.jobs.job import FINAL, FINAL_IN, LIVE, LIVE_IN, PUBLIC_FIELDS, Job, JobState

    assert set(PUBLIC_FIELDS) < {f.name for f in dataclasses.fields(Job)}
    assert PUBLIC_FIELDS[:3] == ("id", "name", "state") and "pid_ctime" not in PUBLIC_FIELDS
    assert LIVE.isdisjoint(FINAL) and JobState.QUEUED not in LIVE | FINAL
    assert LIVE | FINAL | {JobState.QUEUED} == set(JobState)
    assert all(f"'{s.value}'" in FINAL_IN for s in FINAL) and "queued" not in LIVE_IN
    assert f"{JobState.RUNNING}" == "running"  # never "JobState.RUNNING" in a message


def test_fast_job_dicts_equal_the_model_rows(tmp_path: Path) -> None:
    setup_engine()
    store.set_setting(store.connect(), "paused", "1")
    main = str(make_profile(tmp_path, name="rows"))
    ids = [client.enqueue(main, name=f"r{i}", gpus=[i] if i else None) for i in range(3)]
    fast = client.list_job_dicts(include_finished=True)
    slow = [j.public() for j in client.list_jobs(include_finished=True)]
    assert [r["id"] for r in fast] == ids
    assert fast == slow
    assert json.loads(json.dumps(fast)) == fast and fast[0]["state"] == "queued"
    assert list(fast[0]) == [  # the shape `dpdeck ls --json` has always printed: scripts depend on it
        "id", "name", "state", "exit_reason", "profile", "backend", "gpus", "num_gpus", "port", "pid", "step",
        "total_steps", "epoch", "total_epochs", "loss", "lr", "samples_per_s", "eta_s", "created_at",
        "started_at", "ended_at", "run_dir", "job_dir", "priority", "after_id", "parent_id", "resume_from",
        "launcher_args", "wait_reason", "evidence",
    ]


def test_fail_fast_missing_gpus_unwritable_output_and_missing_dataset(tmp_path: Path) -> None:
    """What validation passed at enqueue can break before the start: the daemon fails the job at once."""
    from engine_helpers import wait_state

    setup_engine()
    store.set_setting(store.connect(), "paused", "1")
    gpu_job = client.enqueue(str(make_profile(tmp_path / "a", name="gpus")), gpus=[3])
    out_job = client.enqueue(str(make_profile(tmp_path / "b", name="out")), name="out")
    ds_job = client.enqueue(str(make_profile(tmp_path / "c", name="gone")), name="gone")
    # Break them while they wait: output_dir's parent becomes a file, the image folder disappears.
    (tmp_path / "b" / "out").write_text("a file where the output folder's parent should be")
    (tmp_path / "c" / "images").rmdir()
    client.set_queue_paused(False)
    job = wait_state(gpu_job, ("failed",), timeout=60)
    assert job.exit_reason == "config_error" and "GPU" in job.evidence[0]
    job = wait_state(out_job, ("failed",), timeout=60)
    assert job.exit_reason == "config_error" and "output_dir" in job.evidence[0]
    job = wait_state(ds_job, ("failed",), timeout=60)
    assert job.exit_reason == "missing_file" and "does not exist" in job.evidence[0]
