"""Cluster profiles (`configs/cluster/*.yaml`): how and where a training job is launched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["local", "torchrun", "deepspeed", "slurm"]


@dataclass
class ClusterConfig:
    backend: Backend = "local"
    nnodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0  # 0 on CPU-only machines (DS_ACCELERATOR=cpu, gloo)
    rdzv_port: int = 29500
    max_restarts: int = 0
    # SLURM
    partition: str | None = None
    account: str | None = None
    time_limit: str = "01:00:00"
    cpus_per_task: int = 8
    output_dir: str = "runs/slurm"
    preempt_signal_s: int = 120  # ask SLURM for SIGUSR1 this long before the time limit
    requeue: bool = True
    # deepspeed launcher
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    # shell lines run before the launcher (module load, conda activate, exports)
    env_setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError("nnodes and nproc_per_node must be >= 1")
        if not 0 < self.rdzv_port < 65536:
            raise ValueError(f"rdzv_port must be a TCP port, got {self.rdzv_port}")
        if self.backend == "local" and self.nnodes != 1:
            raise ValueError("backend local runs on one node: set nnodes: 1 or use torchrun/slurm")
        if self.backend == "deepspeed" and self.nnodes > 1 and not self.hostfile:
            raise ValueError("backend deepspeed with nnodes > 1 needs a hostfile")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
