"""A tiny, real stand-in for diffusion-pipe's train.py, for the engine's tests.

Same flags (--deepspeed --config X.toml --master_port P --resume_from_checkpoint [NAME], --local_rank from the
launcher), same run-folder layout and console lines, real torch.distributed (gloo) rendezvous on the master
port. A `[fake]` table in the TOML injects failures: crash_at_step, hang_at_step, oom_at_step, sleep_s,
steps_per_epoch, matmul (+ matmul_reps).

Phases, in order, so a test can kill a process at exactly one of them (tests/test_chaos_matrix.py):
  starting    before init_process_group (`startup_s` sleeps here)
  op_build    DeepSpeed's JIT op build through torch's real FileBaton (only when `op_build_s` is set)
  cache       the latent cache folder is written
  first_step  just before the first optimizer step
  training    after step `pause_step` (default 2) was printed
  saving      a LoRA save: epochN/tmp/ holds the partial state, removed once the save is complete
  checkpoint  a DeepSpeed checkpoint: global_stepN/ written, `latest` not yet
  cleanup     after `TRAINING COMPLETE!`, before the process group is destroyed and the process exits
`pause_at = "<phase>"` + `pause_s` (default 30) makes every rank sleep at that phase (the first time it is
reached); the rank doing the phase's work writes `<phase>\\nrank=R\\npid=P` to `fake-phase` next to --config
(the frozen main.toml lives in the job folder) before it sleeps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import torch
import torch.distributed as dist

OP_NAME = "deepspeed_shm_comm"  # the op DeepSpeed JIT-builds for CPU collectives


class Phases:
    """Announces phases and pauses at the one named by `pause_at`."""

    def __init__(self, fake: dict[str, Any], marker: Path, rank: int, world: int) -> None:
        self.pause_at = fake.get("pause_at")
        self.pause_s = float(fake.get("pause_s", 30))
        self.marker = marker
        self.rank = rank
        self.world = world
        self.seen: set[str] = set()

    def reach(self, name: str, leader: bool) -> None:
        if name != self.pause_at or name in self.seen:
            return
        self.seen.add(name)
        if leader:
            tmp = self.marker.with_name(f"{self.marker.name}.{os.getpid()}.tmp")
            tmp.write_text(f"{name}\nrank={self.rank}\npid={os.getpid()}\n")
            os.replace(tmp, self.marker)  # atomic: a test polling the marker never reads half of it
        time.sleep(self.pause_s)


def op_build(fake: dict[str, Any], phases: Phases) -> None:
    """DeepSpeed's jit_load -> torch.utils.cpp_extension._jit_compile, the baton sequence done faithfully.

    The first rank to create the baton builds (or finds the .so up to date, as ninja would) and removes the
    baton; every other rank waits for the baton file to disappear. A builder killed mid-build leaves the baton
    behind, and then every later build waits on it forever: what the daemon's stale-baton sweep must clear.
    """
    if "op_build_s" not in fake:
        return
    from torch.utils.cpp_extension import _get_build_directory
    from torch.utils.file_baton import FileBaton

    started = time.time()
    build_dir = Path(_get_build_directory(OP_NAME, verbose=False))  # TORCH_EXTENSIONS_DIR or torch's default
    print(f"Using {build_dir.parent} as PyTorch extensions root...", flush=True)
    library = build_dir / f"{OP_NAME}.so"
    baton = FileBaton(str(build_dir / "lock"))
    if baton.try_acquire():
        try:
            if not library.exists():
                print(f"Building extension module {OP_NAME}...", flush=True)
                phases.reach("op_build", leader=True)
                time.sleep(float(fake["op_build_s"]))
                tmp = build_dir / f"{OP_NAME}.so.{os.getpid()}.tmp"
                tmp.write_bytes(b"\x7fELF fake shared object")
                os.replace(tmp, library)
        finally:
            baton.release()
    else:
        baton.wait()
    print(f"Loading extension module {OP_NAME}...", flush=True)
    print(f"Time to load {OP_NAME} op: {time.time() - started:.3f} seconds", flush=True)


def cache_latents(cfg: dict[str, Any], phases: Phases, rank: int) -> None:
    """Rank 0 writes each dataset directory's cache folder (metadata last, as the completion mark)."""
    if rank == 0:
        try:
            dataset = tomllib.loads(Path(cfg["dataset"]).read_text())
        except (KeyError, OSError, tomllib.TOMLDecodeError):
            dataset = {}
        model = (cfg.get("model") or {}).get("type", "model")
        for directory in dataset.get("directory") or []:
            cache = Path(directory["path"]) / "cache" / model
            if (cache / "metadata.json").exists():
                continue
            print(f"Caching latents: {cache}", flush=True)
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "latents_0.arrow").write_bytes(b"fake latents")
            phases.reach("cache", leader=True)
            (cache / "metadata.json").write_text("{}")
    dist.barrier()  # the other ranks wait here while rank 0 caches


