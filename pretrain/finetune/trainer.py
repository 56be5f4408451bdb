"""The fine-tuning run: the pretraining trainer (`pretrain.train.trainer.Trainer`) with the
task's model, weights, loader and validation. Steps, the loss normalisation over all ranks,
non-finite handling, preemption, checkpoints (and exact resume at any world size), logging and
MLflow are the trainer's own.

What differs: the engine holds the task model (`pretrain.finetune.heads`) with the pretrained
weights copied in (not when resuming: the fine-tune's own checkpoint has them); the loader is
`ExampleLoader`; validation scores the task (loss, and accuracy and macro-F1 for
classification, teacher-forced token accuracy for seq2seq); each commit marker records the
task (its config, classes and provenance), so `pretrain evaluate --task` can rebuild the model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from data_pipeline.configuration import to_yaml
from data_pipeline.tokenizer import Tokenizer
from pretrain.batch_loss import forward_loss
from pretrain.config import DataConfig, ExperimentConfig
from pretrain.distributed import engine as eng
from pretrain.distributed.process_group import all_reduce_sum
from pretrain.finetune.config import FinetuneConfig
from pretrain.finetune.examples import TaskData, check_supported, fingerprint, row_length
from pretrain.finetune.heads import model_factory, pretrained_names
from pretrain.finetune.loader import ExampleLoader, validation_batches
from pretrain.finetune.metrics import classification_metrics
from pretrain.finetune.source import PretrainedSource
from pretrain.objectives import IGNORE_INDEX
from pretrain.train.trainer import StepLoader, Trainer

FINETUNE_KEY = "finetune"  # the commit marker's record of the task
PRETRAINING_RUN_TAG = "mnemos.pretraining_run_id"


def experiment_config(
    ft: FinetuneConfig, source: PretrainedSource, data: TaskData
) -> ExperimentConfig:
    """The trainer's config: the pretrained architecture without memory (examples are
    independent), the fine-tune's dropout, and the fine-tune's own sections."""
    check_supported(ft.task.kind, source.model.family)
    longest = max(
        row_length(e, ft.task.kind, source.model.family) for e in [*data.train, *data.validation]
    )
    model = replace(source.model, mem_len=0, dropout=ft.dropout)
    if model.position == "learned" and longest > model.max_seq_len:
        raise ValueError(
            f"the longest example needs {longest} positions, past this model's learned table "
            f"(max_seq_len {model.max_seq_len}): lower task.max_len / task.max_target_len"
        )
    train = replace(ft.train, seq_len=longest)  # seq_len: for tokens/s and MFU only
    config = ExperimentConfig(
        model=model,
        name=ft.name,
        data=DataConfig(seed=ft.train.seed),
        train=train,
        engine=ft.engine,
        checkpoint=ft.checkpoint,
        tracking=ft.tracking,
    )
    config.validate()
    return config


class FinetuneTrainer(Trainer):
    def __init__(
        self,
        ft: FinetuneConfig,
        source: PretrainedSource,
        data: TaskData,
        **kwargs: Any,
    ) -> None:
        self.ft, self.source, self.data = ft, source, data
        self.kind = ft.task.kind
        self.tokenizer: Tokenizer = source.tokenizer
        self.data_fingerprint = fingerprint(data.train, self.kind)
        super().__init__(experiment_config(ft, source, data), **kwargs)
        self.log(
            f"{self.kind} task: {len(data.train)} training and {len(data.validation)} "
            f"validation examples{f', {len(data.labels)} classes' if data.labels else ''}; "
            f"from {source.provenance['init']} ({ft.weights} weights)"
        )

    def own_loaders(self) -> tuple[StepLoader | None, Any]:
        train = self.config.train
        special = self.tokenizer.special_ids
        loader = ExampleLoader(
            self.data.train,
            kind=self.kind,
            family=self.config.model.family,
            pad_id=special.pad,
            eos_id=special.eos,
            rank=self.rank,
            world_size=self.world_size,
            micro_batch_size=train.micro_batch_size,
            grad_accum=train.grad_accum,
            seed=train.seed,
            fingerprint=self.data_fingerprint,
        )
        return loader, self.data.validation

    def build_engine(self) -> eng.Engine:
        factory = model_factory(self.kind, len(self.data.labels), self.tokenizer.special_ids.pad)
        weights = None
        if self.resume_point is None and self.ft.weights == "pretrained":
            # Every rank reads them (small models; ZeRO-3 keeps rank 0's values).
            weights = pretrained_names(self.kind, self.source.read_weights())
        return eng.build(self.config, factory, weights)

    # -- what the run records ----------------------------------------------------------------

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "tokenizer_hash": self.tokenizer.hash,
            FINETUNE_KEY: {
                "config": to_yaml(self.ft),
                "labels": self.data.labels,
                "majority_label": self.data.majority,
                "tokenizer": str(self.tokenizer.path),
                **self.source.provenance,
            },
        }

    def run_tags(self) -> dict[str, str]:
        tags = {
            "dataset_fingerprint": self.data_fingerprint,
            "mnemos.kind": "finetune",
            "mnemos.task": self.kind,
            "mnemos.init_weights": self.ft.weights,
        }
        run = self.source.provenance.get("pretraining_run_id")
        if run:
            tags[PRETRAINING_RUN_TAG] = str(run)
        return tags

    def data_artifacts(self) -> dict[str, str]:
        summary = {
            "task": self.kind,
            "train": self.ft.task.train,
            "validation": self.ft.task.validation,
            "train_examples": len(self.data.train),
            "validation_examples": len(self.data.validation),
            "skipped_records": self.data.skipped,
            "labels": self.data.labels,
            "pretrained": self.source.provenance,
        }
        return {"task/summary.json": json.dumps(summary, indent=1, sort_keys=True, default=str)}

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Loss over the validation split's targets and the task's metrics, every example
        counted once whatever the world size."""
        family = self.config.model.family
        special = self.tokenizer.special_ids
        loss, targets, correct = 0.0, 0, 0
        predicted: list[int] = []
        reference: list[int] = []
        self.engine.model.eval()
        try:
            with torch.no_grad():
                for batch, _ in validation_batches(
                    self.data.validation,
                    kind=self.kind,
                    family=family,
                    pad_id=special.pad,
                    eos_id=special.eos,
                    rank=self.rank,
                    world_size=self.world_size,
                    batch_size=self.config.train.micro_batch_size,
                ):
                    parts = forward_loss(self.engine.model, self._to_device(batch), None, family)
                    loss += float(parts.loss_sum)
                    targets += parts.targets
                    real = parts.labels != IGNORE_INDEX
                    guess = parts.logits.float().argmax(-1)
                    correct += int((guess == parts.labels)[real].sum())
                    predicted += guess[real].tolist()
                    reference += parts.labels[real].tolist()
        finally:
            self.engine.model.train()
        totals = all_reduce_sum(torch.tensor([loss, float(targets), float(correct)]))
        count = max(float(totals[1]), 1.0)
        metrics = {"val/loss": float(totals[0]) / count}
        if self.kind == "classification":
            pairs: list[Any] = [None] * self.world_size
            dist.all_gather_object(pairs, (predicted, reference))
            every_p = [p for part in pairs for p in part[0]]
            every_r = [r for part in pairs for r in part[1]]
            scores = classification_metrics(every_p, every_r, len(self.data.labels))
            metrics.update({f"val/{k}": v for k, v in scores.items()})
        else:
            metrics["val/token_accuracy"] = float(totals[2]) / count
        return metrics

    def _validate_and_report(self) -> dict[str, float]:
        metrics = self.validate()
        self.tracker.log_metrics(metrics, self.state.step)
        self.log(
            f"validation at step {self.state.step}: "
            + " | ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in metrics.items())
        )
        return metrics
