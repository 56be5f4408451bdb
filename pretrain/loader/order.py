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

`ShuffledPlan` (models without memory) keeps those ranges and permutes, inside blocks of whole
shard pieces, the units a stream reads: ``seq_len`` windows of samples. See its docstring.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from pretrain.loader.manifest import ShardInfo
from pretrain.loader.shards import Sample

ShardOpener = Callable[
    [int, int], Generator[Sample, None, None]
]  # (shard index, first sample) -> samples
Unit = tuple[int, int, int]  # (shard, sample index within the shard, window within the sample)
Planned = tuple[int, Unit, Sample]  # (planned index in the epoch, unit, its sample)


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


class Plan(Protocol):
    """What a `TokenStream` needs from an order: the units each stream reads in each epoch.

    A unit is a whole sample (``window_len`` None: the stream's text is its units' tokens
    concatenated) or window ``w`` of a sample, tokens ``window_bounds(epoch, unit)`` (``[w *
    window_len, ...)`` unless windows are shifted): then every segment is exactly one unit
    (see `ShuffledPlan`).
    """

    num_streams: int
    window_len: int | None

    def stream_samples(self, epoch: int, stream: int) -> int:
        """How many units ``stream`` reads in ``epoch``."""
        ...

    def read(
        self, epoch: int, stream: int, first: int, open_shard: ShardOpener
    ) -> Generator[Planned, None, None]:
        """The units from planned unit ``first`` on, in planned order, skipping units whose
        sample was lost to a bad shard."""
        ...

    def locate(self, epoch: int, stream: int, planned: int) -> Unit:
        """The unit at planned index ``planned``."""
        ...

    def continues(self, prev: Unit, cur: Unit, epochs: tuple[int, int] = (0, 0)) -> bool:
        """Whether unit ``cur`` is the text right after unit ``prev``; ``epochs``: the epochs
        they were read in (where a window lies can depend on the epoch)."""
        ...

    def window_bounds(self, epoch: int, unit: Unit) -> tuple[int, int]:
        """Where a window unit's own text lies in the tokens `read` yields for it: ``[start,
        end)``; a reader may go on past ``end`` for a lookahead (the causal LM's last target)
        when those tokens are there. Only asked when ``window_len`` is set."""
        ...


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
        self.window_len: int | None = None  # units are whole samples, read in order
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

    def read(
        self, epoch: int, stream: int, first: int, open_shard: ShardOpener
    ) -> Generator[Planned, None, None]:
        """The stream's samples from planned sample ``first`` on, streamed shard by shard."""
        offset = 0
        for piece in self.pieces(epoch, stream):
            length = piece.stop - piece.start
            if first >= offset + length:
                offset += length
                continue
            start = piece.start + max(0, first - offset)
            with contextlib.closing(open_shard(piece.shard, start)) as samples:
                for sample in samples:
                    if sample.index >= piece.stop:
                        break
                    planned = offset + sample.index - piece.start
                    yield planned, (piece.shard, sample.index, 0), sample
            offset += length

    def locate(self, epoch: int, stream: int, planned: int) -> Unit:
        offset = 0
        for piece in self.pieces(epoch, stream):
            length = piece.stop - piece.start
            if planned < offset + length:
                return piece.shard, piece.start + planned - offset, 0
            offset += length
        raise IndexError(f"stream {stream} has no planned sample {planned} in epoch {epoch}")

    def continues(self, prev: Unit, cur: Unit, epochs: tuple[int, int] = (0, 0)) -> bool:
        return self.is_continuation(prev[:2], cur[:2])

    def window_bounds(self, epoch: int, unit: Unit) -> tuple[int, int]:
        raise TypeError("contiguous order reads whole samples, not windows")


@dataclass(frozen=True)
class Block:
    """Consecutive pieces of a stream's epoch range, read whole and then used in a permutation."""

    index: int  # within the stream's epoch
    first: int  # planned index of the block's first unit
    pieces: tuple[Piece, ...]
    offsets: tuple[int, ...]  # sample offset of each piece within the block
    samples: int


