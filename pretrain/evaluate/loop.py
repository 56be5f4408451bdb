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
import torch.distributed as dist
from torch import Tensor

from data_pipeline.progress import track
from pretrain.batch_loss import OBJECTIVES, Mems, forward_loss, to_device
from pretrain.config import ExperimentConfig, Family
from pretrain.distributed.process_group import all_reduce_sum, raise_together
from pretrain.loader import ShardError, ValidationLoader

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
        storage_options=config.data.storage_options,
    )


@torch.no_grad()
def evaluate_model(
    model: Callable[..., tuple[Tensor, Mems]],
    loader: ValidationLoader,
    settings: EvalSettings,
    *,
    family: Family,
    device: torch.device,
    show_progress: bool = False,
) -> dict[str, float]:
    """loss (mean nats per target), perplexity, accuracy and targets over the first
    ``settings.batches`` batches of ``loader`` (all of them for 0), memory of
    ``settings.mem_len`` carried from each batch to the next; bits per byte and bytes per token
    for decoders. ``model`` is a plain module (`pretrain evaluate`) or the trainer's DeepSpeed
    engine (its validation). Sums are reduced over the process group when there is one.
    ``show_progress``: a bar or progress lines with the time left (`pretrain evaluate`; the
    trainer's validation is short and prints its result)."""
    run = functools.partial(model, mem_len=settings.mem_len)
    batches = settings.batches
    totals = torch.zeros(3, dtype=torch.float64)  # summed loss, targets, correct predictions
    mems: Mems | None = None
    limit = min(batches, len(loader)) if batches > 0 else len(loader)
    first_rank = not dist.is_initialized() or dist.get_rank() == 0
    shown = show_progress and first_rank
    read = iter(loader)
    # every rank has len(loader) batches
    for _ in track(range(limit), limit, "evaluate", enabled=shown, unit="batch"):
        failure: ShardError | None = None
        try:
            batch = next(read)
        except ShardError as err:
            failure = err
        raise_together(failure, ShardError)  # a bad shard on one rank stops them all, now
        batch = to_device(batch, device)
        parts = forward_loss(run, batch, mems, family)
        mems = parts.new_mems or None
        correct = (parts.logits.argmax(dim=-1) == parts.labels).sum()  # never IGNORE_INDEX
        totals += torch.tensor(
            [float(parts.loss_sum), float(parts.targets), float(correct)], dtype=torch.float64
        )
    close = getattr(read, "close", None)
    if close is not None:
        close()  # the loader's prefetch thread and open shards, when the limit came first
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
        # nats per token into bits per byte.
        bytes_per_token = loader.utf8_bytes / max(1, loader.tokens)
        metrics["bytes_per_token"] = bytes_per_token
        metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
    return metrics


def weighted_metrics(
    results: dict[str, dict[str, float]], weights: dict[str, float]
) -> dict[str, float]:
    """One source's metrics as they are; several: the weighted mean of each figure (weights
    normalised), perplexity of the mean loss, tokens summed."""
    if len(results) == 1:
        return dict(next(iter(results.values())))
    total = sum(weights.values())
    keys = set.intersection(*(set(m) for m in results.values()))
    out = {k: sum(weights[n] / total * m[k] for n, m in results.items()) for k in keys}
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    out["tokens"] = sum(m["tokens"] for m in results.values())
    return out
