"""A tiny, real stand-in for diffusion-pipe's train.py, for the engine's tests.

Same flags (--deepspeed --config X.toml --master_port P --resume_from_checkpoint [NAME], --local_rank from the
launcher), same run-folder layout, console lines and TensorBoard events as upstream tdrussell/diffusion-pipe
at commit 8f83dbf (train.py, utils/saver.py, and the DeepSpeed lines they trigger: see engine/jobs/progress.py),
with real torch.distributed (gloo) rendezvous on the master port. What it follows of upstream's loop:
epoch 1 starts silently, `Started new epoch: E` after the step that ends epoch E-1, `epochN` / `stepN`
saves named relative to the run folder, the `save` / `save_quit` signal files (checkpoint; `Manually
quitting` and exit 0), eval of every `[[eval_datasets]]` (before the first step, every eval_every_n_epochs /
eval_every_n_steps) into TensorBoard only, `train/loss` per logging_steps and `train/epoch_loss` per epoch,
W&B through `wandb.login(key=config['monitoring']['wandb_api_key'])` when enable_wandb is on.
One deliberate difference: the save_quit decision is rank 0's, shared by an all_reduce (upstream lets each
rank look at the file, which can split the ranks when the file appears between their looks).

A `[fake]` table in the TOML injects failures: crash_at_step, hang_at_step, oom_at_step, sleep_s,
steps_per_epoch, matmul (+ matmul_reps), gradient_release_lr (print the lr line as gradient_release does).

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
    import tomllib  # novermin (guarded: tomli below on 3.10)
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


DS_LOG = "[{t}] [INFO] [{where}] [Rank 0] {msg}"  # DeepSpeed's logger format (deepspeed/utils/logging.py)
QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # train.py TIMESTEP_QUANTILES_FOR_EVAL


def ds_log(where: str, msg: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(DS_LOG.format(t=stamp, where=where, msg=msg), flush=True)


def summary_writer(run_dir: Path) -> Any:
    """train.py's `SummaryWriter(log_dir=run_dir)` on rank 0; None where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir))


