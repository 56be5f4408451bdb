"""Labelled records -> token ids -> batches, for each kind of task and model family.

The batches use the pretraining batches' keys (`pretrain.batch_loss`), so the trainer's one
forward + loss switch serves fine-tuning too:

- classification: ``input_ids`` (B, L) padded on the right, and the class index as the one
  target of each row (B, 1) under the family's target key (decoder ``targets``, encoder
  ``labels``); the model (`pretrain.finetune.heads`) returns (B, 1, classes) logits. An
  encoder's batch adds ``attention_mask`` (B, L), True at real tokens, so its bidirectional
  attention and its pooling skip the pads; a decoder's causal attention never reads the pads
  after a row's last token, so its batch needs none (and keeps SDPA's fast causal path).
- seq2seq, decoder: prompt + eos + completion + eos as one row; the targets are the next tokens
  on the completion (and its eos) only, ``IGNORE_INDEX`` on the prompt and the padding.
- seq2seq, encoder-decoder: ``encoder_input_ids`` the source, ``decoder_input_ids`` the target
  shifted right from the pad id (as in span corruption), ``decoder_targets`` target + eos;
  ``attention_mask`` (B, S) marks the source's real tokens, for the encoder's attention and
  the decoder's cross-attention.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass

import torch

from data_pipeline.console import first_process
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import Family
from pretrain.finetune.config import TaskConfig
from pretrain.finetune.records import BadRecordError, SkipCounts, read_records
from pretrain.loader import Batch
from pretrain.objectives import IGNORE_INDEX

logger = logging.getLogger(__name__)

SUPPORTED: dict[str, tuple[Family, ...]] = {
    "classification": ("encoder", "decoder"),
    "seq2seq": ("encoder_decoder", "decoder"),
}


@dataclass(frozen=True)
class Example:
    source: tuple[int, ...]  # the text (classification) or source/prompt ids, cut to max_len
    target: tuple[int, ...]  # seq2seq target ids, cut to max_target_len; () for classification
    label: int  # class index; -1 for seq2seq
    source_text: str
    target_text: str  # the reference (seq2seq) or the label's name (classification)


def check_supported(kind: str, family: Family) -> None:
    if family not in SUPPORTED[kind]:
        raise ValueError(
            f"a {kind} task needs a model of family {' or '.join(SUPPORTED[kind])}; this "
            f"checkpoint's model is a {family}"
        )


def fields(task: TaskConfig) -> tuple[str, str]:
    if task.kind == "classification":
        return task.text_field, task.label_field
    return task.source_field, task.target_field


def read_split(url: str, task: TaskConfig) -> tuple[list[tuple[str, str, str]], SkipCounts]:
    """(source text, target text or label, where) of every usable record of ``url``."""
    records, counts = read_records(
        url,
        fields(task),
        fmt=task.format,
        on_bad=task.on_bad_record,
        storage_options=task.storage_options,
    )
    return [(r.fields[0], r.fields[1], r.where) for r in records], counts


def encode_split(
    rows: list[tuple[str, str, str]],
    task: TaskConfig,
    tokenizer: Tokenizer,
    labels: list[str],
    counts: SkipCounts,
    url: str,
) -> list[Example]:
    """Tokenize ``rows``; a label outside ``labels`` is a bad record (counted or refused)."""
    index = {name: i for i, name in enumerate(labels)}
    examples: list[Example] = []
    cut = 0
    for source_text, second, where in rows:
        if task.kind == "classification" and second not in index:
            reason = f"label {second!r} is not one of the task's {len(labels)} labels"
            if task.on_bad_record == "fail":
                raise BadRecordError(f"{where}: {reason}")
            counts.add("unknown label", where)
            continue
        source = tokenizer.encode(source_text)
        target = tokenizer.encode(second) if task.kind == "seq2seq" else []
        if not source or (task.kind == "seq2seq" and not target):
            if task.on_bad_record == "fail":
                raise BadRecordError(f"{where}: the text encodes to no token")
            counts.add("no token", where)
            continue
        cut += len(source) > task.max_len or len(target) > task.max_target_len
        examples.append(
            Example(
                source=tuple(source[: task.max_len]),
                target=tuple(target[: task.max_target_len]),
                label=index[second] if task.kind == "classification" else -1,
                source_text=source_text,
                target_text=second,
            )
        )
    # Every rank reads the whole split: its first process speaks for all.
    skipped_here = any(r in counts.by_reason for r in ("unknown label", "no token"))
    if counts.skipped and skipped_here and first_process():
        logger.warning("%s: %s", url, counts.describe())
    if cut and first_process():
        logger.info(
            "%s: %d of %d examples cut to max_len %d / max_target_len %d tokens",
            url,
            cut,
            len(examples),
            task.max_len,
            task.max_target_len,
        )
    if not examples:
        raise BadRecordError(f"{url}: no usable example ({counts.describe()})")
    return examples


def training_labels(rows: list[tuple[str, str, str]], task: TaskConfig) -> list[str]:
    """The classes: the configured list, or the training split's labels sorted."""
    if task.kind != "classification":
        return []
    return list(task.labels) or sorted({label for _, label, _ in rows})


