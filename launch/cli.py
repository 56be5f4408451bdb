"""`pretrain-launch`: render a plain launch script for a cluster profile, check, and run it."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.config_cli import HelpFormatter
from data_pipeline.configuration import ConfigError, load_config
from data_pipeline.console import add_console_arguments, setup_console, verbosity
from launch import preflight
from launch.backends import render
from launch.config import ClusterConfig, add_cluster_set_argument
from launch.script import Job
from launch.supervise import supervise

logger = logging.getLogger(__name__)

EPILOG = """examples:
  # laptop / one node: 2 processes (CPU here; on a GPU node set nproc_per_node to the GPUs)
  pretrain-launch configs/cluster/local_cpu.yaml configs/experiments/shakespeare_xl.yaml
  # see the script without running it
  pretrain-launch configs/cluster/local_cpu.yaml configs/experiments/shakespeare_xl.yaml --dry-run
  # two nodes with torchrun: run the same command on both, with the first node's address
  pretrain-launch configs/cluster/torchrun.yaml EXP.yaml --nnodes 2 --rdzv-endpoint node1:29500
  # hostfile cluster with the DeepSpeed launcher (ssh/pdsh), two hosts only
  pretrain-launch configs/cluster/deepspeed_hostfile.yaml EXP.yaml --hostfile hosts \\
      --include 'node1@node2'
  # SLURM: renders and submits an sbatch script; -c sets any cluster key
  pretrain-launch configs/cluster/slurm_gpu.yaml EXP.yaml -c partition=gpu -c time_limit=2:00:00
  # trainer overrides follow the experiment, as with `pretrain train`
  pretrain-launch configs/cluster/local_cpu.yaml EXP.yaml train.max_steps=100 train.lr=1e-3
"""

# Flags that are shorthands for cluster keys (-c KEY=VALUE sets any of them, and the rest).
FLAGS = {
    "nnodes": "nnodes",
    "nproc_per_node": "nproc_per_node",
    "node_rank": "node_rank",
    "rdzv_id": "rdzv_id",
    "max_restarts": "max_restarts",
    "hostfile": "hostfile",
    "include": "include",
    "exclude": "exclude",
    "dist_timeout": "dist_timeout_s",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain-launch",
        description="Launch `pretrain train` on this machine or a cluster. The chosen backend "
        "renders a plain bash script, written under the profile's output_dir and then run "
        "(local, torchrun, deepspeed) or submitted with sbatch (slurm); --dry-run prints it.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_console_arguments(parser, "pretrain-launch")
    parser.add_argument("cluster", metavar="CLUSTER", help="cluster profile (configs/cluster/)")
    parser.add_argument(
        "rest",
        nargs="*",
        metavar="EXPERIMENT [KEY=VALUE ...]",
        help="experiment YAML, then overrides: experiment keys (train.lr=3e-4) go to the "
        "experiment, cluster keys (nnodes=2, env.NCCL_DEBUG=INFO) to the profile; without an "
        "experiment, the profile is only validated",
    )
    add_cluster_set_argument(parser, example="-c partition=gpu -c env.NCCL_DEBUG=INFO")
    parser.add_argument("--dry-run", action="store_true", help="print the script; run nothing")
    parser.add_argument("--no-preflight", action="store_true", help="skip the preflight checks")
    parser.add_argument("--script", metavar="PATH", help="where to write the script")
    parser.add_argument(
        "--wait", action="store_true", help="slurm: wait for the job to end (sbatch --wait)"
    )
    parser.add_argument("--nnodes", type=int)
    parser.add_argument("--nproc-per-node", type=int)
    parser.add_argument("--node-rank", type=int, help="torchrun: 0 on the rendezvous host")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="torchrun/deepspeed master")
    parser.add_argument("--rdzv-id", help="torchrun: job id shared by every node's agent")
    parser.add_argument("--max-restarts", type=int, help="torchrun: restarts after a failure")
    parser.add_argument("--hostfile", help="deepspeed: 'host slots=N' per line")
    parser.add_argument("--include", help="deepspeed: hosts/slots to use, e.g. 'n1@n2:0,1'")
    parser.add_argument("--exclude", help="deepspeed: hosts/slots to leave out")
    parser.add_argument(
        "--dist-timeout", type=int, metavar="S", help="collective timeout (engine.dist_timeout_s)"
    )
    return parser


def cluster_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    if args.rdzv_endpoint:
        host, _, port = args.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"error: --rdzv-endpoint must be HOST:PORT, got {args.rdzv_endpoint}")
        out += [f"rdzv_host={host}", f"rdzv_port={port}"]
    return [*out, *args.cluster_set]


def split_rest(rest: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(experiment, experiment overrides, cluster overrides): a KEY=VALUE whose first dotted
    part is a ClusterConfig field belongs to the profile, any other to the experiment."""
    from dataclasses import fields

    cluster_keys = {f.name for f in fields(ClusterConfig)}
    experiment = None
    if rest and "=" not in rest[0]:
        experiment, rest = rest[0], rest[1:]
    ours = [item for item in rest if item.split("=", 1)[0].split(".")[0] in cluster_keys]
    return experiment, [item for item in rest if item not in ours], ours


def experiment_name(experiment: str, overrides: list[str]) -> str:
    """The experiment's ``name``, which names its launch script and SLURM job."""
    from pretrain.config import ExperimentConfig  # torch-free, like this module

    return load_config(ExperimentConfig, experiment, overrides).name


def script_path(job: Job, given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    c = job.cluster
    node = f".node{c.node_rank}" if c.node_rank is not None else ""
    suffix = "sbatch" if c.backend == "slurm" else "sh"
    return job.output_dir / f"{c.job_name}.{c.backend}{node}.{suffix}"


def execute(job: Job, path: Path, wait: bool, verbose: bool = False) -> int:
    if job.cluster.backend == "slurm":
        cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)]
        logger.info("+ %s", " ".join(cmd))
        return subprocess.run(cmd, check=False).returncode
    return supervise(["bash", str(path)], launcher_report=verbose)


def main(argv: Sequence[str] | None = None) -> int:
    # Intermixed: trainer overrides may follow the flags (`... --nnodes 2 train.lr=1e-3`).
    args = build_parser().parse_intermixed_args(argv)
    setup_console(verbosity(args))
    experiment, overrides, cluster_keys = split_rest(args.rest)
    try:
        cluster = load_config(ClusterConfig, args.cluster, cluster_keys + cluster_overrides(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if experiment is None:
        print(f"{args.cluster}: valid ({cluster.backend}, {cluster.nnodes} node(s))")
        return 0
    if not cluster.job_name:
        try:
            cluster.job_name = experiment_name(experiment, overrides)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    job = Job(cluster, str(Path(experiment).resolve()), overrides, verbosity=verbosity(args))
    text = render(job)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    if not args.no_preflight:
        try:
            preflight.run(cluster, job.experiment, job.overrides)
        except preflight.PreflightError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
            return 1
    path = script_path(job, args.script)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    logger.info("running %s", path)
    return execute(job, path, args.wait, verbose=verbosity(args) > 0)


if __name__ == "__main__":
    sys.exit(main())
