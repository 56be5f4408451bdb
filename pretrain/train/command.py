"""`pretrain train`: the recipe. Resolve the config → build the trainer (engine, loaders,
tracker from the config) → resume if a committed checkpoint exists → train.

Expected failures (a corrupt checkpoint, a dataset that does not match, repeated non-finite
losses) are turned into ``error: ...`` and an exit code by `pretrain.cli`, like every command's.
"""

from __future__ import annotations

import argparse

from data_pipeline.config_cli import resolve_config
from pretrain.config import ExperimentConfig
from pretrain.train.trainer import Trainer


def main(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is None:
        return 0
    Trainer(config).train()
    return 0