class ShuffledPlan:
    """Shuffled order for models without memory: a pure function of (fingerprint, seed, epoch,
    stream, G) and of the unit layout (``window_len``, ``block_samples``).

    * Which samples: stream g reads exactly the samples of its `StreamPlan` range (seeded shard
      permutation, rotation, ``[g*N//G, (g+1)*N//G)``), so every sample of an epoch is read by
      exactly one stream, as in contiguous order, and the world-size rules are the same.
    * Units: with ``window_len`` = T <= chunk_len a sample is cut into W = ceil(chunk_len / T)
      windows, window w = tokens ``[w*T, w*T + read)`` (causal LM reads T + 1: the extra token
      is the sample's own next token, so a window's targets are right; a sample's last window
      has one target fewer; shifted windows, below, start later). Each step, a row is exactly
      one window, so a row never reads the windows of one sample on consecutive steps unless
      the permutation puts them there. With T > chunk_len (``window_len`` None) units are
      whole samples, concatenated as in contiguous order.
    * Order: the range's pieces (whole shards, a partial one at either end) are grouped into
      consecutive blocks of at most ``block_samples`` samples (at least one piece each); the
      stream reads a block's pieces whole into memory, then hands out the block's units in a
      permutation seeded by (fingerprint, seed, epoch, stream, block). Shards are read
      sequentially, once per epoch, and memory is bounded by the block.
    * Shifted windows (``shift_windows``): every window of epoch e starts ``phase(e)`` tokens
      later, a seeded offset in ``[0, T)`` drawn afresh each epoch (below the last window's
      length when T does not divide chunk_len, so every window starts inside its own
      sample), so a second pass over the
      data reads other windows than the first (as random-offset sampling does) instead of
      repeating each one. A window that runs past its sample's end goes on into the next
      sample of the same shard (window W-1 of a sample ends where the next sample's window 0
      begins); at the end of a block's piece there is no next sample and the window is cut
      short, and the first ``phase(e)`` tokens of a piece's first sample are not read that
      epoch. Every other token is read exactly once per epoch, as without the shift.
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        *,
        fingerprint: str,
        seed: int,
        num_streams: int,
        chunk_len: int,
        window_len: int | None,
        block_samples: int,
        shift_windows: bool = False,
    ) -> None:
        if window_len is not None and not 0 < window_len <= chunk_len:
            raise ValueError(f"window_len {window_len} not in [1, chunk_len={chunk_len}]")
        self.ranges = StreamPlan(
            shards, fingerprint=fingerprint, seed=seed, num_streams=num_streams
        )
        self.shards = self.ranges.shards
        self.fingerprint, self.seed, self.num_streams = fingerprint, seed, num_streams
        self.chunk_len = chunk_len
        self.window_len = window_len
        self.windows = 1 if window_len is None else -(-chunk_len // window_len)
        self.block_samples = max(1, block_samples)
        self.shift_windows = shift_windows and window_len is not None
        self._blocks = lru_cache(maxsize=64)(self._make_blocks)
        self._permutation = lru_cache(maxsize=64)(self._make_permutation)
        self._phase = lru_cache(maxsize=4)(self._make_phase)

    @property
    def layout(self) -> list[int]:
        """What the unit layout depends on besides (fingerprint, seed, G), for the state
        (a third entry, 1, when windows are shifted; states from before the shift have two)."""
        return [self.window_len or 0, self.block_samples] + ([1] if self.shift_windows else [])

    def _make_phase(self, epoch: int) -> int:
        if not self.shift_windows or self.window_len is None:  # (None: for the type checker)
            return 0
        # Below the last window's length (T when T divides chunk_len), so that every window
        # starts inside its own sample.
        last_window = self.chunk_len - (self.windows - 1) * self.window_len
        rng = seeded_rng("window-shift", self.fingerprint, self.seed, epoch)
        return int(rng.integers(last_window))

    def phase(self, epoch: int) -> int:
        """How many tokens into its sample window 0 starts in ``epoch`` (0 unless shifted)."""
        return self._phase(epoch)

    def window_bounds(self, epoch: int, unit: Unit) -> tuple[int, int]:
        if self.window_len is None:
            raise TypeError("units are whole samples (seq_len > chunk_len), not windows")
        phase = self.phase(epoch)
        start = phase + unit[2] * self.window_len
        # The sample's text ends at chunk_len; shifted, its last window takes the next
        # sample's first ``phase`` tokens, up to where that sample's window 0 begins.
        return start, min(start + self.window_len, self.chunk_len + phase)

    def stream_samples(self, epoch: int, stream: int) -> int:
        return self.ranges.stream_samples(epoch, stream) * self.windows

    def _make_blocks(self, epoch: int, stream: int) -> tuple[Block, ...]:
        groups: list[list[Piece]] = [[]]
        size = 0
        for piece in self.ranges.pieces(epoch, stream):
            length = piece.stop - piece.start
            if groups[-1] and size + length > self.block_samples:
                groups.append([])
                size = 0
            groups[-1].append(piece)
            size += length
        blocks, first = [], 0
        for index, pieces in enumerate(groups):
            offsets = [0]
            for piece in pieces:
                offsets.append(offsets[-1] + piece.stop - piece.start)
            blocks.append(Block(index, first, tuple(pieces), tuple(offsets[:-1]), offsets[-1]))
            first += offsets[-1] * self.windows
        return tuple(blocks)

    def blocks(self, epoch: int, stream: int) -> tuple[Block, ...]:
        return self._blocks(epoch, stream)

    def _make_permutation(self, epoch: int, stream: int, block: int) -> np.ndarray:
        size = self.blocks(epoch, stream)[block].samples * self.windows
        rng = seeded_rng("block-order", self.fingerprint, self.seed, epoch, stream, block)
        return rng.permutation(size)

    def _unit(self, epoch: int, stream: int, block: Block, planned: int) -> Unit:
        j = int(self._permutation(epoch, stream, block.index)[planned - block.first])
        ordinal, window = divmod(j, self.windows)
        k = bisect.bisect_right(block.offsets, ordinal) - 1
        piece = block.pieces[k]
        return piece.shard, piece.start + ordinal - block.offsets[k], window

    def _block_of(self, epoch: int, stream: int, planned: int) -> int:
        firsts = [b.first for b in self.blocks(epoch, stream)]
        return bisect.bisect_right(firsts, planned) - 1

    def locate(self, epoch: int, stream: int, planned: int) -> Unit:
        if not 0 <= planned < self.stream_samples(epoch, stream):
            raise IndexError(f"stream {stream} has no planned unit {planned} in epoch {epoch}")
        blocks = self.blocks(epoch, stream)
        return self._unit(epoch, stream, blocks[self._block_of(epoch, stream, planned)], planned)

    def read(
        self, epoch: int, stream: int, first: int, open_shard: ShardOpener
    ) -> Generator[Planned, None, None]:
        blocks = self.blocks(epoch, stream)
        start = self._block_of(epoch, stream, first) if blocks else 0
        for block in blocks[start:]:
            loaded: dict[tuple[int, int], Sample] = {}
            for piece in block.pieces:  # whole pieces: a shard whose end is here is checked
                with contextlib.closing(open_shard(piece.shard, piece.start)) as samples:
                    for sample in samples:
                        if sample.index >= piece.stop:
                            break
                        loaded[piece.shard, sample.index] = sample
            stop = block.first + block.samples * self.windows
            for planned in range(max(first, block.first), stop):
                unit = self._unit(epoch, stream, block, planned)
                found = loaded.get(unit[:2])
                if found is None:  # lost to a bad shard (lenient mode)
                    continue
                if self.shift_windows:
                    found = self._with_next_sample(epoch, unit, found, loaded)
                yield planned, unit, found

    def _with_next_sample(
        self, epoch: int, unit: Unit, sample: Sample, loaded: dict[tuple[int, int], Sample]
    ) -> Sample:
        """``sample`` followed by the next sample of its shard, when a shifted window (or its
        one-token lookahead) reaches past the sample's end and the next sample was read."""
        start, _ = self.window_bounds(epoch, unit)
        assert self.window_len is not None  # shift_windows implies windows
        following = loaded.get((unit[0], unit[1] + 1))
        if start + self.window_len + 1 <= self.chunk_len or following is None:
            return sample
        return Sample(
            index=sample.index,
            tokens=np.concatenate([sample.tokens, following.tokens]),
            doc_starts=sample.doc_starts + tuple(self.chunk_len + d for d in following.doc_starts),
            utf8_bytes=sample.utf8_bytes,
        )

    def continues(self, prev: Unit, cur: Unit, epochs: tuple[int, int] = (0, 0)) -> bool:
        (ps, pi, pw), (cs, ci, cw) = prev, cur
        if self.phase(epochs[0]) != self.phase(epochs[1]):
            return False  # shifted windows of two epochs do not meet end to end
        if cw > 0:
            return (ps, pi, pw) == (cs, ci, cw - 1)
        if pw != self.windows - 1:
            return False
        if self.shift_windows:
            # A shifted window does not reach into the next shard (only samples of its own
            # shard are attached), so the text between the two is not read.
            return ps == cs and ci == pi + 1
        return self.ranges.is_continuation((ps, pi), (cs, ci))
