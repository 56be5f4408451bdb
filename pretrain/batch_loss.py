"""One forward pass of any family on one loader batch: summed loss and target count.

The trainer normalises by the number of target tokens in the whole optimizer step across all
ranks (not per micro-batch), so every target token weighs the same whatever the padding or the
masking draw of its micro-batch. That needs sums here, not means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from pretrain.config import Family
from pretrain.loader import Batch, Objective
from pretrain.objectives import IGNORE_INDEX, shift_right, token_loss_sum

OBJECTIVES: dict[Family, Objective] = {
    "decoder": "causal_lm",
    "encoder": "mlm",
    "encoder_decoder": "span",
}

Mems = list[Tensor]


@dataclass
class LossParts:
    loss_sum: Tensor  # float32 scalar, summed over targets
    targets: int  # number of target tokens
    new_mems: Mems
    logits: Tensor


def target_count(batch: Batch, family: Family, pad_id: int) -> int:
    """Target tokens in ``batch``, known before the forward pass (for the step's normaliser)."""
    if family == "decoder":
        return int((batch["targets"] != IGNORE_INDEX).sum())
    if family == "encoder":
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return int((batch["decoder_targets"] != pad_id).sum())


def forward_loss(
    model: Callable[..., tuple[Tensor, Mems]],
    batch: Batch,
    mems: Mems | None,
    family: Family,
    pad_id: int,
) -> LossParts:
    """Run ``model`` (a DeepSpeed engine or a plain module) on ``batch``; memory in and out."""
    if family == "decoder":
        logits, new_mems = model(batch["input_ids"], mems)
        total, count = token_loss_sum(logits, batch["targets"])
    elif family == "encoder":
        logits, new_mems = model(batch["input_ids"], mems)
        total, count = token_loss_sum(logits, batch["labels"])
    else:
        targets = batch["decoder_targets"]
        decoder_inputs = shift_right(targets, pad_id)
        logits, new_mems = model(batch["encoder_input_ids"], decoder_inputs, mems)
        total, count = token_loss_sum(logits, targets.masked_fill(targets == pad_id, IGNORE_INDEX))
    return LossParts(total, int(count), new_mems, logits)
