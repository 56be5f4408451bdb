"""Functions that `tests/test_distributed_helper.py` runs on real ranks."""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist


def all_reduce_rank_plus_one() -> dict[str, object]:
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)  # over gloo, between real processes
    print(f"rank {dist.get_rank()} says hello", flush=True)
    return {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "backend": str(dist.get_backend()),
        "sum": value,
        "pid": os.getpid(),
    }


def fail_on_rank_one(message: str) -> None:
    if dist.get_rank() == 1:
        print(message, file=sys.stderr, flush=True)
        raise RuntimeError(message)


def hang_forever() -> None:
    while True:
        time.sleep(1)


def bad_shard_on_rank_one() -> dict[str, object]:
    """Rank 1 meets a bad shard; both ranks go through `raise_together`, then one more
    collective, which only completes if neither rank was left behind."""
    from pretrain.distributed.process_group import raise_together
    from pretrain.loader import ShardError

    message = "bad shard /data/train-00001-00003.tar: truncated"
    own = ShardError(message) if dist.get_rank() == 1 else None
    try:
        raise_together(own, ShardError)
        raised = ""
    except ShardError as err:
        raised = str(err)
    after = torch.tensor([1.0])
    dist.all_reduce(after)
    return {"raised": raised, "after": float(after[0])}
