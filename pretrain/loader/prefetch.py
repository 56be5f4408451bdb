"""Produce items in a background thread into a bounded buffer.

Reading and collating release the GIL for most of their time (file and socket I/O, numpy copies,
torch kernels), so one thread keeps the training step from waiting on I/O without the cost of a
worker process. The buffer is bounded: the producer runs at most ``depth`` items ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Calls ``produce()`` repeatedly in a daemon thread; `get()` returns results in order.

    An exception in ``produce`` is re-raised by the `get()` that would have returned its item.
    """

    def __init__(self, produce: Callable[[], T], depth: int, name: str = "loader-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._produce = produce
        self._queue: queue.Queue[T | _Failure] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item: T | _Failure = self._produce()
            except BaseException as exc:  # handed to the consumer, which decides
                item = _Failure(exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def get(self) -> T:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread; items read ahead are dropped (the state never counted them)."""
        self._stop.set()
        self._thread.join(timeout=30)
