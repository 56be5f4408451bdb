"""Progress of long work, with the time left.

`Progress`: prepare's documents, tokens and input MB/s every few seconds, then a summary. Workers
send increments through a queue; one thread in the parent process logs them, so the output is
one readable line at a time whatever the number of workers.

`track`: any loop of known length (evaluation batches, export tensors). A bar (tqdm) where a
person watches a terminal; a log line every ``every_s`` seconds where output goes to a file or a
scheduler's log, since a bar there is one endless line of carriage returns.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def eta(elapsed_s: float, done: float, total: float) -> str:
    """Time left at the pace so far, as ``1h02m``, ``4m05s`` or ``12s``; ``?`` before any work."""
    if done <= 0 or total <= 0:
        return "?"
    left = max(0.0, elapsed_s / done * (total - done))
    minutes, seconds = divmod(round(left), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    def __init__(self, label: str, total_units: int, every_s: float = 2.0) -> None:
        self.label, self.total_units, self.every_s = label, total_units, every_s
        self.units = 0
        self.documents = 0
        self.tokens = 0
        self.bytes_in = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, documents: int = 0, tokens: int = 0, bytes_in: int = 0, units: int = 0) -> None:
        with self._lock:
            self.documents += documents
            self.tokens += tokens
            self.bytes_in += bytes_in
            self.units += units
            now = time.monotonic()
            if now - self._last >= self.every_s or units:
                self._last = now
                logger.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"[{self.label}] units {self.units}/{self.total_units} | "
            f"documents {self.documents:,} | "
            f"tokens {self.tokens:,} | {self.bytes_in / 1e6:.1f} MB in, "
            f"{self.bytes_in / 1e6 / elapsed:.2f} MB/s | {elapsed:.1f}s"
            + (
                f" | ETA {eta(elapsed, self.units, self.total_units)}"
                if self.units < self.total_units
                else ""
            )
        )

    def drain(self, q: Any, stop: threading.Event) -> threading.Thread:
        """Start a thread applying increments ``(documents, tokens, bytes_in)`` from ``q``."""

        def run() -> None:
            while not stop.is_set() or not q.empty():
                try:
                    item = q.get(timeout=0.2)
                except (queue.Empty, EOFError, OSError):
                    continue
                self.add(*item)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def track(
    items: Iterable[T],
    total: int | None,
    label: str,
    *,
    every_s: float = 10.0,
    enabled: bool = True,
    unit: str = "it",
) -> Iterator[T]:
    """Yield ``items``, showing progress towards ``total`` (a bar on a terminal, else log lines).

    ``enabled=False`` (ranks other than 0, ``-q``) yields them silently."""
    if not enabled or not logger.isEnabledFor(logging.INFO):
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=label, unit=unit, leave=False)
        return
    started = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            left = f" | ETA {eta(now - started, done, total)}" if total else ""
            logger.info("[%s] %d%s %s | %.1fs%s", label, done, of, unit, now - started, left)
