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
- ``sigterm@5:1``: rank 1 sends itself SIGTERM as step 5 begins (a preemption notice that
  reaches one rank, as on a real cluster).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

ENV = "MNEMOS_FAULTS"
KINDS = ("nonfinite", "die_in_save", "die_in_upload", "die_in_conversion", "sigterm")


@dataclass(frozen=True)
class Faults:
    points: frozenset[tuple[str, int, int | None]] = field(default_factory=frozenset)

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

    def sigterm(self, step: int, rank: int) -> None:
        if self.active("sigterm", step, rank):
            os.kill(os.getpid(), signal.SIGTERM)
