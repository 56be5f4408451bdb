"""A manifest that does not describe its shards (one written for another tokenizer's shards,
copied over them) is refused at the first shard it reads, naming the shard, before any of its
samples is used: the shard's size is checked when it is opened, every token id against the
vocabulary, instead of training on it until the sha256 at the shard's end."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import DataConfig
from pretrain.loader import ShardError
from pretrain.loader.manifest import load_manifest
from pretrain.loader.shards import BadShardStats, iter_shard
from tests.loader.helpers import make_loader
from tests.loader.shard_fixture import VOCAB_SIZE, BuiltDataset

ARGS = {"micro_batch_size": 1, "grad_accum": 1, "seq_len": 64}


def set_token(path: Path, *, sample: int, position: int, value: int) -> None:
    """Overwrite one token of sample ``sample`` in the shard at ``path``, in place: the shard
    keeps its size and still decodes."""
    with tarfile.open(path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".tokens.npy")][sample]
        f = tar.extractfile(member)
        assert f is not None
        data = f.read()
    tokens = np.load(io.BytesIO(data), allow_pickle=False)
    offset = member.offset_data + len(data) - tokens.nbytes + position * tokens.dtype.itemsize
    raw = bytearray(path.read_bytes())
    raw[offset : offset + tokens.dtype.itemsize] = np.array([value], tokens.dtype).tobytes()
    path.write_bytes(bytes(raw))


def _edit_manifest(dataset: BuiltDataset, edit: object) -> None:
    doc = json.loads(dataset.manifest.read_text())
    edit(doc)  # type: ignore[operator]
    dataset.manifest.write_text(json.dumps(doc))


def test_a_shard_whose_size_is_not_the_manifests_is_refused_before_use(
    fresh_dataset: BuiltDataset,
) -> None:
    def other_sizes(doc: dict[str, object]) -> None:
        for shard in doc["splits"]["train"]["shards"]:  # type: ignore[index]
            shard["bytes"] += 512

    _edit_manifest(fresh_dataset, other_sizes)
    shard = load_manifest(str(fresh_dataset.manifest)).split("train").shards[0]
    samples = iter_shard(
        shard, start=0, dtype="uint16", chunk_len=64, on_bad_shard="fail", stats=BadShardStats()
    )
    with pytest.raises(ShardError, match=rf"{shard.name}: \d+ bytes, the manifest says"):
        next(samples)  # not one sample handed out
    with make_loader(fresh_dataset, **ARGS) as loader, pytest.raises(ShardError, match="bytes"):
        loader.next_step()  # the first step, whichever shard the stream starts in


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_a_token_id_outside_the_vocabulary_is_refused_at_once(
    fresh_dataset: BuiltDataset, mode: str
) -> None:
    path = fresh_dataset.shard_paths["train"][0]
    # The shard's last sample: whatever sample of the shard a stream starts at, it reads that one
    # (decoded and checked) before the shard's end, where the sha256 would catch it.
    set_token(path, sample=-1, position=5, value=VOCAB_SIZE + 1000)
    cfg = DataConfig(on_bad_shard=mode)  # type: ignore[arg-type]
    loader = make_loader(fresh_dataset, **ARGS, data_config=cfg)
    n = len(fresh_dataset.samples["train"])  # one stream, one sample a step: every sample
    if mode == "fail":
        message = rf"{path.name}: sample .* holds token id {VOCAB_SIZE + 1000} \(position 5\)"
        with pytest.raises(ShardError, match=message):
            for _ in range(n):
                loader.next_step()
    else:
        with pytest.warns(RuntimeWarning, match=f"skipping the rest of bad shard .*{path.name}"):
            steps = [loader.next_step()[0]["input_ids"] for _ in range(n)]
        assert max(int(ids.max()) for ids in steps) < VOCAB_SIZE
        assert loader.bad_shards[0] >= 1
    loader.close()


def test_a_manifest_for_a_smaller_vocabulary_stops_at_the_first_sample(
    fresh_dataset: BuiltDataset,
) -> None:
    """The issue's case: shards of a byte-level tokenizer (ids up to 292) under a manifest of a
    tokenizer with a smaller vocabulary. The model's table is large enough, so nothing else
    would stop it before the shard's sha256 at its end."""

    def smaller_vocabulary(doc: dict[str, object]) -> None:
        doc["tokenizer"]["vocab_size"] = 100  # type: ignore[index]
        for split in doc["splits"].values():  # type: ignore[attr-defined]
            for shard in split["shards"]:
                shard.pop("sha256"), shard.pop("bytes")

    _edit_manifest(fresh_dataset, smaller_vocabulary)
    with (
        make_loader(fresh_dataset, **ARGS, expected_vocab_size=VOCAB_SIZE) as loader,
        pytest.raises(ShardError, match=r"train-\d+-\d+\.tar: sample .* vocabulary of 100"),
    ):
        loader.next_step()  # the first step
