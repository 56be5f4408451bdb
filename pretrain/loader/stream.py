"""One stream: an endless (or, for validation, one-pass) contiguous token sequence read through
the samples its `StreamPlan` assigns it, with a position that a checkpoint can restore exactly.

A position is three integers, ``(epoch, sample, token)``: the next token to hand out is token
``token`` of the stream's ``sample``-th planned sample of ``epoch``. Positions are in *planned*
coordinates, so they do not depend on what was read ahead, and after a skipped bad shard the
position still points at the first lost sample: resuming there meets the same bad bytes, skips
them the same way and marks the same document start.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from pretrain.loader.order import StreamPlan
from pretrain.loader.shards import Sample, ShardError

Position = tuple[int, int, int]  # (epoch, planned sample, token within it)
ShardOpener = Callable[
    [int, int], Generator[Sample, None, None]
]  # (shard index, first sample) -> samples


@dataclass
class _Entry:
    epoch: int
    planned: int
    tokens: np.ndarray  # (chunk_len,) int64
    doc_start: np.ndarray  # (chunk_len,) bool


class TokenStream:
    """Hands out tokens of stream ``stream`` of ``plan`` from ``position`` on."""

    def __init__(
        self,
        plan: StreamPlan,
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
        self._cursor = position[2]  # token offset into _buffer[0]
        self._buffered = 0  # tokens available from the cursor on
        self._samples = self._iter_samples(position[0], position[1])

    def close(self) -> None:
        self._samples.close()  # closes the open shard file

    def _iter_samples(
        self, epoch: int, first: int
    ) -> Generator[tuple[int, int, int, Sample], None, None]:
        """(epoch, planned index, shard, sample) from planned sample ``first`` of ``epoch`` on."""
        while True:
            found = 0
            offset = 0
            for piece in self.plan.pieces(epoch, self.stream):
                length = piece.stop - piece.start
                if first >= offset + length:
                    offset += length
                    continue
                start = piece.start + max(0, first - offset)
                with contextlib.closing(self._open_shard(piece.shard, start)) as samples:
                    for sample in samples:
                        if sample.index >= piece.stop:
                            break
                        found += 1
                        yield epoch, offset + sample.index - piece.start, piece.shard, sample
                offset += length
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
        """Append the next valid sample to the buffer; False when a one-pass stream is done."""
        prev = self._buffer[-1] if self._buffer else None
        try:
            epoch, planned, shard, sample = next(self._samples)
        except StopIteration:
            return False
        tokens = sample.tokens.astype(np.int64)
        doc_start = np.zeros(tokens.shape[0], dtype=bool)
        doc_start[list(sample.doc_starts)] = True
        # Expected: the planned successor of what came before (or the restored position).
        exp_epoch, exp_planned = (
            self._next_planned(prev.epoch, prev.planned) if prev is not None else self.position[:2]
        )
        skipped = (epoch, planned) != (exp_epoch, exp_planned)
        if skipped or self._starts_fresh(epoch, planned, shard, sample.index):
            doc_start[0] = True  # earlier tokens are not this text's context
        if not self._buffer and (epoch, planned) != self.position[:2]:
            self._cursor = 0  # the restored sample itself was lost to a bad shard
        self._buffer.append(_Entry(epoch, planned, tokens, doc_start))
        self._buffered += tokens.shape[0] - (self._cursor if len(self._buffer) == 1 else 0)
        return True

    def _starts_fresh(self, epoch: int, planned: int, shard: int, index: int) -> bool:
        """Whether the planned predecessor of this sample is not the text right before it."""
        if planned == 0 and epoch == 0:
            return True
        if planned > 0:
            prev_epoch, prev_planned = epoch, planned - 1
        else:
            prev_epoch = epoch - 1
            prev_planned = self.plan.stream_samples(prev_epoch, self.stream) - 1
        prev = self._locate(prev_epoch, prev_planned)
        return not self.plan.is_continuation(prev, (shard, index))

    def _locate(self, epoch: int, planned: int) -> tuple[int, int]:
        """(shard, sample index) of a planned sample."""
        offset = 0
        for piece in self.plan.pieces(epoch, self.stream):
            length = piece.stop - piece.start
            if planned < offset + length:
                return piece.shard, piece.start + planned - offset
            offset += length
        raise IndexError(f"stream {self.stream} has no planned sample {planned} in epoch {epoch}")

    def take(self, n: int, advance: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` tokens and their document-start flags, then move ``advance`` <= n on.

        A one-pass stream near its end returns fewer than ``n`` (possibly none).
        """
        while self._buffered < n and self._load():
            pass
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
