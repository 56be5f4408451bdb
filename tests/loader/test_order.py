"""The epoch plan: every sample of an epoch exactly once over the streams, for any shape."""

from __future__ import annotations

from collections import Counter

import pytest

from pretrain.loader.manifest import ShardInfo
from pretrain.loader.order import StreamPlan


def _shards(sizes: list[int], unit_of: list[int] | None = None) -> list[ShardInfo]:
    units = unit_of or [0] * len(sizes)
    seqs: Counter[int] = Counter()
    out = []
    for size, unit in zip(sizes, units, strict=True):
        out.append(
            ShardInfo(f"train-{unit:05d}-{seqs[unit]:05d}.tar", "", size, 0, 0, unit, seqs[unit])
        )
        seqs[unit] += 1
    return out


@pytest.mark.parametrize(
    ("sizes", "streams"),
    [
        ([10] * 8, 4),  # shards divide evenly
        ([10] * 7, 4),  # they do not
        ([37], 6),  # a single shard (one unit, tiny corpus) over more streams than shards
        ([5, 9, 1, 13], 8),  # uneven shard sizes
        ([3, 3], 6),  # exactly one sample per stream
    ],
)
def test_streams_tile_every_epoch(sizes: list[int], streams: int) -> None:
    plan = StreamPlan(_shards(sizes), fingerprint="f", seed=3, num_streams=streams)
    for epoch in range(3):
        seen: Counter[tuple[int, int]] = Counter()
        for g in range(streams):
            pieces = plan.pieces(epoch, g)
            assert sum(p.stop - p.start for p in pieces) == plan.stream_samples(epoch, g)
            for p in pieces:
                seen.update((p.shard, i) for i in range(p.start, p.stop))
        expected = {(s, i) for s, n in enumerate(sizes) for i in range(n)}
        assert set(seen) == expected
        assert max(seen.values()) == 1


def test_order_is_a_pure_function_of_fingerprint_seed_epoch() -> None:
    shards = _shards([10] * 8)

    def layout(fp: str, seed: int, epoch: int) -> list[list[tuple[int, int, int]]]:
        plan = StreamPlan(shards, fingerprint=fp, seed=seed, num_streams=4)
        return [[(p.shard, p.start, p.stop) for p in plan.pieces(epoch, g)] for g in range(4)]

    assert layout("a", 1, 0) == layout("a", 1, 0)
    assert layout("a", 1, 0) != layout("a", 1, 1)  # a new epoch reshuffles
    assert layout("a", 1, 0) != layout("a", 2, 0)
    assert layout("a", 1, 0) != layout("b", 1, 0)


def test_continuation_follows_units_and_shard_sequence() -> None:
    shards = _shards([4, 4, 4], unit_of=[0, 0, 1])
    plan = StreamPlan(shards, fingerprint="f", seed=0, num_streams=1)
    assert plan.is_continuation((0, 1), (0, 2))
    assert plan.is_continuation((0, 3), (1, 0))  # unit 0, seq 0 -> seq 1
    assert not plan.is_continuation((1, 3), (2, 0))  # another unit
    assert not plan.is_continuation((0, 2), (0, 0))


def test_unshuffled_plan_keeps_manifest_order() -> None:
    plan = StreamPlan(_shards([3, 3, 3]), fingerprint="f", seed=0, num_streams=2, shuffle=False)
    assert [(p.shard, p.start, p.stop) for p in plan.pieces(0, 0)] == [(0, 0, 3), (1, 0, 1)]
    assert [(p.shard, p.start, p.stop) for p in plan.pieces(0, 1)] == [(1, 1, 3), (2, 0, 3)]
