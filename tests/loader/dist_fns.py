"""Functions run on each rank by `run_distributed` (after init_process_group, gloo)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pretrain.loader import TrainLoader, ValidationLoader
from pretrain.objectives import IGNORE_INDEX


def read_one_epoch(manifest: str, seq_len: int) -> dict[str, object]:
    """Each of this rank's streams' epoch-0 tokens, and the validation targets it predicts."""
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = TrainLoader(
        manifest,
        rank=rank,
        world_size=world,
        micro_batch_size=2,
        grad_accum=2,
        seq_len=seq_len,
        objective="causal_lm",
        seed=5,
    )
    chunk = loader.source.manifest.chunk_len
    lengths = [loader.plan.stream_samples(0, g) * chunk for g in loader.stream_ids]
    rows: list[list[torch.Tensor]] = [[] for _ in loader.stream_ids]
    for _ in range(math.ceil(max(lengths) / seq_len)):
        for k, batch in enumerate(loader.next_step()):
            for b in range(loader.micro_batch_size):
                rows[k * loader.micro_batch_size + b].append(batch["input_ids"][b])
    loader.close()
    epoch0 = [torch.cat(r)[:n] for r, n in zip(rows, lengths, strict=True)]

    validation = ValidationLoader(
        manifest,
        rank=rank,
        world_size=world,
        batch_size=2,
        seq_len=seq_len,
        objective="causal_lm",
        seed=5,
    )
    predicted = torch.zeros((), dtype=torch.long)
    for batch in validation:
        count = (batch["targets"] != IGNORE_INDEX).sum()
        dist.all_reduce(count)  # every rank must reach this the same number of times
        predicted += count
    return {
        "streams": loader.stream_ids,
        "epoch0": epoch0,
        "validation_batches": len(validation),
        "validation_predicted": predicted,
        "validation_expected": validation.predicted_tokens,
    }
