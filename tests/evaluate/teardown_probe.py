"""Run under torchrun by test_teardown.py: join the group as `pretrain evaluate` does, import
torch._dynamo once the group is up (as torch.compile and parts of DeepSpeed do lazily; it brings
in `torch.distributed.nn`), leave the group as every `pretrain` command does, then print how
many of gloo's threads are still running. A module that captured the group at import keeps them
alive into interpreter shutdown, where a rank can abort after its work is done."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.cli import _leave_process_group
from pretrain.config import EngineConfig
from pretrain.evaluate.command import _process_group


def gloo_threads() -> int:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended while we listed them
            continue
    return sum(name.startswith(("gloo", "pt_gloo")) for name in names)


def main() -> int:
    rank, _, _ = _process_group(EngineConfig(dist_timeout_s=60))
    total = torch.ones(1)
    dist.all_reduce(total)
    importlib.import_module("torch._dynamo")

    running = gloo_threads()
    _leave_process_group()
    print(f"rank {rank}: all_reduce {total.item():.0f}, gloo threads {running} -> {gloo_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
