"""Run under `torchrun --max-restarts=1` by test_faults.py: a process group that forms, loses a
rank, and forms again in the restarted attempt, where the restarted rank 1 joins late.

Attempt 0: both ranks join and all-reduce, then rank 1 SIGKILLs itself. Attempt 1: rank 1 waits
before joining, so rank 0 asks the rendezvous store for rank 1's address first. torchrun's agent
keeps one store for the whole job, and it still holds the dead rank's address from attempt 0:
with plain env:// (``--plain``, DeepSpeed's default) rank 0 can read that address and fail with
"Gloo connectFullMesh failed ... Connection refused"; `pretrain.distributed.engine.init_distributed`
scopes every key to the attempt, so attempt 1 never sees attempt 0's keys.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta

import deepspeed
import torch
import torch.distributed as dist

from pretrain.config import EngineConfig
from pretrain.distributed.engine import init_distributed

TIMEOUT_S = 20


def main() -> int:
    attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
    if attempt == 1 and rank == 1:
        time.sleep(3)
    if sys.argv[1:] == ["--plain"]:
        deepspeed.init_distributed("gloo", timeout=timedelta(seconds=TIMEOUT_S))
    else:
        init_distributed(EngineConfig(dist_timeout_s=TIMEOUT_S))
    total = torch.ones(1)
    dist.all_reduce(total)
    print(f"attempt {attempt} rank {rank}: all_reduce {total.item():.0f}", flush=True)
    if attempt == 0:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # rank 0 waits for torchrun to stop it and restart both
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
