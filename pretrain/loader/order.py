"""Which samples each stream reads in each epoch: a pure function of
(dataset fingerprint, seed, epoch, stream, number of streams).

Each epoch lays the split's shards out in a seeded permutation, concatenates their samples into
one sequence of N samples and rotates it by a seeded offset. Stream g of G reads the contiguous
range ``[g*N//G, (g+1)*N//G)`` of that sequence, in order. So:

* the G ranges tile the epoch: every sample once, no overlap, no gap, whatever N, G or the
  number of shards (streams differ by at most one sample per epoch);
* with many shards a stream reads ~S/G whole shards in a row, like DESIGN's "shards g, g+G, ...";
  with fewer shards than streams (a small corpus, a single unit) streams share shards by range;
* inside a range the text is contiguous except where the range crosses from one shard to a
  shard that is not its successor in the same unit; `is_continuation` says where;
* the rotation moves every stream to a different part of the text each epoch even when the
  corpus is a single shard, which a permutation alone could not do.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pretrain.loader.manifest import ShardInfo


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator that depends on ``parts`` only (not on Python's per-process hash seed)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def seed_int(*parts: object) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed``, a pure function of ``parts``."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Piece:
    shard: int  # index into the split's shard list
    start: int  # first sample (within the shard)
    stop: int  # one past the last


class StreamPlan:
    """The per-epoch sample ranges of ``num_streams`` streams over ``shards``.

    ``shuffle=False`` keeps manifest order and no rotation (validation: the same every time).
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        *,
        fingerprint: str,
        seed: int,
        num_streams: int,
        shuffle: bool = True,
    ) -> None:
        self.shards = tuple(shards)
        self.fingerprint = fingerprint
        self.seed = seed
        self.num_streams = num_streams
        self.shuffle = shuffle
        self.total_samples = sum(s.samples for s in self.shards)
        self._epoch_layout = lru_cache(maxsize=4)(self._layout)

    def _layout(self, epoch: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(shard order, cumulative sample starts in that order, rotation) of ``epoch``."""
        n = len(self.shards)
        if self.shuffle:
            rng = seeded_rng("epoch-order", self.fingerprint, self.seed, epoch)
            order = tuple(int(i) for i in rng.permutation(n))
            rotation = int(rng.integers(self.total_samples)) if self.total_samples else 0
        else:
            order, rotation = tuple(range(n)), 0
        starts = [0]
        for i in order:
            starts.append(starts[-1] + self.shards[i].samples)
        return order, tuple(starts), rotation

    def stream_samples(self, epoch: int, stream: int) -> int:
        """How many samples ``stream`` reads in ``epoch`` (the same for every epoch)."""
        del epoch  # ranges have epoch-independent sizes; the argument documents intent
        n, g = self.total_samples, self.num_streams
        return (stream + 1) * n // g - stream * n // g

    def pieces(self, epoch: int, stream: int) -> list[Piece]:
        """The shard sample ranges ``stream`` reads in ``epoch``, in reading order."""
        order, starts, rotation = self._epoch_layout(epoch)
        n, g = self.total_samples, self.num_streams
        lo, hi = stream * n // g + rotation, (stream + 1) * n // g + rotation
        spans = [(lo, min(hi, n))] if lo < n else []
        if hi > n:  # the range wraps past the end of the rotated sequence
            spans.append((max(lo, n) - n, hi - n))
        out: list[Piece] = []
        for a, b in spans:
            k = bisect.bisect_right(starts, a) - 1
            while a < b:
                shard_end = starts[k + 1]
                stop = min(b, shard_end)
                if stop > a:
                    out.append(Piece(order[k], a - starts[k], stop - starts[k]))
                a = stop
                k += 1
        return out

    def is_continuation(self, prev: tuple[int, int], cur: tuple[int, int]) -> bool:
        """Whether sample ``cur`` (shard, index) is the text right after ``prev``."""
        (ps, pi), (cs, ci) = prev, cur
        if ps == cs:
            return ci == pi + 1
        a, b = self.shards[ps], self.shards[cs]
        return pi == a.samples - 1 and ci == 0 and a.unit == b.unit and b.seq == a.seq + 1
