"""A transient read error (a dropped connection to the store) costs a retry, not the rest of the
shard: the shard is opened again and read on from the sample it stopped at, so the samples and
batches are exactly those of a read that never failed; reads that keep failing end in one error
naming the shard. The errors are injected into the real file reads (MNEMOS_FAULTS, faults.py)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from pretrain.config import DataConfig
from pretrain.faults import Faults
from pretrain.loader import ShardError
from pretrain.loader.manifest import load_manifest
from pretrain.loader.shards import BadShardStats, Sample, iter_shard
from tests.loader.helpers import make_loader
from tests.loader.shard_fixture import BuiltDataset


def _read(dataset: BuiltDataset, faults: str, *, read_retries: int = 3) -> list[Sample]:
    manifest = load_manifest(str(dataset.manifest))
    return list(
        iter_shard(
            manifest.split("train").shards[0],
            start=0,
            dtype=manifest.dtype,
            chunk_len=manifest.chunk_len,
            on_bad_shard="fail",
            stats=BadShardStats(),
            read_retries=read_retries,
            faults=Faults(frozenset({(faults, 5, None)})),
        )
    )


def test_a_failed_read_resumes_the_shard_at_the_sample_it_stopped_at(
    dataset: BuiltDataset, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pretrain.loader.shards"):
        samples = _read(dataset, "read_error")
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 1, retries
    assert dataset.shard_paths["train"][0].name in retries[0] and "retry 1 of 3" in retries[0]
    found = re.search(r"resuming at sample (\d+)", retries[0])
    assert found is not None
    resumed_at = int(found.group(1))
    assert 0 < resumed_at < len(samples)  # the failure struck mid-shard
    expected = dataset.samples["train"][: len(samples)]
    assert [s.index for s in samples] == list(range(len(expected)))  # none lost, none twice
    assert all(np.array_equal(s.tokens, e) for s, e in zip(samples, expected, strict=True))


def test_reads_that_keep_failing_give_up_with_one_error_naming_the_shard(
    dataset: BuiltDataset,
) -> None:
    with pytest.raises(ShardError) as failure:
        _read(dataset, "read_errors", read_retries=2)
    message = str(failure.value)
    assert message.startswith(f"bad shard {dataset.shard_paths['train'][0]}: ")
    assert "reading failed 3 times in a row" in message and "data.read_retries=2" in message
    assert "ConnectionResetError" in message and "\n" not in message


def test_a_loader_batches_through_a_read_error_exactly(
    dataset: BuiltDataset, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def steps(faults: str) -> list[list[dict[str, torch.Tensor]]]:
        monkeypatch.setenv("MNEMOS_FAULTS", faults)
        loader = make_loader(dataset, data_config=DataConfig(read_retries=1))
        try:
            return [loader.next_step() for _ in range(6)]
        finally:
            loader.close()

    clean = steps("")
    with caplog.at_level(logging.WARNING, logger="pretrain.loader.shards"):
        retried = steps("read_error@4")
    assert sum("retry 1 of 1" in r.getMessage() for r in caplog.records) == 1
    for a, b in zip(clean, retried, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x)
