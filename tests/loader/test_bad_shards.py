"""Truncated and corrupt shards: an error naming the shard (fail), or skipped with a count and
a warning (skip); never a partial sample in either mode."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import DataConfig
from pretrain.loader import Batch, ShardError, TrainLoader
from tests.loader.helpers import make_loader, stream_rows
from tests.loader.shard_fixture import BuiltDataset


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2048] = b"\xa5" * 2048  # garbage over headers and token bytes
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


DAMAGES = {"truncated": _truncate, "corrupt": _corrupt, "missing": _delete}


def _one_stream(dataset: BuiltDataset, steps: int) -> tuple[TrainLoader, list[list[Batch]]]:
    cfg = DataConfig(on_bad_shard="skip")
    loader = make_loader(dataset, micro_batch_size=1, grad_accum=1, seq_len=64, data_config=cfg)
    return loader, [loader.next_step() for _ in range(steps)]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_fail_mode_names_the_shard(fresh_dataset: BuiltDataset, damage: str) -> None:
    shard = fresh_dataset.shard_paths["train"][1]
    DAMAGES[damage](shard)
    n_samples = len(fresh_dataset.samples["train"])
    cfg = DataConfig(on_bad_shard="fail")
    args = {"micro_batch_size": 1, "grad_accum": 1, "seq_len": 64, "data_config": cfg}
    # one stream reads every shard
    with make_loader(fresh_dataset, **args) as loader, pytest.raises(ShardError, match=shard.name):
        for _ in range(n_samples):
            loader.next_step()


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_skip_mode_counts_warns_and_never_yields_a_partial_sample(
    fresh_dataset: BuiltDataset, damage: str
) -> None:
    shard = fresh_dataset.shard_paths["train"][1]
    DAMAGES[damage](shard)
    samples = fresh_dataset.samples["train"]
    originals = {s.tobytes() for s in (x.astype(np.int64) for x in samples)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # chunk_len = seq_len = 64 and one stream: each step is one sample if none are partial
        loader, steps = _one_stream(fresh_dataset, len(samples))
        shards_skipped, samples_skipped = loader.bad_shards
        loader.close()
    # counted per encounter: the stream may meet the shard again in epoch 1
    assert shards_skipped >= 1 and 0 < samples_skipped <= 24 * shards_skipped
    assert any(shard.name in str(w.message) for w in caught)
    tokens = stream_rows(steps, "input_ids", 0, 0).numpy()
    chunks = tokens.reshape(-1, 64)
    assert all(c.tobytes() in originals for c in chunks)  # whole, intact samples only
    assert len(chunks) == len(samples)  # the stream kept going (into epoch 1) after the skip


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_skip_mode_resume_is_exact_across_a_bad_shard(
    fresh_dataset: BuiltDataset, damage: str
) -> None:
    DAMAGES[damage](fresh_dataset.shard_paths["train"][1])
    cfg = DataConfig(on_bad_shard="skip")
    args = {"micro_batch_size": 2, "grad_accum": 1, "seq_len": 40, "data_config": cfg}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with make_loader(fresh_dataset, **args) as loader:
            reference = [loader.next_step() for _ in range(40)]
        for cut in (5, 17, 29):
            with make_loader(fresh_dataset, **args) as loader:
                for _ in range(cut):
                    loader.next_step()
                state = loader.state_dict()
            with make_loader(fresh_dataset, **args) as resumed:
                resumed.load_state_dict(state)
                for want in reference[cut : cut + 6]:
                    got = resumed.next_step()
                    for key in want[0]:
                        assert (want[0][key] == got[0][key]).all(), (cut, key)
