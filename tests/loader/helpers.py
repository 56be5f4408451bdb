"""Small shared helpers for the loader tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pretrain.loader import TrainLoader
from pretrain.loader.order import StreamPlan
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


def planned_tokens(dataset: BuiltDataset, plan: StreamPlan, stream: int, epochs: int) -> np.ndarray:
    """The stream's text straight from the fixture's samples (no shard reading involved)."""
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
