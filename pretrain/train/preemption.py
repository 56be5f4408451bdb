"""Preemption: SIGTERM or SIGUSR1 asks for a checkpoint and a clean exit at the next step.

The handler only sets a flag; the trainer folds it into the per-step all-reduce, so every rank
learns of a signal that reached any one of them at the same step boundary, saves together, and
exits with `PREEMPTED_EXIT_CODE`. Launchers and SLURM scripts treat that code as "requeue me".
"""

from __future__ import annotations

import signal
from types import FrameType

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is committed; exits with the distinct code."""

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(PREEMPTED_EXIT_CODE)
