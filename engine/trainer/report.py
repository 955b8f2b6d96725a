"""Rank-0 progress output: diffusion-pipe's step line, `[dpdeck] {json}` events, metrics.jsonl, TensorBoard,
and W&B when the package and a key from the secrets store are both present. The formats are a contract
(docs/CONTRACTS.md): the engine parses them for both backends.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

PREFIX = "[dpdeck] "


def emit(event: str, **fields: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **fields}), flush=True)


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class Reporter:
    def __init__(self, run_dir: Path, enabled: bool, monitoring: dict[str, Any], run_name: str) -> None:
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir))
        except ImportError:
            print("tensorboard is not installed; TensorBoard scalars are off", file=sys.stderr)
        if monitoring.get("enable_wandb"):
            self.wandb = _start_wandb(monitoring, run_name)

    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: int,
        total_epochs: int,
        loss: float,
        lr: float,
        grad_norm: float | None,
        iter_time: float,
        samples_per_s: float,
    ) -> None:
        if not self.enabled:
            return
        print(
            f"steps: {step} loss: {loss:.4f} iter time (s): {iter_time:.3f} samples/sec: {samples_per_s:.3f}",
            flush=True,
        )
        record = {
            "event": "progress",
            "step": step,
            "total_steps": total_steps,
            "epoch": epoch,
            "total_epochs": total_epochs,
            "loss": _clean(loss),
            "lr": _clean(lr),
            "grad_norm": _clean(grad_norm),
            "samples_per_s": _clean(samples_per_s),
        }
        print(PREFIX + json.dumps(record), flush=True)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**record, "t": time.time()}) + "\n")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            if grad_norm is not None and math.isfinite(grad_norm):
                self.tb.add_scalar("train/grad_norm", grad_norm, step)
            self.tb.add_scalar("train/samples_per_s", samples_per_s, step)
        if self.wandb is not None:
            self.wandb.log(
                {
                    "train/loss": loss,
                    "train/lr": lr,
                    "train/grad_norm": grad_norm,
                    "samples/s": samples_per_s,
                },
                step=step,
            )

    def eval(
        self,
        *,
        step: int,
        epoch: int,
        losses: dict[str, list[float]],
        quantiles: tuple[float, ...],
        seconds: float,
    ) -> None:
        """One `eval` event per eval set (mean loss and one per timestep quantile); TensorBoard tags as
        diffusion-pipe's train.py writes them, which engine/jobs/tb_events.py reads."""
        if not self.enabled:
            return
        for name, values in losses.items():
            mean = sum(values) / len(values)
            record = {
                "event": "eval",
                "name": name,
                "step": step,
                "epoch": epoch,
                "loss": _clean(mean),
                "quantile_losses": {f"{q:.2f}": _clean(v) for q, v in zip(quantiles, values, strict=True)},
            }
            print(PREFIX + json.dumps(record), flush=True)
            with self.metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({**record, "t": time.time()}) + "\n")
            if self.tb is not None:
                for q, v in zip(quantiles, values, strict=True):
                    self.tb.add_scalar(f"{name}/loss_quantile_{q:.2f}", v, step)
                self.tb.add_scalar(f"{name}/loss", mean, step)
            if self.wandb is not None:
                logged = {f"{name}/loss_quantile_{q:.2f}": v for q, v in zip(quantiles, values, strict=True)}
                self.wandb.log({**logged, f"{name}/loss": mean}, step=step)
        if self.tb is not None:
            self.tb.add_scalar("eval/eval_time_sec", seconds, step)
            self.tb.flush()

    def epoch_loss(self, epoch: int, loss: float) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_scalar("train/epoch_loss", loss, epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(monitoring: dict[str, Any], run_name: str) -> Any:
    try:
        import wandb
    except ImportError:
        print(
            "monitoring.enable_wandb: the wandb package is not installed; W&B logging is off", file=sys.stderr
        )
        return None
    key = None
    try:
        from profiles.secrets import get_secret

        key = get_secret("wandb_api_key")
    except Exception as exc:  # noqa: BLE001 - a broken secrets store must not stop training
        print(
            f"monitoring.enable_wandb: cannot read the secrets store ({exc.__class__.__name__})",
            file=sys.stderr,
        )
    if not key:
        print(
            "monitoring.enable_wandb: no W&B key in the secrets store (dpdeck secrets); W&B logging is off",
            file=sys.stderr,
        )
        return None
    wandb.login(key=key, relogin=True)
    return wandb.init(
        project=str(monitoring.get("wandb_tracker_name", "dpdeck")),
        name=str(monitoring.get("wandb_run_name", run_name)),
    )