def save_lora(run_dir: Path, epoch: int, config: Path, phases: Phases, rank: int) -> None:
    """diffusion-pipe's save_adapter: partial state in epochN/tmp/, the adapter written, tmp/ removed."""
    if rank == 0:
        save = run_dir / f"epoch{epoch}"
        print(f"Saving model to directory {save}", flush=True)
        tmp = save / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "state_dict_0.bin").write_bytes(b"fake partial state")
    phases.reach("saving", leader=rank == 0)
    if rank == 0:
        (save / "adapter_model.safetensors").write_bytes(b"fake")
        shutil.copy(config, save / "adapter_config.toml")
        shutil.rmtree(tmp)


def save_checkpoint(run_dir: Path, step: int, phases: Phases, rank: int) -> None:
    """DeepSpeed's save_checkpoint: the global_stepN/ folder first, `latest` only once it is complete."""
    if rank == 0:
        ckpt = run_dir / f"global_step{step}"
        ckpt.mkdir(exist_ok=True)
        (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"fake checkpoint")
    phases.reach("checkpoint", leader=rank == 0)
    if rank == 0:
        (run_dir / "latest").write_text(f"global_step{step}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deepspeed", action="store_true")
    parser.add_argument("--config", required=True)
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    args = parser.parse_args()
    os.environ["MASTER_PORT"] = str(args.master_port)  # diffusion-pipe overrides the launcher's port too
    config = Path(args.config)
    cfg = tomllib.loads(config.read_text())
    fake = cfg.get("fake", {})
    env_rank, env_world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    phases = Phases(fake, config.parent / "fake-phase", env_rank, env_world)
    time.sleep(float(fake.get("startup_s", 0)))
    phases.reach("starting", leader=env_rank == env_world - 1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
    op_build(fake, phases)
    out = Path(cfg["output_dir"])
    start_step = 0
    if args.resume_from_checkpoint:
        runs = sorted(p for p in out.iterdir() if p.is_dir())
        run_dir = out / args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else runs[-1]
        latest = (run_dir / "latest").read_text().strip()
        start_step = int(latest.removeprefix("global_step"))
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H-%M-%S")
        run_dir = out / stamp
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    cache_latents(cfg, phases, rank)
    steps_per_epoch = int(fake.get("steps_per_epoch", 4))
    epochs = int(cfg.get("epochs", 1))
    pause_step = int(fake.get("pause_step", 2))
    torch.manual_seed(0)
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    x = torch.ones(4)
    step = start_step
    total = steps_per_epoch * epochs
    while step < total:
        epoch = step // steps_per_epoch + 1
        if step % steps_per_epoch == 0 and rank == 0:
            print(f"Started new epoch: {epoch}", flush=True)
        phases.reach("first_step", leader=rank == world - 1)
        t0 = time.time()
        n = int(fake.get("matmul", 0))
        if n:  # compute-bound steps for the supervision-overhead benchmark
            a = torch.randn(n, n)
            for _ in range(int(fake.get("matmul_reps", 4))):
                a = torch.tanh(a @ a)
        loss = ((w * x).sum() - 1.0) ** 2
        opt.zero_grad()
        loss.backward()
        dist.all_reduce(w.grad)
        opt.step()
        step += 1
        time.sleep(float(fake.get("sleep_s", 0.2)))
        if step == fake.get("crash_at_step"):
            raise RuntimeError("fake crash")
        if step == fake.get("oom_at_step") and rank == 0:
            print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
            return 1
        if step == fake.get("hang_at_step"):
            while True:
                time.sleep(1)
        if rank == 0:
            dt = time.time() - t0
            print(f"steps: {step} loss: {loss.item():.4f} iter time (s): {dt:.3f} samples/sec: {world / dt:.3f}",
                  flush=True)
            print(f"[Rank 0] step={step}, skipped=0, lr=[0.1], mom=[(0.9, 0.99)]", flush=True)
        if step == pause_step:
            phases.reach("training", leader=rank == world - 1)
        quit_now = torch.tensor(1 if rank == 0 and (run_dir / "save_quit").exists() else 0)
        if quit_now.item():
            (run_dir / "save_quit").unlink()
        dist.all_reduce(quit_now)
        if quit_now.item() or step == total:
            save_checkpoint(run_dir, step, phases, rank)
            if quit_now.item():
                dist.barrier()
                dist.destroy_process_group()
                return 0
        if step % steps_per_epoch == 0:
            save_lora(run_dir, epoch, config, phases, rank)
    dist.barrier()
    if rank == 0:
        flood = float(fake.get("flood_before_end_mb", 0))  # a chatty end: megabytes of output, then the line
        line = "x" * 99 + "\n"
        for _ in range(int(flood * (1 << 20) / len(line))):
            sys.stdout.write(line)
        print("TRAINING COMPLETE!", flush=True)
    phases.reach("cleanup", leader=rank == world - 1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
