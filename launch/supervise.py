"""Run a rendered local, torchrun or DeepSpeed script as a child process: its output passes
through, the signals a scheduler sends reach it, and when the job fails the last line printed
is the first rank's own one-line cause, not torchrun's report of which child exited.

torchrun reports a failed child with a Python traceback of its own (``ChildFailedError``) and a
table of exit codes: that report says nothing the ranks' own lines and the cause do not, so it
is held back (`LauncherReport`), and shown with ``-v``. A rank's traceback (a bug) always
passes through.

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
_REPORT_FIELD = re.compile(r"^\s*(rank|host|exitcode|traceback)\s*:\s*(.+)$")
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


class LauncherReport:
    """Holds back torchrun's own traceback and failure table: `feed` returns the lines to show
    now. A traceback is held until its exception line says whose it is; torchrun's
    (``ChildFailedError``) is dropped with the table that follows it, between two rules of
    ``=``; any other is given back whole. Whatever is held at the end is given back."""

    MAX_HELD = 400  # a traceback longer than this is not torchrun's: give it back

    def __init__(self) -> None:
        self._held: list[str] = []
        self._rules_left = 0  # rules of "=" still to drop before the report ends
        self.dropped = 0
        # The first failed child as torchrun's table names it (rank, host, exit code, signal):
        # the cause to print when no rank could say one itself (a rank killed by a signal).
        self.failed_child: list[str] = []

    def feed(self, line: str) -> list[str]:
        text = line.rstrip("\n")
        if self._rules_left:
            self.dropped += 1
            found = _REPORT_FIELD.match(text)
            if found and found.group(1) not in {k.split(" :")[0] for k in self.failed_child}:
                self.failed_child.append(f"{found.group(1)} : {found.group(2).strip()}")
            if text.startswith("=====") and not text.strip("="):
                self._rules_left -= 1
            return []
        if not self._held:
            if "Traceback (most recent call last)" in text:
                self._held = [line]
                return []
            return [line]
        self._held.append(line)
        if "ChildFailedError" in text and not text.startswith((" ", "\t")):
            self.dropped += len(self._held)
            self._held, self._rules_left = [], 2
            return []
        ended = text and not text.startswith((" ", "\t", "Traceback"))
        if ended or len(self._held) > self.MAX_HELD:
            held, self._held = self._held, []
            return held
        return []

    def flush(self) -> list[str]:
        held, self._held = self._held, []
        return held


def supervise(cmd: Sequence[str], *, launcher_report: bool = False) -> int:
    """Run ``cmd`` to its end and return its exit code (128 + N when signal N ended it).
    ``launcher_report``: also show torchrun's own traceback and failure table."""
    child = subprocess.Popen(
        list(cmd), stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1
    )
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED}
    # Set after the child started, so that it does not inherit the disposition.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    cause = FirstCause()
    report = LauncherReport()
    try:
        assert child.stderr is not None
        for line in child.stderr:
            cause.observe(line)
            for shown in [line] if launcher_report else report.feed(line):
                sys.stderr.write(shown)
            sys.stderr.flush()
        for shown in report.flush():
            sys.stderr.write(shown)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGINT, previous_int)
    if code < 0:
        code = 128 - code
    if code not in (0, 75):  # 75: preempted, a checkpoint was saved; the job resumes later
        logger.error(
            "the job failed (exit code %d): %s%s",
            code,
            cause.cause
            or ", ".join(report.failed_child)
            or "no rank reported a cause; see the output above",
            " (torchrun's report of it: -v)" if report.dropped else "",
        )
    return code
