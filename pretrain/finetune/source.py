"""The pretrained model a fine-tuning run starts from: a pretraining checkpoint written by any
world size (consolidated in this process by `pretrain.checkpoint.reading`) or a native export
(`pretrain.pretrained`). Its model config and tokenizer are read at once (cheap); its weights
only when wanted (a resumed fine-tune takes them from its own checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from data_pipeline.tokenizer import Tokenizer
from pretrain.config import ModelConfig
from pretrain.pretrained import is_export


@dataclass
class PretrainedSource:
    model: ModelConfig
    tokenizer: Tokenizer
    provenance: dict[str, Any]  # what it is: path, step, pretraining run id, dataset
    read_weights: Callable[[], dict[str, Tensor]]  # fp32, the pretrained module's names


def open_source(
    path: str, *, step: int | None = None, tokenizer_path: str | None = None
) -> PretrainedSource:
    if is_export(path):
        return _export(path, tokenizer_path)
    from pretrain.checkpoint.reading import consolidated_state_dict, open_checkpoint
    from pretrain.checkpoint.tokenizer import (
        checkpoint_tokenizer,
        load_checked,
        model_tokenizer_hash,
    )

    checkpoint = open_checkpoint(path, step)
    if tokenizer_path is not None:
        tokenizer = load_checked(tokenizer_path, model_tokenizer_hash(checkpoint))
    else:
        tokenizer = checkpoint_tokenizer(checkpoint)
    provenance = {
        "init": str(checkpoint.directory),
        "init_step": checkpoint.step,
        "pretraining_run_id": checkpoint.run_id,
        "pretraining_world_size": checkpoint.world_size,
        "pretraining_dataset": checkpoint.marker.get("fingerprint"),
        "tokenizer_hash": tokenizer.hash,
    }
    return PretrainedSource(
        checkpoint.config.model, tokenizer, provenance, lambda: consolidated_state_dict(checkpoint)
    )


def _export(path: str, tokenizer_path: str | None) -> PretrainedSource:
    from pretrain.pretrained import load_pretrained, read_info

    info = read_info(path)
    pretrained = load_pretrained(path)
    tokenizer = pretrained.tokenizer
    if tokenizer_path is not None:
        from pretrain.checkpoint.tokenizer import load_checked

        tokenizer = load_checked(tokenizer_path, info.get("tokenizer_hash"))
    if tokenizer is None:
        raise ValueError(f"{path} holds no tokenizer; set tokenizer=PATH")
    provenance = {
        "init": str(path),
        "init_step": info.get("step"),
        "pretraining_run_id": info.get("training_run_id"),
        "pretraining_world_size": info.get("training_world_size"),
        "pretraining_dataset": info.get("dataset_fingerprint"),
        "tokenizer_hash": tokenizer.hash,
    }
    state = {k: v.float() for k, v in pretrained.model.state_dict().items()}
    return PretrainedSource(pretrained.config, tokenizer, provenance, lambda: state)
