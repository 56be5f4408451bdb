"""One forward pass of any family on one loader batch: summed loss and target count.

The one per-family switch: which batch keys feed the model (`INPUTS`) and which hold its
targets (`TARGETS`). Every family's targets carry `IGNORE_INDEX` where nothing is predicted
(padding, positions MLM did not select), so no padding id is needed to compute a loss.

The trainer normalises by the number of target tokens in the whole optimizer step across all
ranks (not per micro-batch), so every target token weighs the same whatever the padding or the
masking draw of its micro-batch. That needs sums here, not means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.config import Family
from pretrain.loader import Batch, Objective
from pretrain.objectives import IGNORE_INDEX, token_loss_sum

OBJECTIVES: dict[Family, Objective] = {
    "decoder": "causal_lm",
    "encoder": "mlm",
    "encoder_decoder": "span",
}
INPUTS: dict[Family, tuple[str, ...]] = {
    "decoder": ("input_ids",),
    "encoder": ("input_ids",),
    "encoder_decoder": ("encoder_input_ids", "decoder_input_ids"),
}
TARGETS: dict[Family, str] = {
    "decoder": "targets",
    "encoder": "labels",
    "encoder_decoder": "decoder_targets",
}

Mems = list[Tensor]


@dataclass
class LossParts:
    loss_sum: Tensor  # float32 scalar, summed over targets
    targets: int  # number of target tokens
    new_mems: Mems
    logits: Tensor
    labels: Tensor  # the targets, IGNORE_INDEX where nothing is predicted


def target_count(batch: Batch, family: Family) -> int:
    """Target tokens in ``batch``, known before the forward pass (for the step's normaliser)."""
    return int((batch[TARGETS[family]] != IGNORE_INDEX).sum())


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device``, without the masks that change nothing: ``memory_reset`` when no
    row is flagged, ``attention_mask`` when every token is real. Decided here on the loader's
    CPU tensors: the model would otherwise ask the device (`blocks.usable_memory`,
    `attention.real_keys`), a host sync in every forward on a GPU."""
    dropped = {
        key
        for key, unchanged in (("memory_reset", _none_set), ("attention_mask", _all_set))
        if key in batch and batch[key].device.type == "cpu" and unchanged(batch[key])
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in dropped}


def _none_set(flags: Tensor) -> bool:
    return not bool(flags.any())


def _all_set(flags: Tensor) -> bool:
    return bool(flags.all())


def forward_loss(
    model: Callable[..., tuple[Tensor, Mems]], batch: Batch, mems: Mems | None, family: Family
) -> LossParts:
    """Run ``model`` (a DeepSpeed engine or a plain module) on ``batch``; memory in and out.
    The loaders' ``memory_reset`` (rows whose text breaks) goes with it, so training and
    evaluation drop memory at the same rows, and so does a padded batch's ``attention_mask``
    (fine-tuning: True at real tokens of the input, or of the source for an encoder-decoder)."""
    inputs = (batch[key] for key in INPUTS[family])
    logits, new_mems = model(
        *inputs,
        mems,
        memory_reset=batch.get("memory_reset"),
        attention_mask=batch.get("attention_mask"),
    )
    labels = batch[TARGETS[family]]
    total, count = token_loss_sum(logits, labels)
    return LossParts(total, int(count), new_mems, logits, labels)
