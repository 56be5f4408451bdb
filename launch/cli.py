"""`pretrain-launch`: submit a training job with a cluster profile."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data_pipeline.config_cli import add_config_arguments, resolve_config
from launch.config import ClusterConfig

EPILOG = """examples:
  pretrain-launch configs/cluster/local_cpu.yaml nproc_per_node=2 --print-config
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain-launch",
        description="Launch `pretrain train` on this machine or a cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, config_help="cluster profile YAML (configs/cluster/*.yaml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = resolve_config(ClusterConfig, args)
    if profile is not None:
        print(f"{args.config}: valid ({profile.backend}, {profile.nnodes} node(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
