"""Cluster profiles (`configs/cluster/*.yaml`): how and where a training job is launched.

A profile says nothing about the model or the data: the same experiment YAML runs under any
profile. Command-line flags of `pretrain-launch` (``--nnodes``, ``--node-rank`` ...) are applied as
dotted overrides of this schema, so they are type-checked exactly like the file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["local", "torchrun", "deepspeed", "slurm"]
SlurmLauncher = Literal["torchrun", "deepspeed"]


@dataclass
class ClusterConfig:
    backend: Backend = "local"
    job_name: str = ""  # empty: the experiment's name (scripts and SLURM jobs are named by it)
    nnodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0  # 0 on CPU-only machines (DS_ACCELERATOR=cpu, gloo)
    python: str = "python3"  # interpreter on every node (inside env_setup's environment)
    # Rendezvous: torchrun's c10d store, or DeepSpeed's MASTER_ADDR. SLURM uses its first node.
    rdzv_host: str = "127.0.0.1"
    rdzv_port: int = 29500
    rdzv_id: str = "mnemos"  # torchrun: every agent of one job passes the same id
    node_rank: int | None = None  # torchrun: 0 marks the rendezvous host (preflight checks port)
    max_restarts: int = 0  # torchrun: restart all workers this often after a failure
    # Collective timeout passed to the trainer as engine.dist_timeout_s (None: the experiment's).
    dist_timeout_s: int | None = None
    output_dir: str = "runs/launch"  # rendered scripts, SLURM logs, hostfiles
    # SLURM
    partition: str | None = None
    account: str | None = None
    time_limit: str = "01:00:00"
    cpus_per_task: int = 8
    mem: str | None = None  # e.g. "0" (all of the node) or "200G"
    preempt_signal_s: int = 120  # ask SLURM for SIGUSR1 this long before the time limit
    requeue: bool = True
    slurm_launcher: SlurmLauncher = "torchrun"  # per node: srun + torchrun, or one deepspeed
    sbatch_extra: list[str] = field(default_factory=list)  # more "#SBATCH ..." options
    # deepspeed launcher
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    deepspeed_launcher: str = "pdsh"  # pdsh (needs passwordless ssh), openmpi, mvapich, ...
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
        if self.include and self.exclude:
            raise ValueError("include and exclude are mutually exclusive (DeepSpeed launcher)")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}"
            )
        if self.dist_timeout_s is not None and self.dist_timeout_s < 1:
            raise ValueError(f"dist_timeout_s must be >= 1, got {self.dist_timeout_s}")
        if self.preempt_signal_s < 1:
            raise ValueError(f"preempt_signal_s must be >= 1, got {self.preempt_signal_s}")
        if self.gpus_per_node and self.gpus_per_node < self.nproc_per_node:
            raise ValueError(
                f"nproc_per_node ({self.nproc_per_node}) exceeds gpus_per_node "
                f"({self.gpus_per_node}): one process per GPU"
            )


def add_cluster_set_argument(parser: argparse.ArgumentParser, *, example: str) -> None:
    """``-c KEY=VALUE`` (repeatable): any cluster profile key, from the command line."""
    parser.add_argument(
        "-c",
        "--cluster-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a cluster profile key (e.g. {example})",
    )
