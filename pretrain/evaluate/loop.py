"""The evaluation loop: one ordinary model over a validation split, memory carried along rows.

It is the trainer's validation (`Trainer.validate`) without DeepSpeed: the same
`ValidationLoader` layout (``streams`` one-pass streams over the split, rank r owning a
contiguous block of them), the same per-batch summed loss in float32, the same memory carried
from each batch to the next, the same ``batches`` limit. So with the checkpoint's own settings
(streams = its world size x micro-batch size, its seq_len, mem_len, eval_batches and precision)
it reproduces the number the training run logged as ``val/loss``, in any number of processes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pretrain.batch_loss import OBJECTIVES, Mems
from pretrain.config import ExperimentConfig, Family
from pretrain.distributed.process_group import all_reduce_sum
from pretrain.loader import Batch, ValidationLoader
from pretrain.model import LanguageModel
from pretrain.objectives import IGNORE_INDEX, shift_right, token_loss_sum

LOSS_NAMES: dict[Family, str] = {
    "decoder": "next-token loss",
    "encoder": "masked-token loss",
    "encoder_decoder": "span loss",
}


@dataclass(frozen=True)
class EvalSettings:
    split: str
    seq_len: int  # tokens per segment
    mem_len: int  # Transformer-XL memory per layer; 0 evaluates every segment on its own
    streams: int  # one-pass streams over the split, over all processes
    batches: int  # segments per stream to evaluate; 0: the whole split


def _forward(
    model: Callable[..., tuple[Tensor, Mems]],
    batch: Batch,
    mems: Mems | None,
    family: Family,
    pad_id: int,
) -> tuple[Tensor, Tensor, Mems]:
    """(logits, targets with IGNORE_INDEX where nothing is predicted, new memory)."""
    if family == "decoder":
        logits, new_mems = model(batch["input_ids"], mems)
        return logits, batch["targets"], new_mems
    if family == "encoder":
        logits, new_mems = model(batch["input_ids"], mems)
        return logits, batch["labels"], new_mems
    targets = batch["decoder_targets"]
    logits, new_mems = model(batch["encoder_input_ids"], shift_right(targets, pad_id), mems)
    return logits, targets.masked_fill(targets == pad_id, IGNORE_INDEX), new_mems


def validation_loader(
    config: ExperimentConfig,
    manifest_url: str,
    settings: EvalSettings,
    *,
    rank: int,
    world_size: int,
    expected_tokenizer_hash: str | None,
) -> ValidationLoader:
    if settings.streams % world_size:
        raise ValueError(
            f"{settings.streams} streams do not divide over {world_size} processes; "
            "choose --streams as a multiple of the process count"
        )
    return ValidationLoader(
        manifest_url,
        rank=rank,
        world_size=world_size,
        batch_size=settings.streams // world_size,
        seq_len=settings.seq_len,
        objective=OBJECTIVES[config.model.family],
        seed=config.data.seed,
        data_config=replace(config.data, validation_split=settings.split),
        expected_tokenizer_hash=expected_tokenizer_hash,
        expected_vocab_size=config.model.vocab_size,
    )


@torch.no_grad()
def evaluate_model(
    model: LanguageModel,
    loader: ValidationLoader,
    settings: EvalSettings,
    *,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """loss (mean nats per target), perplexity, accuracy and targets over the first
    ``settings.batches`` batches of ``loader`` (all of them for 0); bits per byte and bytes per
    token for decoders. Sums are reduced over the process group when there is one."""
    family: Family = model.config.family
    run = functools.partial(model, mem_len=settings.mem_len)
    totals = torch.zeros(3, dtype=torch.float64)  # summed loss, targets, correct predictions
    mems: Mems | None = None
    limit = settings.batches if settings.batches > 0 else len(loader)
    for index, batch in enumerate(loader):
        if index >= limit:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, targets, new_mems = _forward(run, batch, mems, family, pad_id)
        mems = new_mems or None
        loss_sum, count = token_loss_sum(logits, targets)
        correct = (logits.argmax(dim=-1) == targets).sum()  # IGNORE_INDEX never equals an id
        totals += torch.tensor([float(loss_sum), float(count), float(correct)], dtype=torch.float64)
    totals = all_reduce_sum(totals)
    targets_total = float(totals[1])
    loss = float(totals[0] / totals[1].clamp(min=1))
    metrics = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "accuracy": float(totals[2]) / max(1.0, targets_total),
        "tokens": targets_total,
    }
    if family == "decoder":
        # The manifest counts the split's UTF-8 bytes and tokens exactly; their ratio turns
        # nats per token into bits per byte (the trainer's val/bits_per_byte, same formula).
        bytes_per_token = loader.utf8_bytes / max(1, loader.tokens)
        metrics["bytes_per_token"] = bytes_per_token
        metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
    return metrics
