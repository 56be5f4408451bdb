"""2 real gloo ranks x 4 streams each over real shards: one epoch covers every sample once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed
from tests.loader.shard_fixture import BuiltDataset


@pytest.mark.distributed
def test_two_ranks_see_every_sample_of_an_epoch_exactly_once(
    dataset: BuiltDataset, tmp_path: Path
) -> None:
    run = run_distributed(
        "tests.loader.dist_fns:read_one_epoch", str(dataset.manifest), 48, workdir=tmp_path
    )
    values = [r.value for r in run.ranks]
    streams = [g for v in values for g in v["streams"]]
    assert sorted(streams) == list(range(8))  # disjoint stream ownership, none missing
    seen: Counter[bytes] = Counter()
    for value in values:
        for tokens in value["epoch0"]:
            assert tokens.numel() % 64 == 0
            seen.update(chunk.numpy().tobytes() for chunk in tokens.view(-1, 64))
    expected = Counter(s.astype("int64").tobytes() for s in dataset.samples["train"])
    assert sum(seen.values()) == len(dataset.samples["train"])
    assert seen == expected  # every sample once: nothing lost, nothing repeated
    # validation: same batch count on both ranks, every predicted token counted once
    assert values[0]["validation_batches"] == values[1]["validation_batches"]
    total = values[0]["validation_expected"]  # all ranks compute the split's total
    assert total == values[1]["validation_expected"] > 0
    assert int(values[0]["validation_predicted"]) == int(values[1]["validation_predicted"]) == total
