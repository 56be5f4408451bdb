"""A new global batch (another stream count) mid-epoch: the unread units dealt out again.

Real shards on disk (the loader's session fixture). The check is on units, the plan's own
coordinates: every unit of the epochs the old streams were in is read exactly once, by an old
stream before the change or by a new stream after it, and the new streams then continue in
the new plan's order.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pretrain.config import DataConfig
from pretrain.loader import LoaderStateError, TrainLoader
from pretrain.loader.order import Plan, ShardOpener, Unit
from pretrain.loader.replan import TransitionPlan
from pretrain.loader.stream import Position
from tests.loader.helpers import make_loader
from tests.loader.shard_fixture import BuiltDataset


def _loader(dataset: BuiltDataset, order: str, streams: int) -> TrainLoader:
    # 16-token windows (4 per 64-token sample) in shuffled order, blocks of 20 samples.
    config = DataConfig(order=order, shuffle_buffer_tokens=64 * 20)  # type: ignore[arg-type]
    return make_loader(dataset, grad_accum=streams // 2, seq_len=16, data_config=config)


def _units(
    plan: Plan, epoch: int, stream: int, stop: int, opener: ShardOpener
) -> list[tuple[int, Unit]]:
    """The units ``stream`` reads in ``epoch`` before planned unit ``stop``."""
    out = []
    for planned, unit, _ in plan.read(epoch, stream, 0, opener):
        if planned >= stop:
            break
        out.append((epoch, unit))
    return out


@pytest.mark.parametrize("order", ["contiguous", "shuffled"])
def test_every_unit_of_the_epoch_is_read_once_across_the_change(
    dataset: BuiltDataset, order: str
) -> None:
    loaders = [_loader(dataset, order, 8), _loader(dataset, order, 6)]
    old, new = (loader.plan for loader in loaders)
    opener = loaders[0].source.open_shard
    # Old streams at different points; streams 6 and 7 had finished epoch 0 and started epoch 1
    # (epoch 1 is then also dealt out); stream 2 was half-way through a unit.
    positions: dict[int, Position] = {g: (0, 3 * g, 0) for g in range(6)}
    positions[2] = (0, 6, 5 if order == "contiguous" else 0)
    positions[6] = (1, 2, 0)
    positions[7] = (1, 0, 0)
    plan = TransitionPlan(old, new, positions)
    assert plan.first_epoch == 0 and plan.shift == 1

    read: list[tuple[int, Unit]] = []
    for g, (epoch, unit, token) in positions.items():  # what the old streams had read
        for e in range(epoch + 1):
            stop = unit + (token > 0) if e == epoch else old.stream_samples(e, g)
            read += _units(old, e, g, stop, opener)
    sizes = [plan.stream_samples(0, s) for s in range(6)]
    assert max(sizes) - min(sizes) <= 1  # dealt out evenly
    for s in range(6):
        read += _units(plan, 0, s, sizes[s], opener)
    # Epochs 0 and 1 are both dealt out (streams 6 and 7 had started 1), so every unit is read
    # twice, once per epoch; a half-read unit once more: its first tokens by the old stream,
    # the rest by a new one.
    counts = Counter(u for _, u in read)
    half_read = old.locate(0, 2, 6) if order == "contiguous" else None
    wrong = {u: c for u, c in counts.items() if c != (3 if u == half_read else 2)}
    assert not wrong
    every = {
        old.locate(e, g, k)
        for e in (0, 1)
        for g in range(8)
        for k in range(old.stream_samples(e, g))
    }
    assert set(counts) == every

    # After the transition, epoch 1 of the new streams is the new plan's epoch 2.
    assert plan.locate(1, 0, 0) == new.locate(2, 0, 0)
    for loader in loaders:
        loader.close()


def test_the_loader_continues_and_its_transition_resumes_exactly(dataset: BuiltDataset) -> None:
    with make_loader(dataset, grad_accum=4) as before:
        for _ in range(5):
            before.next_step()
        state = before.state_dict()
    with make_loader(dataset, grad_accum=2) as refused, pytest.raises(LoaderStateError):
        refused.load_state_dict(state)
    with make_loader(dataset, grad_accum=2) as after:
        after.load_state_dict(state, allow_new_streams=True)
        after.next_step()
        middle = after.state_dict()
        assert middle["transition"]["num_streams"] == 8
        expected = [after.next_step() for _ in range(3)]
    with make_loader(dataset, grad_accum=2) as again:
        again.load_state_dict(middle)  # the same stream count: no flag needed
        got = [again.next_step() for _ in range(3)]
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["input_ids"], y["input_ids"])
