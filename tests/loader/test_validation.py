"""ValidationLoader: each validation sample exactly once across ranks, equal batch counts."""

from __future__ import annotations

import pytest
import torch

from pretrain.loader import ValidationLoader
from pretrain.objectives import IGNORE_INDEX, span_corruption_lengths
from tests.loader.shard_fixture import PAD, BuiltDataset


def _loader(dataset: BuiltDataset, rank: int, world: int, objective: str) -> ValidationLoader:
    return ValidationLoader(
        str(dataset.manifest),
        rank=rank,
        world_size=world,
        batch_size=3,
        seq_len=40,
        objective=objective,  # type: ignore[arg-type]
        seed=1,
    )


def causal_targets_by_stream(dataset: BuiltDataset, rank: int, world: int) -> list[torch.Tensor]:
    """Each of the rank's rows: its real targets concatenated over all batches."""
    loader = _loader(dataset, rank, world, "causal_lm")
    batches = list(loader)
    assert len(batches) == loader.num_batches
    rows = []
    for b in range(3):
        targets = torch.cat([batch["targets"][b] for batch in batches])
        rows.append(targets[targets != IGNORE_INDEX])
    return rows


def test_every_validation_token_once_across_ranks(dataset: BuiltDataset) -> None:
    world = 2
    loaders = [_loader(dataset, r, world, "causal_lm") for r in range(world)]
    assert loaders[0].num_batches == loaders[1].num_batches  # no rank leaves a collective early
    got = [row for r in range(world) for row in causal_targets_by_stream(dataset, r, world)]
    samples = torch.cat(
        [torch.from_numpy(s.astype("int64")) for s in dataset.samples["validation"]]
    )
    # streams are contiguous ranges in manifest order: their targets are the split minus the
    # first token of each stream
    assert sum(len(r) for r in got) == loaders[0].predicted_tokens == len(samples) - 2 * 3
    position = 0
    for row in got:
        assert torch.equal(row, samples[position + 1 : position + 1 + len(row)])
        position += len(row) + 1


@pytest.mark.parametrize("objective", ["mlm", "span"])
def test_masked_objectives_pad_finished_streams(dataset: BuiltDataset, objective: str) -> None:
    first = list(_loader(dataset, 1, 2, objective))
    second = list(_loader(dataset, 1, 2, objective))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):  # deterministic masks on every pass
        assert all(torch.equal(a[k], b[k]) for k in a)
    last = first[-1]
    if objective == "mlm":
        assert (~last["attention_mask"]).any()  # the tail is padding...
        assert (last["labels"][~last["attention_mask"]] == IGNORE_INDEX).all()  # ...with no loss
    else:
        enc, dec = span_corruption_lengths(40, 0.15, 3.0)
        assert last["encoder_input_ids"].shape == (3, enc)
        assert last["decoder_targets"].shape == (3, dec)
        assert (last["decoder_input_ids"] == PAD).any()  # the tail is padding...
        assert (last["decoder_targets"] == IGNORE_INDEX).any()  # ...with no loss
