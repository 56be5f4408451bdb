"""A new global batch mid-epoch: the old streams' unread units, dealt out to the new streams.

Stream g of G reads a fixed range of every epoch, so positions saved with G streams mean
nothing to a loader with G' streams. When a run resumes with another global batch (and
``train.allow_new_global_batch``), the units the old streams had not read yet (the rest of the
epoch the slowest stream is in, and of any later epoch a faster stream had started) are listed
in (old epoch, old stream, planned order) and cut into G' contiguous ranges: new stream s reads
range s, then every later epoch in the normal G'-stream plan. So within those epochs no unit is
read twice and none is skipped; a unit an old stream had half read (contiguous order) is read
from the token it had reached.

`TransitionPlan` is that order as a `Plan`. Its epoch ``first_epoch`` is the transition; epoch
k > ``first_epoch`` is the G'-stream plan's epoch ``k + shift``, where ``shift`` counts the later
epochs the transition absorbed. It is rebuilt from the old positions, which the loader state
keeps (``"transition"``), so a resume during or after the transition continues the same order.

Not exact compared with an uninterrupted run: the data order itself (another G reads other
ranges), which Transformer-XL memory and document boundaries in the transition follow (every
transition range starts a document, as a resume at a unit boundary would).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

from pretrain.loader.order import Plan, Planned, ShardOpener, Unit
from pretrain.loader.shards import Sample
from pretrain.loader.stream import Position


@dataclass(frozen=True)
class Leftover:
    """Units ``[start, stop)`` of old stream ``stream`` in old epoch ``epoch``; the first one
    from token ``token`` on."""

    epoch: int
    stream: int
    start: int
    stop: int
    token: int


def leftovers(old: Plan, positions: dict[int, Position]) -> list[Leftover]:
    """The units the old streams had not read, from the slowest stream's epoch to the fastest's,
    in (epoch, old stream, planned) order."""
    first = min(p[0] for p in positions.values())
    last = max(p[0] for p in positions.values())
    out = []
    for epoch in range(first, last + 1):
        for g in sorted(positions):
            e, unit, token = positions[g]
            if e > epoch:
                continue  # this stream had finished the epoch
            start, token = (unit, token) if e == epoch else (0, 0)
            stop = old.stream_samples(epoch, g)
            if start < stop:
                out.append(Leftover(epoch, g, start, stop, token))
    return out


class TransitionPlan:
    """The new streams' order: the old streams' leftovers, then the new plan. See the module."""

    def __init__(self, old: Plan, new: Plan, positions: dict[int, Position]) -> None:
        self.old, self.new = old, new
        self.num_streams = new.num_streams
        self.window_len = new.window_len
        self.first_epoch = min(p[0] for p in positions.values())
        self.shift = max(p[0] for p in positions.values()) - self.first_epoch
        self.parts = leftovers(old, positions)
        self._offsets = [0]
        for part in self.parts:
            self._offsets.append(self._offsets[-1] + part.stop - part.start)
        self.total = self._offsets[-1]

    def _range(self, stream: int) -> tuple[int, int]:
        n, g = self.total, self.num_streams
        return stream * n // g, (stream + 1) * n // g

    def _later(self, epoch: int) -> int:
        return epoch + self.shift

    def stream_samples(self, epoch: int, stream: int) -> int:
        if epoch == self.first_epoch:
            lo, hi = self._range(stream)
            return hi - lo
        return self.new.stream_samples(self._later(epoch), stream)

    def _segments(self, stream: int, first: int) -> Sequence[tuple[int, Leftover, int, int]]:
        """(new planned index of the segment's first unit, its leftover, old start, old stop)
        for the part of ``stream``'s range from its ``first``-th unit on."""
        lo, hi = self._range(stream)
        lo += first
        out = []
        for k, part in enumerate(self.parts):
            a, b = max(lo, self._offsets[k]), min(hi, self._offsets[k + 1])
            if a < b:
                start = part.start + a - self._offsets[k]
                out.append((a - (lo - first), part, start, start + b - a))
        return out

    def read(
        self, epoch: int, stream: int, first: int, open_shard: ShardOpener
    ) -> Generator[Planned, None, None]:
        if epoch != self.first_epoch:
            yield from self.new.read(self._later(epoch), stream, first, open_shard)
            return
        for planned0, part, start, stop in self._segments(stream, first):
            units = self.old.read(part.epoch, part.stream, start, open_shard)
            with contextlib.closing(units) as planned_units:
                for planned, unit, sample in planned_units:
                    if planned >= stop:
                        break
                    if planned == part.start and part.token:
                        sample = _from_token(sample, part.token)
                    yield planned0 + planned - start, unit, sample

    def locate(self, epoch: int, stream: int, planned: int) -> Unit:
        if epoch != self.first_epoch:
            return self.new.locate(self._later(epoch), stream, planned)
        if not 0 <= planned < self.stream_samples(epoch, stream):
            raise IndexError(f"stream {stream} has no planned unit {planned} in epoch {epoch}")
        _, part, start, _ = self._segments(stream, planned)[0]
        return self.old.locate(part.epoch, part.stream, start)

    def continues(self, prev: Unit, cur: Unit, epochs: tuple[int, int] = (0, 0)) -> bool:
        if epochs[0] != epochs[1] and self.first_epoch in epochs:
            return False  # from the transition into the new plan: another text
        return self.new.continues(prev, cur, tuple(self._later(e) for e in epochs))  # type: ignore[arg-type]

    def window_bounds(self, epoch: int, unit: Unit) -> tuple[int, int]:
        return self.new.window_bounds(self._later(epoch), unit)


def _from_token(sample: Sample, token: int) -> Sample:
    """``sample`` without its first ``token`` tokens (an old stream had read them)."""
    return replace(
        sample,
        tokens=sample.tokens[token:],
        doc_starts=tuple(d - token for d in sample.doc_starts if d >= token),
    )
