"""Entry point of one rank started by `run_distributed`: set up gloo, call the target, save its
result where the parent test can read it."""

from __future__ import annotations

import importlib
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    target, args_path, workdir = sys.argv[1:4]
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    args = torch.load(args_path, weights_only=True)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        value = function(*args)
        rank = int(os.environ["RANK"])
        torch.save(value, Path(workdir) / f"result-rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
