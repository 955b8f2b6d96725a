"""Scalars from a run folder's TensorBoard event files: epoch loss and every eval set's loss.

diffusion-pipe (upstream tdrussell/diffusion-pipe at commit 8f83dbf, train.py) writes them with
`SummaryWriter(log_dir=run_dir)` on rank 0 and prints none of them on the console:
- `train/loss` per `logging_steps` (x: step, or examples with `x_axis_examples`), `train/grad_norm`;
- `train/epoch_loss` once per finished epoch (x: the epoch);
- per eval set NAME (`[[eval_datasets]] name`, else `eval0`, `eval1`, ...): `NAME/loss` (the mean over the
  timestep quantiles) and `NAME/loss_quantile_0.10` ... `_0.90` (x: step), plus `eval/eval_time_sec`.

Event files are TFRecords (u64 length, u32 crc, an `Event` proto, u32 crc). A reader keeps each file's byte
offset and parses only what was appended since its last read, stopping at a record still being written.
The protos come from the `tensorboard` package (the train extra), imported lazily: where it is absent the
reader returns nothing and says why in its `note` (the CLI prints it once, the Run screen shows it), so the
deck and CLI work without it (Python 3.10, no extras).
"""

from __future__ import annotations

import contextlib
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENT_GLOB = "events.out.tfevents.*"
EPOCH_LOSS = "train/epoch_loss"
TRAIN_LOSS = "train/loss"
EVAL_SUFFIX = "/loss"
NOT_EVAL = ("train",)  # `train/loss` is the step loss (a set named "eval" is fine: eval/eval_time_sec is no loss)
MAX_RECORD = 64 << 20  # a length beyond this is a damaged file, not an event
READ_CHUNK = 8 << 20  # bytes read per file and call: a huge backlog is caught up over several reads
MISSING = "tensorboard is not installed (pip install 'dpdeck[train]'): epoch and eval losses are not shown"
_DTYPE_FORMATS = {1: "<f", 2: "<d"}  # tensorflow DataType: DT_FLOAT, DT_DOUBLE


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    wall_time: float


def _event_class() -> Any:
    """tensorboard's Event proto class, or None when the package is absent (the reader's note says so)."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        return None
    return Event


def _tensor_value(tensor: Any) -> float | None:
    """A scalar written as a tensor (tensorboard's new-style summaries) as a float."""
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    fmt = _DTYPE_FORMATS.get(tensor.dtype)
    if fmt and len(tensor.tensor_content) == struct.calcsize(fmt):
        return float(struct.unpack(fmt, tensor.tensor_content)[0])
    return None


def _scalars(event: Any) -> list[Scalar]:
    if not event.HasField("summary"):
        return []
    out = []
    for value in event.summary.value:
        kind = value.WhichOneof("value")
        number = float(value.simple_value) if kind == "simple_value" else (
            _tensor_value(value.tensor) if kind == "tensor" else None)
        if number is not None:
            out.append(Scalar(value.tag, int(event.step), number, float(event.wall_time)))
    return out


def _records(data: bytes) -> tuple[list[bytes], int]:
    """Whole records in `data` and how many bytes they took; a partial last record waits for the next read."""
    found: list[bytes] = []
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        if length > MAX_RECORD:
            raise ValueError(f"record length {length} at byte {pos}")
        end = pos + 12 + length + 4
        if end > len(data):
            break
        found.append(data[pos + 12:pos + 12 + length])
        pos = end
    return found, pos


@dataclass
class TbReader:
    """Incremental reader of one run folder's event files (a new file, e.g. after a resume, joins in)."""

    run_dir: Path
    offsets: dict[str, int] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    note: str | None = None

    def read_new(self) -> list[Scalar]:
        """The scalars appended since the last call, oldest file first."""
        event_cls = _event_class()
        if event_cls is None:
            self.note = MISSING
            return []
        out: list[Scalar] = []
        for path in self._files():
            key = str(path)
            if key in self.broken:
                continue
            start = self.offsets.get(key, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(READ_CHUNK)
                    records, used = _records(data)
                    if not records and len(data) >= 12:  # one record longer than a chunk (a histogram)
                        data += fh.read(struct.unpack_from("<Q", data)[0] + 16 - len(data))
                        records, used = _records(data)
            except (OSError, ValueError) as exc:
                self.broken.add(key)
                self.note = f"{path.name}: unreadable ({exc}); its later events are not shown"
                continue
            self.offsets[key] = start + used
            for raw in records:
                event = event_cls()
                try:
                    event.ParseFromString(raw)
                except Exception:  # a damaged record (protobuf's DecodeError): skip it, keep the rest
                    continue
                out += _scalars(event)
        return out

    def _files(self) -> list[Path]:
        found: list[tuple[float, str, Path]] = []
        with contextlib.suppress(OSError):
            for path in self.run_dir.glob(EVENT_GLOB):
                with contextlib.suppress(OSError):
                    st = path.lstat()
                    if stat.S_ISREG(st.st_mode):  # never a FIFO or link planted there
                        found.append((st.st_mtime, path.name, path))
        return [p for _, _, p in sorted(found)]


@dataclass
class RunMetrics:
    """What the deck shows of a run's events: epoch loss per epoch and each eval set's loss per step."""

    epoch_loss: dict[int, float] = field(default_factory=dict)
    evals: dict[str, dict[int, float]] = field(default_factory=dict)
    train_loss_points: int = 0
    note: str | None = None

    def add(self, scalars: list[Scalar]) -> None:
        for s in scalars:
            if s.tag == EPOCH_LOSS:
                self.epoch_loss[s.step] = s.value  # a resumed run re-logs an epoch: the latest value wins
            elif s.tag == TRAIN_LOSS:
                self.train_loss_points += 1
            elif s.tag.endswith(EVAL_SUFFIX) and s.tag.count("/") == 1:
                name = s.tag[: -len(EVAL_SUFFIX)]
                if name not in NOT_EVAL:
                    self.evals.setdefault(name, {})[s.step] = s.value

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: lists sorted by x (`dpdeck show --json` key `tensorboard`)."""
        return {
            "epoch_loss": [{"epoch": e, "loss": v} for e, v in sorted(self.epoch_loss.items())],
            "evals": {
                name: [{"step": s, "loss": v} for s, v in sorted(points.items())]
                for name, points in sorted(self.evals.items())
            },
            "note": self.note,
        }


@dataclass
class RunWatcher:
    """A reader plus what it has read so far, for callers that poll one run (the Run screen)."""

    reader: TbReader
    metrics: RunMetrics = field(default_factory=RunMetrics)

    def poll(self) -> RunMetrics:
        self.metrics.add(self.reader.read_new())
        self.metrics.note = self.reader.note
        return self.metrics


def read_run(run_dir: Path) -> RunMetrics:
    """Every metric in a run folder's events so far (one-shot: `dpdeck show`)."""
    return RunWatcher(TbReader(run_dir)).poll()
