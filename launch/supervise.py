"""Run a rendered local, torchrun or DeepSpeed script as a child process: its output passes
through, the signals a scheduler sends reach it, and when the job fails the last line printed
is the first rank's own one-line cause, not torchrun's report of which child exited.

The script ``exec``s its launcher, so the child is torchrun (or deepspeed) itself.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# A scheduler's notices (SLURM preemption is SIGUSR1 or SIGTERM) go to the launcher's process
# only: pass them on. SIGINT is left out: a terminal's Ctrl-C reaches the child's process group
# already, and torchrun takes a second SIGINT as a reason to kill its ranks at once.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT)

_ONE_LINE_ERROR = re.compile(r"^(?:\[[^\]]*\]:?\s*)?error: (?P<cause>.+)$")
_LOGGED_ERROR = re.compile(r" (?:ERROR|CRITICAL) (?P<cause>\[rank \d+\] .+)$")
_EXCEPTION = re.compile(r"^(?:\[[^\]]*\]:?\s*)?(?P<cause>[A-Za-z_][\w.]*(?:Error|Exception)\b.*)$")
# torchrun's own report of the failed children: the effect, not the cause.
_LAUNCHER_NOISE = ("ChildFailedError", "torch.distributed.elastic")


class FirstCause:
    """Watches the job's stderr for the first thing a rank said went wrong: a ``error: ...``
    line or an ERROR log line of ours, else the exception line that ends a traceback."""

    def __init__(self) -> None:
        self.cause: str | None = None
        self._in_traceback = False

    def observe(self, line: str) -> None:
        if self.cause is not None:
            return
        text = line.rstrip("\n")
        if "Traceback (most recent call last)" in text:
            self._in_traceback = True
            return
        for pattern in (_ONE_LINE_ERROR, _LOGGED_ERROR):
            found = pattern.search(text)
            if found:
                self.cause = found.group("cause")
                return
        if self._in_traceback and not text.startswith((" ", "\t")):
            found = _EXCEPTION.match(text)
            if found and not any(noise in text for noise in _LAUNCHER_NOISE):
                self.cause = found.group("cause")
            self._in_traceback = False


def supervise(cmd: Sequence[str]) -> int:
    """Run ``cmd`` to its end and return its exit code (128 + N when signal N ended it)."""
    child = subprocess.Popen(
        list(cmd), stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1
    )
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED}
    # Set after the child started, so that it does not inherit the disposition.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    cause = FirstCause()
    try:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            cause.observe(line)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGINT, previous_int)
    if code < 0:
        code = 128 - code
    if code not in (0, 75):  # 75: preempted, a checkpoint was saved; the job resumes later
        logger.error(
            "the job failed (exit code %d): %s",
            code,
            cause.cause or "no rank reported a cause; see the output above",
        )
    return code
