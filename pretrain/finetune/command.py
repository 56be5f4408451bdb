"""`pretrain finetune`: the recipe. Resolve the config → open the pretrained model (checkpoint
of any world size, or export) and its tokenizer → read and tokenize the task's two splits
(bad records counted and skipped, or refused naming file:line) → build the fine-tuning trainer
(DeepSpeed engine with the task model, pretrained weights copied in) → resume if its own
committed checkpoint exists → train, validating on the task.

Any launcher works, as for `pretrain train` (torchrun, deepspeed, SLURM through
pretrain-launch); every rank reads the labelled files and the pretrained weights itself.
"""

from __future__ import annotations

import argparse

from data_pipeline.config_cli import resolve_config
from pretrain.finetune.config import FinetuneConfig
from pretrain.finetune.examples import check_supported, load_task
from pretrain.finetune.source import open_source
from pretrain.finetune.trainer import FinetuneTrainer


def main(args: argparse.Namespace) -> int:
    ft = resolve_config(FinetuneConfig, args)
    if ft is None:
        return 0
    source = open_source(ft.init, step=ft.init_step, tokenizer_path=ft.tokenizer)
    check_supported(ft.task.kind, source.model.family)
    data = load_task(ft.task, source.tokenizer)
    FinetuneTrainer(ft, source, data).train()
    return 0
