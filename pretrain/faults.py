"""Fault injection for the test suite, read from ``MNEMOS_FAULTS`` (unset in real runs).

Failures that tests must provoke at an exact point of a real multi-process run cannot be timed
from outside: a loss that turns non-finite at step N on one rank, or a process dying in the
middle of writing checkpoint N. The value is a comma-separated list of ``kind@step[:rank]``:

- ``nonfinite@5:1``: rank 1's loss is NaN at step 5 (every rank when ``:rank`` is left out);
- ``die_in_save@4``: SIGKILL this process after DeepSpeed wrote step 4's shards, before commit;
- ``die_in_upload@4``: SIGKILL this process after it uploaded the first of its files of step 4
  to a ``checkpoint.dir`` on object storage, before the step is committed;
- ``die_in_conversion@4``: SIGKILL rank 0 after DeepSpeed converted step 4 to a universal
  checkpoint, before that conversion is sealed and renamed into place;
- ``read_error@3``: the 3rd read of a shard's file by a loader fails with an I/O error
  (``ConnectionResetError``), once; ``read_errors@3``: every read from the 3rd on fails (a
  store that went away);
- ``sigterm@5:1``: rank 1 sends itself SIGTERM as step 5 begins (a preemption notice that
  reaches one rank, as on a real cluster).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

ENV = "MNEMOS_FAULTS"
KINDS = (
    "nonfinite",
    "die_in_save",
    "die_in_upload",
    "die_in_conversion",
    "sigterm",
    "read_error",
    "read_errors",
)


@dataclass(frozen=True)
class Faults:
    points: frozenset[tuple[str, int, int | None]] = field(default_factory=frozenset)
    # Shard-file reads through this instance (one per loader), for read_error(s).
    reads: Iterator[int] = field(
        default_factory=lambda: itertools.count(1), compare=False, repr=False
    )

    @classmethod
    def from_env(cls) -> Faults:
        text = os.environ.get(ENV, "").strip()
        points = set()
        for item in filter(None, (part.strip() for part in text.split(","))):
            kind, _, where = item.partition("@")
            step, _, rank = where.partition(":")
            if kind not in KINDS or not step.isdigit() or (rank and not rank.isdigit()):
                raise ValueError(
                    f"{ENV}: cannot read {item!r}; expected kind@step[:rank], kind in {KINDS}"
                )
            points.add((kind, int(step), int(rank) if rank else None))
        return cls(frozenset(points))

    def active(self, kind: str, step: int, rank: int) -> bool:
        return (kind, step, None) in self.points or (kind, step, rank) in self.points

    def die_in_save(self, step: int, rank: int) -> None:
        if self.active("die_in_save", step, rank):
            os.kill(os.getpid(), signal.SIGKILL)

    def die_in_upload(self, step: int, rank: int) -> None:
        if self.active("die_in_upload", step, rank):
            os.kill(os.getpid(), signal.SIGKILL)

    def die_in_conversion(self, step: int) -> None:
        if self.active("die_in_conversion", step, 0):
            os.kill(os.getpid(), signal.SIGKILL)

    def fail_read(self) -> None:
        """Count a shard-file read; fail it when ``read_error``/``read_errors`` say so."""
        if not self.points:
            return
        count = next(self.reads)
        once = any(k == "read_error" and s == count for k, s, _ in self.points)
        always = any(k == "read_errors" and count >= s for k, s, _ in self.points)
        if once or always:
            raise ConnectionResetError(f"injected read error ({ENV}, read {count})")

    def sigterm(self, step: int, rank: int) -> None:
        if self.active("sigterm", step, rank):
            os.kill(os.getpid(), signal.SIGTERM)
