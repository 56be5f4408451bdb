"""The typed schema of a fine-tuning run: where the pretrained model is, the task and its data,
and the training, engine, checkpoint and tracking sections of a pretraining run.

Imports no torch, like `pretrain.config`, so a fine-tuning config is checked anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrain.config import (
    CheckpointConfig,
    EngineConfig,
    TrackingConfig,
    TrainConfig,
    check_experiment_name,
)

TaskKind = Literal["classification", "seq2seq"]
RecordFormat = Literal["auto", "jsonl", "csv", "parquet"]


@dataclass
class TaskConfig:
    """A labelled task: its kind, its two splits and the names of their fields.

    Classification reads ``text_field`` and ``label_field``; seq2seq reads ``source_field`` and
    ``target_field``. Files are JSON Lines, CSV or Parquet, local or any fsspec URL."""

    kind: TaskKind
    train: str  # labelled training records
    validation: str  # labelled validation records (scored during and after training)
    format: RecordFormat = "auto"  # auto: from the file name (.jsonl/.json, .csv, .parquet)
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"
    target_field: str = "target"
    # Classification: the classes, in the order of the head's outputs; empty: the training
    # split's labels, sorted.
    labels: list[str] = field(default_factory=list)
    max_len: int = 128  # tokens of a text or source (longer ones are cut, and counted)
    max_target_len: int = 32  # tokens of a target (seq2seq), eos not included
    on_bad_record: Literal["fail", "skip"] = "fail"  # skip: count and report, as in prepare
    storage_options: dict[str, str] = field(default_factory=dict)  # fsspec, e.g. an endpoint

    def validate(self) -> None:
        if not self.train or not self.validation:
            raise ValueError("task.train and task.validation must name labelled files")
        if self.max_len < 1 or self.max_target_len < 1:
            raise ValueError("max_len and max_target_len must be >= 1")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")


@dataclass
class FinetuneConfig:
    """One fine-tuning run. ``init`` is a pretraining checkpoint (its ``checkpoint.dir`` or one
    ``step_NNNNNNN``, written by any world size) or a native export (`pretrain export`)."""

    init: str
    task: TaskConfig
    name: str = "finetune"
    init_step: int | None = None  # of a checkpoint root; default: its newest committed step
    # "random": the same architecture from random weights (what pretraining buys, measured).
    weights: Literal["pretrained", "random"] = "pretrained"
    tokenizer: str | None = None  # the tokenizer artifact, when the recorded path is not valid
    dropout: float = 0.0  # model.dropout while fine-tuning
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        check_experiment_name(self.name)
        if not self.init:
            raise ValueError("init must name a pretraining checkpoint or an export")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.checkpoint.dir:
            self.checkpoint.dir = f"runs/{self.name}/checkpoints"
        if not self.tracking.experiment:
            self.tracking.experiment = self.name
