"""One stream: an endless (or, for validation, one-pass) token sequence read through the units
its plan assigns it, with a position that a checkpoint can restore exactly.

A position is three integers, ``(epoch, unit, token)``: the next token to hand out is token
``token`` of the stream's ``unit``-th planned unit of ``epoch`` (a unit is a sample in contiguous
order, a window of a sample in shuffled order, see `pretrain.loader.order`). Positions are in
*planned* coordinates, so they do not depend on what was read ahead, and after a skipped bad
shard the position still points at the first lost unit: resuming there meets the same bad bytes,
skips them the same way and marks the same document start.

With units that are whole samples (``plan.window_len`` None) the stream's text is the units'
tokens concatenated and segments are cut from it wherever they fall. With windows, each `take`
is exactly one window (the position's token is then always 0).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from pretrain.loader.order import Plan, Planned, ShardOpener, Unit
from pretrain.loader.shards import ShardError

Position = tuple[int, int, int]  # (epoch, planned unit, token within it)

__all__ = ["Position", "ShardOpener", "TokenStream"]


@dataclass
class _Entry:
    epoch: int
    planned: int
    unit: Unit
    tokens: np.ndarray  # (chunk_len,): int64 for whole-sample units, as stored for windows
    doc_start: np.ndarray  # (chunk_len,) bool  (2 x chunk_len: a shifted window's two samples)
    # The token where this unit's text stops continuing what the stream handed out before
    # (its start or its window's start), -1 when it continues it.
    break_at: int


class TokenStream:
    """Hands out tokens of stream ``stream`` of ``plan`` from ``position`` on."""

    def __init__(
        self,
        plan: Plan,
        stream: int,
        position: Position,
        open_shard: ShardOpener,
        *,
        cycle: bool = True,
    ) -> None:
        self.plan = plan
        self.stream = stream
        self.position: Position = position
        self._open_shard = open_shard
        self._cycle = cycle
        self._buffer: deque[_Entry] = deque()
        self._last: _Entry | None = None  # the unit loaded last
        self._cursor = position[2]  # token offset into _buffer[0]
        self._buffered = 0  # tokens available from the cursor on
        self._samples = self._iter_samples(position[0], position[1])
        # Whether the tokens the last `take` returned start where the stream's text breaks
        # (they do not continue the tokens handed out before them; see `take`).
        self.last_take_breaks = False

    def close(self) -> None:
        self._samples.close()  # closes the open shard file

    def _iter_samples(self, epoch: int, first: int) -> Generator[tuple[int, Planned], None, None]:
        """(epoch, (planned index, unit, sample)) from planned unit ``first`` of ``epoch`` on."""
        while True:
            found = 0
            items = self.plan.read(epoch, self.stream, first, self._open_shard)
            with contextlib.closing(items) as planned:
                for item in planned:
                    found += 1
                    yield epoch, item
            if not self._cycle:
                return
            if found == 0 and first == 0:
                raise ShardError(
                    f"stream {self.stream} read no valid sample in all of epoch {epoch}: "
                    "every shard it was given is bad"
                )
            epoch, first = epoch + 1, 0

    def _next_planned(self, epoch: int, planned: int) -> tuple[int, int]:
        if planned + 1 < self.plan.stream_samples(epoch, self.stream):
            return epoch, planned + 1
        return epoch + 1, 0

    def _load(self) -> bool:
        """Append the next valid unit to the buffer; False when a one-pass stream is done."""
        prev = self._last
        try:
            epoch, (planned, unit, sample) = next(self._samples)
        except StopIteration:
            return False
        window_len = self.plan.window_len
        tokens = sample.tokens if window_len else sample.tokens.astype(np.int64)
        doc_start = np.zeros(tokens.shape[0], dtype=bool)
        doc_start[list(sample.doc_starts)] = True
        # Expected: the planned successor of what came before (or the restored position).
        exp_epoch, exp_planned = (
            self._next_planned(prev.epoch, prev.planned) if prev is not None else self.position[:2]
        )
        skipped = (epoch, planned) != (exp_epoch, exp_planned)
        break_at = -1
        if skipped or not self._continues(prev, epoch, planned, unit):
            # earlier tokens are not this text's context
            break_at = self.plan.window_bounds(epoch, unit)[0] if window_len else 0
            doc_start[break_at] = True
        if not self._buffer and (epoch, planned) != self.position[:2]:
            self._cursor = 0  # the restored unit itself was lost to a bad shard
        entry = _Entry(epoch, planned, unit, tokens, doc_start, break_at)
        self._buffer.append(entry)
        self._last = entry
        self._buffered += tokens.shape[0] - (self._cursor if len(self._buffer) == 1 else 0)
        return True

    def _continues(self, prev: _Entry | None, epoch: int, planned: int, unit: Unit) -> bool:
        """Whether this unit is the text right after its planned predecessor (which is ``prev``
        when nothing was skipped; located in the plan after a restore)."""
        if prev is not None:
            return self.plan.continues(prev.unit, unit, (prev.epoch, epoch))
        if planned == 0 and epoch == 0:
            return False
        if planned > 0:
            prev_epoch, prev_planned = epoch, planned - 1
        else:
            prev_epoch = epoch - 1
            prev_planned = self.plan.stream_samples(prev_epoch, self.stream) - 1
        before = self.plan.locate(prev_epoch, self.stream, prev_planned)
        return self.plan.continues(before, unit, (prev_epoch, epoch))

    def take(self, n: int, advance: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` tokens and their document-start flags, then move ``advance`` <= n on.

        A one-pass stream near its end returns fewer than ``n`` (possibly none). With windows
        (``plan.window_len`` set, equal to ``advance``) it is the next window's tokens, up to
        ``n`` of them from the window's start, never past the window's end plus the lookahead
        ``n - advance`` (fewer where the text read with the unit ends: `Plan.window_bounds`).

        Sets `last_take_breaks`: whether the first token returned is a break in the stream's
        text (its first token, a jump to a non-consecutive unit or epoch, a skipped bad shard,
        in shuffled order almost every window), where a model's memory of what came before
        must be dropped. A document start inside continuous text is not a break.
        """
        if self.plan.window_len:
            return self._take_window(n, self.plan.window_len)
        while self._buffered < n and self._load():
            pass
        self.last_take_breaks = bool(self._buffer) and self._buffer[0].break_at == self._cursor
        tokens, starts = [], []
        need, cursor = n, self._cursor
        for entry in self._buffer:
            if need == 0:
                break
            piece = slice(cursor, min(cursor + need, entry.tokens.shape[0]))
            tokens.append(entry.tokens[piece])
            starts.append(entry.doc_start[piece])
            need -= piece.stop - piece.start
            cursor = 0
        self._advance(min(advance, self._buffered))
        if not tokens:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        return np.concatenate(tokens), np.concatenate(starts)

    def _take_window(self, n: int, window_len: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._buffer and not self._load():
            self.last_take_breaks = False
            return np.zeros(0, np.int64), np.zeros(0, bool)
        entry = self._buffer.popleft()
        self._buffered, self._cursor = 0, 0
        lo, hi = self.plan.window_bounds(entry.epoch, entry.unit)
        self.last_take_breaks = entry.break_at == lo
        stop = min(lo + n, hi + n - window_len)  # the window's text and its lookahead
        self.position = (*self._next_planned(entry.epoch, entry.planned), 0)
        return entry.tokens[lo:stop].astype(np.int64), entry.doc_start[lo:stop]

    def _advance(self, count: int) -> None:
        self._buffered -= count
        while count:
            entry = self._buffer[0]
            step = min(count, entry.tokens.shape[0] - self._cursor)
            self._cursor += step
            count -= step
            if self._cursor == entry.tokens.shape[0]:
                self._buffer.popleft()
                self._cursor = 0
                self.position = (*self._next_planned(entry.epoch, entry.planned), 0)
            else:
                self.position = (entry.epoch, entry.planned, self._cursor)
