"""A tiny, real stand-in for diffusion-pipe's train.py, for the engine's tests.

Same flags (--deepspeed --config X.toml --master_port P --resume_from_checkpoint [NAME], --local_rank from the
launcher), same run-folder layout and console lines, real torch.distributed (gloo) rendezvous on the master
port. A `[fake]` table in the TOML injects failures: crash_at_step, hang_at_step, oom_at_step, sleep_s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import tomllib
import torch
import torch.distributed as dist


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deepspeed", action="store_true")
    parser.add_argument("--config", required=True)
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    args = parser.parse_args()
    os.environ["MASTER_PORT"] = str(args.master_port)  # diffusion-pipe overrides the launcher's port too
    cfg = tomllib.loads(Path(args.config).read_text())
    fake = cfg.get("fake", {})
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = dist.get_world_size()
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
    dist.barrier()
    steps_per_epoch = int(fake.get("steps_per_epoch", 4))
    epochs = int(cfg.get("epochs", 1))
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
        quit_now = torch.tensor(1 if rank == 0 and (run_dir / "save_quit").exists() else 0)
        if quit_now.item():
            (run_dir / "save_quit").unlink()
        dist.all_reduce(quit_now)
        if quit_now.item() or step == total:
            if rank == 0:
                ckpt = run_dir / f"global_step{step}"
                ckpt.mkdir(exist_ok=True)
                (run_dir / "latest").write_text(f"global_step{step}")
            if quit_now.item():
                dist.barrier()
                dist.destroy_process_group()
                return 0
        if step % steps_per_epoch == 0 and rank == 0:
            save = run_dir / f"epoch{epoch}"
            print(f"Saving model to directory {save}", flush=True)
            save.mkdir(exist_ok=True)
            (save / "adapter_model.safetensors").write_bytes(b"fake")
    dist.barrier()
    if rank == 0:
        print("TRAINING COMPLETE!", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