class Run:
    """The rank's view of one run: its folder, writer, W&B and the saver's two kinds of save."""

    def __init__(self, cfg: dict[str, Any], config: Path, run_dir: Path, phases: Phases, rank: int) -> None:
        self.cfg, self.config, self.run_dir, self.phases, self.rank = cfg, config, run_dir, phases, rank
        self.tb = summary_writer(run_dir) if rank == 0 else None
        self.wandb: Any = None
        monitoring = cfg.get("monitoring", {})
        if monitoring.get("enable_wandb", False) and rank == 0:
            import wandb  # upstream imports it at the top; the fake only when W&B is on

            wandb.login(key=monitoring["wandb_api_key"])
            wandb.init(project=monitoring["wandb_tracker_name"], name=monitoring["wandb_run_name"], config=cfg,
                       dir=str(run_dir))
            self.wandb = wandb

    def scalar(self, tag: str, value: float, x: int, axis: str = "step") -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, x)
        if self.wandb is not None:
            self.wandb.log({tag: value, axis: x})

    def save_model(self, name: str) -> None:
        """utils/saver.py save_adapter: partial state in NAME/tmp/, the adapter written, tmp/ removed."""
        save = self.run_dir / name
        tmp = save / "tmp"
        if self.rank == 0:
            print(f"Saving model to directory {name}", flush=True)
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "state_dict_0.bin").write_bytes(b"fake partial state")
        self.phases.reach("saving", leader=self.rank == 0)
        if self.rank == 0:
            (save / "adapter_model.safetensors").write_bytes(b"fake")
            shutil.copy(self.config, save / self.config.name)
            shutil.rmtree(tmp)

    def save_checkpoint(self, step: int) -> None:
        """DeepSpeed's save_checkpoint: global_stepN/ first, `latest` only once it is complete."""
        ckpt = self.run_dir / f"global_step{step}"
        if self.rank == 0:
            ckpt.mkdir(exist_ok=True)
            ds_log("engine.py:3540:_save_checkpoint", f"Saving model checkpoint: {ckpt / 'mp_rank_00_model_states.pt'}")
            (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"fake checkpoint")
            (ckpt / "client_state.txt").write_text(str(step))
        self.phases.reach("checkpoint", leader=self.rank == 0)
        if self.rank == 0:
            (self.run_dir / "latest").write_text(f"global_step{step}")

    def evaluate(self, x: int, w: torch.Tensor) -> None:
        evals = self.cfg.get("eval_datasets", [])
        if not evals:
            return
        if self.rank == 0:
            print("Running eval", flush=True)
        started = time.time()
        for i, entry in enumerate(evals):
            name = entry["name"] if isinstance(entry, dict) else f"eval{i}"
            losses = [float(((w.sum() - 1.0) ** 2).item()) * (1 + q) + i for q in QUANTILES]
            for q, loss in zip(QUANTILES, losses, strict=True):
                self.scalar(f"{name}/loss_quantile_{q:.2f}", loss, x)
            self.scalar(f"{name}/loss", sum(losses) / len(losses), x)
        self.scalar("eval/eval_time_sec", time.time() - started, x)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def signal_files(run_dir: Path, rank: int) -> tuple[bool, bool]:
    """utils/saver.py process_step: `save` saves a checkpoint, `save_quit` saves one and quits."""
    found = 0
    if rank == 0:
        if (run_dir / "save").is_file():
            found = 1
        elif (run_dir / "save_quit").is_file():
            found = 2
    flag = torch.tensor(found)
    dist.all_reduce(flag)
    if rank == 0 and flag.item():
        (run_dir / ("save" if flag.item() == 1 else "save_quit")).unlink()
    return flag.item() >= 1, flag.item() == 2


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
    resume = args.resume_from_checkpoint
    if resume is True:
        run_dir = sorted(out.glob("*"))[-1]  # train.py get_most_recent_run_dir
    elif isinstance(resume, str):
        run_dir = out / resume
    else:
        run_dir = out / datetime.now(timezone.utc).strftime("%Y%m%d_%H-%M-%S")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            shutil.copy(config, run_dir)
            shutil.copy(cfg["dataset"], run_dir)
            for entry in cfg.get("eval_datasets", []):
                shutil.copy(entry["config"] if isinstance(entry, dict) else entry, run_dir)
    dist.barrier()
    cache_latents(cfg, phases, rank)
    run = Run(cfg, config, run_dir, phases, rank)
    steps_per_epoch = int(fake.get("steps_per_epoch", 4))
    epochs = int(cfg.get("epochs", 1))
    pause_step = int(fake.get("pause_step", 2))
    batch = int(cfg.get("micro_batch_size_per_gpu", 1)) * int(cfg.get("gradient_accumulation_steps", 1)) * world
    if rank == 0:
        print(f"Global batch size = {batch}", flush=True)
    torch.manual_seed(0)
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    x = torch.ones(4)
    lr = float((cfg.get("optimizer") or {}).get("lr", 0.1))
    step, epoch = 1, 1
    if resume:
        saved = int((run_dir / "latest").read_text().strip().removeprefix("global_step"))
        step, epoch = saved + 1, saved // steps_per_epoch + 1  # the loader's epoch after `saved` steps
        if rank == 0:
            print(f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {step}", flush=True)
    elif cfg.get("eval_before_first_step", True):
        run.evaluate(0, w)
    epoch_loss, num_steps = 0.0, 0
    checkpointed = saved_model = False
    final_name = f"epoch{epoch}"
    while True:
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
            if fake.get("gradient_release_lr"):  # train.py's own _report_progress: the first group's lr, bare
                ds_log("train.py:668:_report_progress", f"step={step}, skipped=0, lr={lr}, mom=(0.9, 0.99)")
            else:
                ds_log("logging.py:128:log_dist", f"step={step}, skipped=0, lr=[{lr}], mom=[(0.9, 0.99)]")
            print(f"steps: {step} loss: {loss.item():.4f} iter time (s): {dt:.3f} samples/sec: {batch / dt:.3f}",
                  flush=True)
        if step == pause_step:
            phases.reach("training", leader=rank == world - 1)
        epoch_loss += loss.item()
        num_steps += 1
        # utils/saver.py process_epoch: the loader moved on after the epoch's last step.
        new_epoch: int | None = epoch
        checkpointed = saved_model = False
        if step % steps_per_epoch == 0:
            if "checkpoint_every_n_epochs" in cfg and epoch % cfg["checkpoint_every_n_epochs"] == 0:
                run.save_checkpoint(step)
                checkpointed = True
            if "save_every_n_epochs" in cfg and epoch % cfg["save_every_n_epochs"] == 0:
                run.save_model(f"epoch{epoch}")
                saved_model = True
            new_epoch = epoch + 1
            if new_epoch > epochs:
                new_epoch = None
            elif rank == 0:
                print(f"Started new epoch: {new_epoch}", flush=True)
        finished_epoch = new_epoch != epoch
        if step % int(cfg.get("logging_steps", 1)) == 0:
            run.scalar("train/loss", loss.item(), step)
        every_steps, every_epochs = cfg.get("eval_every_n_steps"), cfg.get("eval_every_n_epochs")
        if (every_steps and step % every_steps == 0) or (finished_epoch and every_epochs and epoch % every_epochs == 0):
            run.evaluate(step, w)
        if finished_epoch:
            run.scalar("train/epoch_loss", epoch_loss / num_steps, epoch, axis="epoch")
            epoch_loss, num_steps = 0.0, 0
            if new_epoch is None:
                final_name = f"epoch{epoch}"
                break
            epoch = new_epoch
        # utils/saver.py process_step
        manual_save, manual_quit = signal_files(run_dir, rank)
        if "save_every_n_steps" in cfg and step % cfg["save_every_n_steps"] == 0:
            run.save_model(f"step{step}")
            saved_model = True
        if manual_save:
            run.save_checkpoint(step)
            checkpointed = True
        if manual_quit:
            print("Manually quitting", flush=True)
            run.close()
            dist.barrier()
            dist.destroy_process_group()
            return 0  # sys.exit() upstream
        if "max_steps" in cfg and step >= cfg["max_steps"]:
            final_name = f"step{step}"
            break
        step += 1
    if not checkpointed:
        run.save_checkpoint(step)
    if not saved_model:
        run.save_model(final_name)
    run.close()
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
