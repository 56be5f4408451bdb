"""Shard sha256 checked while streaming: a flipped byte inside a token array still decodes, so
only the hash can catch it, and it does so when the shard has been read to its end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from pretrain.config import DataConfig
from pretrain.loader import Batch, ShardError, TrainLoader
from pretrain.loader.manifest import load_manifest
from pretrain.loader.shards import BadShardStats, iter_shard
from tests.loader.helpers import flip_token_byte, make_loader, stream_rows
from tests.loader.shard_fixture import SENTINELS, BuiltDataset

SPECIAL = range(256, 261 + len(SENTINELS))  # keep the flipped token an ordinary byte


def _sample_offset(dataset: BuiltDataset, shard: int) -> int:
    """Index of the shard's first sample among the split's samples (manifest order)."""
    shards = load_manifest(str(dataset.manifest)).split("train").shards
    return sum(s.samples for s in shards[:shard])


def _one_stream_steps(
    dataset: BuiltDataset, mode: str, steps: int
) -> tuple[list[list[Batch]], TrainLoader]:
    cfg = DataConfig(on_bad_shard=mode)  # type: ignore[arg-type]
    args = {"micro_batch_size": 1, "grad_accum": 1, "seq_len": 64, "data_config": cfg}
    loader = make_loader(dataset, **args)  # seq_len = chunk_len: one sample per step
    got: list[list[Batch]] = []
    try:
        for _ in range(steps):
            got.append(loader.next_step())
    finally:
        loader.close()
    return got, loader


def test_iter_shard_checks_the_hash_when_the_shard_is_finished(
    fresh_dataset: BuiltDataset,
) -> None:
    manifest = load_manifest(str(fresh_dataset.manifest))
    shard = manifest.split("train").shards[1]
    assert shard.sha256 and shard.size  # the fixture's manifest carries them, like prepare's
    flip_token_byte(fresh_dataset.shard_paths["train"][1], sample=5, avoid=SPECIAL)
    args = {"dtype": "uint16", "chunk_len": 64, "on_bad_shard": "fail"}

    samples = iter_shard(shard, start=0, stats=BadShardStats(), **args)  # type: ignore[arg-type]
    got = []
    with pytest.raises(ShardError, match=rf"{shard.name}: sha256 .* does not match"):
        for sample in samples:
            got.append(sample)
    # every sample, the damaged one included, was handed out before the mismatch was known
    assert len(got) == shard.samples
    offset = _sample_offset(fresh_dataset, 1)
    originals = fresh_dataset.samples["train"][offset : offset + shard.samples]
    differs = [not np.array_equal(a.tokens, b) for a, b in zip(got, originals, strict=True)]
    assert differs == [i == 5 for i in range(shard.samples)]

    # a reader that stops before the end does not check (nor raise)
    partial = iter_shard(shard, start=2, stats=BadShardStats(), **args)  # type: ignore[arg-type]
    assert [next(partial).index for _ in range(3)] == [2, 3, 4]
    partial.close()


def test_fail_mode_stops_training_at_the_end_of_the_shard(fresh_dataset: BuiltDataset) -> None:
    path = fresh_dataset.shard_paths["train"][1]
    flip_token_byte(path, sample=3, avoid=SPECIAL)
    n = len(fresh_dataset.samples["train"])
    with pytest.raises(ShardError, match=rf"bad shard .*{path.name}: sha256"):
        _one_stream_steps(fresh_dataset, "fail", 2 * n)


def test_skip_mode_counts_and_warns_and_keeps_going(fresh_dataset: BuiltDataset) -> None:
    path = fresh_dataset.shard_paths["train"][1]
    position, old, new = flip_token_byte(path, sample=3, avoid=SPECIAL)
    samples = fresh_dataset.samples["train"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps, loader = _one_stream_steps(fresh_dataset, "skip", len(samples) + 30)
    assert loader.hash_mismatches >= 1  # counted per encounter (epoch 1 may meet it again)
    assert loader.bad_shards == (0, 0)  # nothing was skipped
    messages = [str(w.message) for w in caught]
    assert any(path.name in m and "sha256" in m for m in messages), messages
    # the damaged sample itself went into a batch (detection is after use), everything else
    # is intact, and the stream kept going into epoch 1
    chunks = stream_rows(steps, "input_ids", 0, 0).numpy().reshape(-1, 64)
    originals = {s.astype(np.int64).tobytes() for s in samples}
    damaged = [c for c in chunks if c.tobytes() not in originals]
    expected = samples[_sample_offset(fresh_dataset, 1) + 3].astype(np.int64)
    assert int(expected[position]) == old
    expected[position] = new
    assert damaged and all(np.array_equal(c, expected) for c in damaged)


def test_manifest_without_hashes_is_read_unchecked(fresh_dataset: BuiltDataset) -> None:
    doc = json.loads(fresh_dataset.manifest.read_text())
    for split in doc["splits"].values():
        for shard in split["shards"]:
            del shard["sha256"], shard["bytes"]
    fresh_dataset.manifest.write_text(json.dumps(doc))
    flip_token_byte(fresh_dataset.shard_paths["train"][1], sample=0, avoid=SPECIAL)
    n = len(fresh_dataset.samples["train"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, loader = _one_stream_steps(fresh_dataset, "fail", n + 5)
    assert loader.hash_mismatches == 0
