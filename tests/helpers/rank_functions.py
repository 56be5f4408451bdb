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
