"""`pretrain evaluate CHECKPOINT --task [LABELLED]`: score a `pretrain finetune` checkpoint on its
task, beside the task's baseline, in one process (CPU is fine).

Recipe: verify the step and read the task its commit marker records (config, classes,
tokenizer) → consolidate the ZeRO shards (any world size) into the task model → read and
tokenize the labelled split (the task's validation split, or the file given), with the task's
bad-record policy → predict: the class with the highest logit, or greedy generation (a
decoder continues prompt + eos with the sampler of `pretrain.generate`, at temperature 0; an
encoder-decoder decodes greedily from the pad id) up to eos or ``max_target_len`` tokens →
the metrics (`pretrain.finetune.metrics`) of the model and of the baseline (the training
split's majority class; the input copied as the output) → a table on stdout (or ``--json``)
and an MLflow run linked to the fine-tuning run by tag.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch
from torch import nn

from data_pipeline.config_yaml import yaml_load
from data_pipeline.configuration import from_dict
from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint.reading import Checkpoint, consolidated_state_dict, open_checkpoint
from pretrain.checkpoint.tokenizer import load_checked
from pretrain.finetune.config import FinetuneConfig
from pretrain.finetune.examples import Example, load_split
from pretrain.finetune.heads import build_task_model
from pretrain.finetune.loader import validation_batches
from pretrain.finetune.metrics import classification_metrics, generation_metrics
from pretrain.finetune.trainer import FINETUNE_KEY
from pretrain.generate.sampling import SamplingConfig, sample, sample_seq2seq
from pretrain.model import Decoder, EncoderDecoder
from pretrain.model.build import DTYPES

logger = logging.getLogger(__name__)

BASELINES = {"classification": "majority class", "seq2seq": "copy the input"}


def task_of(checkpoint: Checkpoint) -> tuple[FinetuneConfig, dict[str, Any]]:
    record = checkpoint.marker.get(FINETUNE_KEY)
    if not isinstance(record, dict):
        raise ValueError(
            f"{checkpoint.directory} is not a `pretrain finetune` checkpoint (its commit "
            "marker records no task); score a pretraining checkpoint without --task"
        )
    tree = yaml_load(record["config"])
    return from_dict(FinetuneConfig, tree, source=f"{checkpoint.directory} (task)"), record


def load_task_model(
    checkpoint: Checkpoint,
    ft: FinetuneConfig,
    record: dict[str, Any],
    tokenizer: Tokenizer,
    precision: str,
) -> nn.Module:
    model = build_task_model(
        checkpoint.config.model, ft.task.kind, len(record["labels"]), tokenizer.special_ids.pad
    )
    missing, unexpected = model.load_state_dict(consolidated_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint.directory}: the weights do not fit the task model: missing "
            f"{missing}, unexpected {unexpected}"
        )
    return model.to(DTYPES[precision]).eval()


@torch.no_grad()
def classify(
    model: nn.Module,
    examples: list[Example],
    family: Any,
    tokenizer: Tokenizer,
    batch_size: int = 16,
) -> list[int]:
    special = tokenizer.special_ids
    predicted: list[int] = []
    for batch, rows in validation_batches(
        examples,
        kind="classification",
        family=family,
        pad_id=special.pad,
        eos_id=special.eos,
        rank=0,
        world_size=1,
        batch_size=batch_size,
    ):
        logits, _ = model(
            batch["input_ids"], None, attention_mask=batch.get("attention_mask")
        )  # (B, 1, C)
        guesses = logits[:, 0].float().argmax(-1).tolist()
        predicted += [g for g, row in zip(guesses, rows, strict=True) if row is not None]
    return predicted


@torch.no_grad()
def generate(model: nn.Module, example: Example, tokenizer: Tokenizer, max_len: int) -> str:
    """Greedy output for one example, up to eos or ``max_len`` tokens."""
    special = tokenizer.special_ids
    greedy = SamplingConfig(
        max_new_tokens=max_len + 1,
        temperature=0.0,
        stop_id=special.eos,
        vocab_size=tokenizer.vocab_size,
    )
    source = torch.tensor([[*example.source]], dtype=torch.long)
    if isinstance(model, Decoder):
        prompt = torch.cat([source, torch.tensor([[special.eos]])], dim=1)
        ids = sample(model, prompt, greedy)[0].tolist()
    elif isinstance(model, EncoderDecoder):
        ids = sample_seq2seq(model, source, greedy, start_id=special.pad)[0].tolist()
    else:
        raise ValueError(f"seq2seq generation needs a decoder or an encoder-decoder, got {model}")
    if special.eos in ids:
        ids = ids[: ids.index(special.eos)]
    return tokenizer.decode(ids)


def score(
    model: nn.Module,
    examples: list[Example],
    ft: FinetuneConfig,
    family: Any,
    tokenizer: Tokenizer,
    majority: int,
    num_labels: int,
) -> tuple[dict[str, float], dict[str, float], list[Any]]:
    """(model metrics, baseline metrics, predictions)."""
    if ft.task.kind == "classification":
        reference = [e.label for e in examples]
        predicted = classify(model, examples, family, tokenizer)
        ours = classification_metrics(predicted, reference, num_labels)
        base = classification_metrics([majority] * len(examples), reference, num_labels)
        return ours, base, predicted
    references = [e.target_text for e in examples]
    outputs = []
    for index, example in enumerate(examples):
        outputs.append(generate(model, example, tokenizer, ft.task.max_target_len))
        if (index + 1) % 50 == 0:
            logger.info("generated %d of %d", index + 1, len(examples))
    ours = generation_metrics(outputs, references)
    base = generation_metrics([e.source_text for e in examples], references)
    return ours, base, outputs


def table(report: dict[str, Any]) -> str:
    lines = [f"{'metric':<14}{'model':>10}{'baseline':>10}   baseline: {report['baseline']}"]
    for name, value in report["metrics"].items():
        lines.append(f"{name:<14}{value:>10.4f}{report['baseline_metrics'][name]:>10.4f}")
    lines.append(f"({report['examples']} examples of {report['data']}, step {report['step']})")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    checkpoint = open_checkpoint(args.checkpoint, args.step, list(args.overrides))
    ft, record = task_of(checkpoint)
    tokenizer = load_checked(record["tokenizer"], checkpoint.marker.get("tokenizer_hash"))
    url = ft.task.validation if args.task == "validation" else args.task
    labels = list(record["labels"])
    examples = load_split(url, ft.task, tokenizer, labels)  # checked before consolidating
    precision = args.precision or checkpoint.config.engine.precision
    model = load_task_model(checkpoint, ft, record, tokenizer, precision)
    family = checkpoint.config.model.family
    ours, base, _ = score(
        model, examples, ft, family, tokenizer, int(record["majority_label"]), len(labels)
    )
    report = {
        "checkpoint": str(checkpoint.directory),
        "step": checkpoint.step,
        "task": ft.task.kind,
        "data": url,
        "examples": len(examples),
        "metrics": ours,
        "baseline": BASELINES[ft.task.kind],
        "baseline_metrics": base,
        "pretrained": record.get("init"),
        "pretraining_run_id": record.get("pretraining_run_id"),
    }
    if not args.no_mlflow and checkpoint.config.tracking.enabled:
        from pretrain.tracking import log_evaluation

        report["mlflow_run_id"] = log_evaluation(
            checkpoint.config,
            training_run_id=checkpoint.run_id,
            step=checkpoint.step,
            metrics={
                **{f"task/{k}": v for k, v in ours.items()},
                **{f"baseline/{k}": v for k, v in base.items()},
            },
            params={"task": ft.task.kind, "data": url, "precision": precision},
            report=json.dumps(report, indent=1, default=str),
        )
    print(json.dumps(report, indent=1, default=str) if args.json else table(report), end="")
    if args.json:
        print()
    return 0
