"""The loader on real `data-pipeline prepare` output (tokenizer and shards made by the CLIs):
the streams carry exactly the shards' tokens, read here independently with tarfile + numpy."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.loader import ShardError, TrainLoader, ValidationLoader
from pretrain.loader.manifest import load_manifest
from pretrain.loader.order import StreamPlan
from pretrain.objectives import IGNORE_INDEX, span_corruption_lengths
from tests.loader.helpers import flip_token_byte, stream_rows


def _raw_split(manifest: Path, split: str) -> list[tuple[np.ndarray, list[int]]]:
    """(tokens, doc_starts) of every sample of ``split``, in manifest order."""
    doc = json.loads(manifest.read_text())
    out = []
    for shard in doc["splits"][split]["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(manifest.parent / shard["name"]) as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is not None:
                    key, _, ext = m.name.partition(".")
                    members.setdefault(key, {})[ext] = f.read()
        for key in sorted(members):
            tokens = np.load(io.BytesIO(members[key]["tokens.npy"]), allow_pickle=False)
            out.append((tokens, json.loads(members[key]["meta.json"])["doc_starts"]))
        assert len(members) == shard["samples"]
    return out


def _loader(manifest: Path, objective: str = "causal_lm", **kw: object) -> TrainLoader:
    args: dict[str, object] = {
        "rank": 0,
        "world_size": 1,
        "micro_batch_size": 2,
        "grad_accum": 2,
        "seq_len": 48,
        "objective": objective,
        "seed": 11,
    }
    args.update(kw)
    return TrainLoader(str(manifest), **args)  # type: ignore[arg-type]


def test_streams_carry_the_shards_tokens_and_every_hash_checks(
    prepared_manifest: Path,
) -> None:
    manifest = load_manifest(str(prepared_manifest))
    shards = manifest.split("train").shards
    assert len({s.unit for s in shards}) > 1 and len(shards) > len({s.unit for s in shards})
    assert all(s.sha256 and s.size for s in shards)  # so the loader verifies every shard
    raw = _raw_split(prepared_manifest, "train")
    offsets = np.cumsum([0] + [s.samples for s in shards])
    chunk = manifest.chunk_len
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bad shard, no hash mismatch
        with _loader(prepared_manifest) as loader:
            longest = max(loader.plan.stream_samples(0, g) for g in range(4)) * chunk
            steps = [loader.next_step() for _ in range(math.ceil(longest / 48) + 3)]
            assert loader.hash_mismatches == 0 and loader.bad_shards == (0, 0)
            assert loader.state_dict()["streams"][0][1] == 1  # every stream is in epoch 1
    plan = loader.plan
    assert isinstance(plan, StreamPlan)  # auto without mem_len: contiguous
    for g in range(4):
        k, b = divmod(g, 2)
        tokens, starts = [], []
        for epoch in (0, 1):
            for piece in plan.pieces(epoch, g):
                for i in range(
                    offsets[piece.shard] + piece.start, offsets[piece.shard] + piece.stop
                ):
                    tokens.append(raw[i][0].astype(np.int64))
                    flags = np.zeros(chunk, dtype=bool)
                    flags[raw[i][1]] = True
                    starts.append(flags)
        expected = torch.from_numpy(np.concatenate(tokens))
        inputs = stream_rows(steps, "input_ids", k, b)
        targets = stream_rows(steps, "targets", k, b)
        assert torch.equal(inputs, expected[: inputs.numel()])
        assert torch.equal(targets, expected[1 : inputs.numel() + 1])
        # every document start the pipeline recorded is flagged (the loader adds more flags
        # where the stream jumps between non-consecutive shards)
        want = torch.from_numpy(np.concatenate(starts))[: inputs.numel()]
        doc = stream_rows(steps, "doc_start", k, b)
        assert want.any() and bool(doc[want].all())


def test_masked_objectives_use_the_real_tokenizers_special_ids(prepared_manifest: Path) -> None:
    special = load_manifest(str(prepared_manifest)).special_ids
    ids = {v for k, v in special.items() if k != "sentinels"} | set(special["sentinels"])
    with _loader(prepared_manifest, "mlm", seq_len=64) as loader:
        reference = [loader.next_step() for _ in range(8)]
        labels = torch.stack([mb["labels"] for step in reference for mb in step])
        inputs = torch.stack([mb["input_ids"] for step in reference for mb in step])
    selected = labels != IGNORE_INDEX
    assert selected.any() and (inputs == special["mask"]).any()
    assert not any(bool((labels == i).any()) for i in ids)  # specials are never selected
    random = selected & (inputs != special["mask"]) & (inputs != labels)
    assert random.any() and not any(bool((inputs[random] == i).any()) for i in ids)
    # resume on real data is exact, masks included
    with _loader(prepared_manifest, "mlm", seq_len=64) as loader:
        for _ in range(5):
            loader.next_step()
        state = loader.state_dict()
    with _loader(prepared_manifest, "mlm", seq_len=64) as resumed:
        resumed.load_state_dict(state)
        for want in reference[5:]:
            got = resumed.next_step()
            for a, b in zip(want, got, strict=True):
                assert all(torch.equal(a[key], b[key]) for key in a)

    with _loader(prepared_manifest, "span", seq_len=64) as loader:
        batch = loader.next_step()[0]
    enc, dec = span_corruption_lengths(64, 0.15, 3.0)
    assert batch["encoder_input_ids"].shape == (2, enc)
    assert batch["decoder_targets"].shape == (2, dec)
    assert (batch["decoder_targets"][:, 0] == special["sentinels"][0]).all()


def test_validation_predicts_every_token_of_the_split(prepared_manifest: Path) -> None:
    raw = _raw_split(prepared_manifest, "validation")
    samples = torch.from_numpy(np.concatenate([t for t, _ in raw]).astype(np.int64))
    loader = ValidationLoader(
        str(prepared_manifest),
        rank=0,
        world_size=1,
        batch_size=2,
        seq_len=40,
        objective="causal_lm",
        seed=0,
    )
    rows: list[list[torch.Tensor]] = [[], []]
    for batch in loader:
        for b in range(2):
            rows[b].append(batch["targets"][b][batch["targets"][b] != IGNORE_INDEX])
    got = [torch.cat(r) for r in rows]
    assert sum(r.numel() for r in got) == loader.predicted_tokens == samples.numel() - 2
    position = 0  # two contiguous streams in manifest order; each one's first token has no target
    for row in got:
        assert torch.equal(row, samples[position + 1 : position + 1 + row.numel()])
        position += row.numel() + 1
    assert position == samples.numel()


def test_a_flipped_token_byte_in_prepared_shards_stops_training(
    prepared_manifest: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(prepared_manifest.parent, copy)
    special = load_manifest(str(prepared_manifest)).special_ids
    ids = {v for k, v in special.items() if k != "sentinels"} | set(special["sentinels"])
    name = load_manifest(str(prepared_manifest)).split("train").shards[0].name
    flip_token_byte(copy / name, sample=1, avoid=ids)
    with (
        _loader(copy / "manifest.json", micro_batch_size=1, grad_accum=1, seq_len=64) as loader,
        pytest.raises(ShardError, match=rf"{name}: sha256"),
    ):
        for _ in range(loader.source.split.samples + 1):  # one stream reads every shard
            loader.next_step()
