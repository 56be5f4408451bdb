"""Small shared helpers for the loader tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.loader import TrainLoader
from pretrain.loader.order import Plan, StreamPlan
from tests.loader.shard_fixture import BuiltDataset


def make_loader(dataset: BuiltDataset, **overrides: Any) -> TrainLoader:
    args: dict[str, Any] = {
        "rank": 0,
        "world_size": 1,
        "micro_batch_size": 2,
        "grad_accum": 2,
        "seq_len": 24,
        "objective": "causal_lm",
        "seed": 7,
    }
    args.update(overrides)
    return TrainLoader(str(dataset.manifest), **args)


def planned_tokens(dataset: BuiltDataset, plan: Plan, stream: int, epochs: int) -> np.ndarray:
    """The stream's text straight from the fixture's samples (no shard reading involved);
    contiguous order only."""
    assert isinstance(plan, StreamPlan)
    offsets = np.cumsum([0] + [s.samples for s in plan.shards])
    samples = dataset.samples["train"]
    parts = []
    for epoch in range(epochs):
        for piece in plan.pieces(epoch, stream):
            first = offsets[piece.shard]
            parts += samples[first + piece.start : first + piece.stop]
    return np.concatenate(parts).astype(np.int64)


def stream_rows(
    steps: list[list[dict[str, torch.Tensor]]], key: str, k: int, b: int
) -> torch.Tensor:
    """Row b of micro-batch k of every step, concatenated along time."""
    return torch.cat([step[k][key][b] for step in steps])


def flip_token_byte(
    path: Path, *, sample: int, avoid: Collection[int] = ()
) -> tuple[int, int, int]:
    """Flip the low bit of one token inside sample ``sample``'s ``tokens.npy`` of the shard at
    ``path``, in place, so that the shard still decodes: only its sha256 changes.

    Picks the first token whose flipped value is not in ``avoid`` (e.g. special ids) and
    returns (position in the sample, old token, new token).
    """
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".tokens.npy")]
        member = members[sample]
        f = tar.extractfile(member)
        assert f is not None
        data = f.read()
    tokens = np.load(io.BytesIO(data), allow_pickle=False)
    header = len(data) - tokens.nbytes
    position = next(i for i, t in enumerate(tokens.tolist()) if (t ^ 1) not in avoid)
    offset = member.offset_data + header + position * tokens.dtype.itemsize  # little-endian
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1
    path.write_bytes(bytes(raw))
    old = int(tokens[position])
    return position, old, old ^ 1
