"""What bad input a run skipped, said at its end, and the check that fails a run that lost too
much of its input.

Readers count each skip by reason with the input bytes it dropped (`UnitReader.skipped`,
``skipped_bytes``, ``input_bytes``); unit markers carry those counters. A run then fails, with
one line naming the files that lost most, when more than ``source.max_skipped_fraction`` of
the input bytes was skipped, or when no document at all is left (every input empty or bad).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.readers import BadInputError

logger = logging.getLogger(__name__)

SHOWN_FILES = 3  # files named in a failure, those that lost most first


class TooMuchSkippedError(BadInputError):
    """More of the input was skipped as bad than the recipe accepts, or all of it."""


@dataclass
class SkipSummary:
    input_bytes: int = 0
    documents: int = 0  # documents read (kept, before deduplication)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_bytes: Counter[str] = field(default_factory=Counter)
    # path -> [input bytes, skipped bytes], and its skips by reason: to name the worst files.
    files: dict[str, list[int]] = field(default_factory=dict)
    file_reasons: dict[str, Counter[str]] = field(default_factory=dict)

    def add(
        self,
        path: str,
        input_bytes: int,
        documents: int,
        skipped: Mapping[str, int],
        skipped_bytes: Mapping[str, int],
    ) -> None:
        self.input_bytes += input_bytes
        self.documents += documents
        self.skipped.update(skipped)
        self.skipped_bytes.update(skipped_bytes)
        totals = self.files.setdefault(path, [0, 0])
        totals[0] += input_bytes
        totals[1] += sum(skipped_bytes.values())
        self.file_reasons.setdefault(path, Counter()).update(skipped)

    @classmethod
    def from_markers(cls, markers: Iterable[Mapping[str, Any]]) -> SkipSummary:
        summary = cls()
        for marker in markers:
            counters = marker["counters"]
            summary.add(
                marker["source"]["path"],
                # Markers written before input_bytes was counted: the stored bytes read.
                counters.get("input_bytes", counters.get("bytes_read", 0)),
                counters.get("documents_read", 0),
                counters.get("skipped", {}),
                counters.get("skipped_bytes", {}),
            )
        return summary

    @property
    def total_skipped_bytes(self) -> int:
        return sum(self.skipped_bytes.values())

    @property
    def fraction(self) -> float:
        return self.total_skipped_bytes / self.input_bytes if self.input_bytes else 0.0

    def describe(self) -> str:
        """One line: the skips by reason (count, bytes) and the share of the input lost."""
        if not self.skipped:
            return f"bad input skipped: none ({self.input_bytes:,} input bytes)"
        reasons = ", ".join(
            f"{reason} {count:,} ({self.skipped_bytes.get(reason, 0):,} B)"
            for reason, count in sorted(self.skipped.items())
        )
        return (
            f"bad input skipped: {reasons}; {self.total_skipped_bytes:,} of "
            f"{self.input_bytes:,} input bytes ({self.fraction:.2%})"
        )

    def log(self, label: str) -> None:
        """The summary line through `logging`: a warning when anything was skipped."""
        level = logging.WARNING if self.skipped else logging.INFO
        logger.log(level, "[%s] %s", label, self.describe())

    def _worst_files(self) -> str:
        worst = sorted(
            (p for p, (_, lost) in self.files.items() if lost or self.file_reasons[p]),
            key=lambda p: (-self.files[p][1], p),
        )
        shown = []
        for path in worst[:SHOWN_FILES]:
            size, lost = self.files[path]
            reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(self.file_reasons[path].items()))
            share = f"{lost / size:.0%} of it" if size else "empty"
            shown.append(f"{path} ({share}: {reasons})")
        more = len(worst) - len(shown)
        return "; ".join(shown) + (f"; and {more} more file(s)" if more > 0 else "")

    def check(self, max_fraction: float) -> None:
        """Raise `TooMuchSkippedError` (one line, naming the worst files) when nothing usable
        is left or more than ``max_fraction`` of the input bytes was skipped."""
        if self.documents == 0:
            if self.input_bytes == 0 and not self.total_skipped_bytes:
                files = ", ".join(sorted(self.files)[:SHOWN_FILES])
                raise TooMuchSkippedError(f"{files}: the input is empty (0 bytes): nothing to use")
            raise TooMuchSkippedError(
                f"{self._worst_files()}: no usable document, every one was skipped as bad "
                "input; fix or leave out those inputs"
            )
        if self.fraction > max_fraction:
            raise TooMuchSkippedError(
                f"{self._worst_files()}: {self.fraction:.2%} of the input bytes were skipped as "
                f"bad input, more than source.max_skipped_fraction={max_fraction:g}; fix or "
                "leave out those inputs, or rerun with a higher source.max_skipped_fraction"
            )
