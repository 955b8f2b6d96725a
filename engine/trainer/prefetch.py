"""Load the next batches in a background thread while the current step runs.

A training batch's host side (cache reads, per-sample noise and timesteps from their own seeded generators,
collating, pinning) needs no model and touches no global RNG, so a thread can make it ahead of time with the
same result. Reading safetensors files and torch's CPU ops release the GIL, so the thread overlaps the step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

X = TypeVar("X")
T = TypeVar("T")

_DONE = object()


class Prefetcher(Generic[X, T]):
    """`produce(item)` for each item in order, up to `depth` ahead in a daemon thread (depth 0: inline, when
    iterated). An exception in `produce` is raised where the iteration reaches its item. Use as a context
    manager: leaving it (a break, an error) stops the thread."""

    def __init__(self, items: Sequence[X], produce: Callable[[X], T], depth: int) -> None:
        self.items = items
        self.produce = produce
        self.depth = depth
        self._stop = threading.Event()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Prefetcher[X, T]:
        if self.depth > 0 and self.items:
            self._thread = threading.Thread(target=self._run, name="dpdeck-prefetch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for item in self.items:
            try:
                value: object = (True, self.produce(item))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                self._put((False, exc))
                return
            if not self._put(value):
                return
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        if self._thread is None:
            for item in self.items:
                yield self.produce(item)
            return
        while True:
            got = self._queue.get()
            if got is _DONE:
                return
            ok, value = cast(tuple[bool, object], got)
            if not ok:
                raise cast(BaseException, value)
            yield cast(T, value)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


__all__ = ["Prefetcher"]