def majority_label(examples: list[Example]) -> int:
    """The most frequent class (the smallest index among ties): the classification baseline."""
    counts = Counter(e.label for e in examples)
    return min(counts, key=lambda label: (-counts[label], label))


def fingerprint(examples: list[Example], kind: str) -> str:
    """The training examples' identity: a resumed run refuses other data."""
    digest = hashlib.sha256(kind.encode())
    for e in examples:
        digest.update(repr((e.source, e.target, e.label)).encode())
    return digest.hexdigest()


def row_length(example: Example, kind: str, family: Family) -> int:
    """Positions the model reads for ``example`` (what learned positions must cover)."""
    if kind == "seq2seq" and family == "decoder":
        return len(example.source) + len(example.target) + 1
    return max(len(example.source), len(example.target) + 1)


def collate(
    examples: list[Example | None], kind: str, family: Family, pad_id: int, eos_id: int
) -> Batch:
    """One batch; ``None`` rows (filler, so every rank runs as many batches) carry no target."""
    rows = [e for e in examples if e is not None]
    width = max(row_length(e, kind, family) for e in rows) if rows else 1
    size = len(examples)
    if kind == "classification":
        ids = torch.full((size, width), pad_id, dtype=torch.long)
        real = torch.zeros((size, width), dtype=torch.bool)
        target = torch.full((size, 1), IGNORE_INDEX, dtype=torch.long)
        for b, e in enumerate(examples):
            if e is None:
                ids[b, 0] = eos_id  # one real token, so the pooling has something to read
                real[b, 0] = True
                continue
            ids[b, : len(e.source)] = torch.tensor(e.source)
            real[b, : len(e.source)] = True
            target[b, 0] = e.label
        if family == "decoder":
            return {"input_ids": ids, "targets": target}
        return {"input_ids": ids, "labels": target, "attention_mask": real}
    if family == "decoder":
        ids = torch.full((size, width), pad_id, dtype=torch.long)
        target = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
        for b, e in enumerate(examples):
            if e is None:
                continue
            row = [*e.source, eos_id, *e.target, eos_id]
            ids[b, : len(row) - 1] = torch.tensor(row[:-1])
            start = len(e.source)  # this position reads eos and predicts the first target
            target[b, start : len(row) - 1] = torch.tensor(row[start + 1 :])
        return {"input_ids": ids, "targets": target}
    enc_width = max((len(e.source) for e in rows), default=1)
    dec_width = max((len(e.target) + 1 for e in rows), default=1)
    encoder = torch.full((size, enc_width), pad_id, dtype=torch.long)
    # A filler row's source stays all pad and unmasked (attention reads every key of a row
    # with no real one, see `real_keys`); it has no target.
    source = torch.zeros((size, enc_width), dtype=torch.bool)
    decoder = torch.full((size, dec_width), pad_id, dtype=torch.long)
    target = torch.full((size, dec_width), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        if e is None:
            continue
        encoder[b, : len(e.source)] = torch.tensor(e.source)
        source[b, : len(e.source)] = True
        decoder[b, 1 : len(e.target) + 1] = torch.tensor(e.target)
        target[b, : len(e.target) + 1] = torch.tensor([*e.target, eos_id])
    return {
        "encoder_input_ids": encoder,
        "decoder_input_ids": decoder,
        "decoder_targets": target,
        "attention_mask": source,
    }


@dataclass
class TaskData:
    """Both splits of a task, tokenized, and what scoring needs to know about the classes."""

    train: list[Example]
    validation: list[Example]
    labels: list[str]  # classification: the head's classes in order
    skipped: dict[str, int]  # records skipped per split

    @property
    def majority(self) -> int:
        return majority_label(self.train) if self.labels else -1


def load_task(task: TaskConfig, tokenizer: Tokenizer, labels: list[str] | None = None) -> TaskData:
    """Read and tokenize both splits; ``labels`` (a fine-tuned model's classes) or the
    configured or training labels."""
    train_rows, train_counts = read_split(task.train, task)
    classes = labels if labels is not None else training_labels(train_rows, task)
    train = encode_split(train_rows, task, tokenizer, classes, train_counts, task.train)
    validation = load_split(task.validation, task, tokenizer, classes)
    return TaskData(train, validation, classes, {"train": train_counts.skipped})


def load_split(
    url: str, task: TaskConfig, tokenizer: Tokenizer, labels: list[str]
) -> list[Example]:
    rows, counts = read_split(url, task)
    return encode_split(rows, task, tokenizer, labels, counts, url)
