"""The models a task trains: a classifier around a family's network, or the family itself.

Classification replaces the family's vocabulary head with a linear layer over the classes:
an encoder's is read from the mean of its final hidden states over the real tokens (the pooled
head), a decoder's from the hidden state of the last real token (the only one that has read
the whole text). Seq2seq needs no new head: a decoder continues its prompt and an
encoder-decoder decodes its source with their language-model heads, as in pretraining.

Fine-tuned examples are independent: the models are built with ``mem_len`` 0, so no
Transformer-XL memory is carried from one batch to the next.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model import FAMILIES, LanguageModel

GatherFn = Callable[[list[nn.Parameter]], AbstractContextManager[object]]


class SequenceClassifier(nn.Module):
    """tokens (B, L) padded with ``pad_id`` on the right -> (class logits (B, 1, C), [])."""

    def __init__(self, config: ModelConfig, num_labels: int, pad_id: int) -> None:
        super().__init__()
        self.config = config
        self.pad_id = pad_id
        self.pooling = "mean" if config.family == "encoder" else "last"
        self.backbone: LanguageModel = FAMILIES[config.family](config)
        # The vocabulary head is not used: the family's forward then returns hidden states.
        if config.family == "encoder":
            self.backbone.head = nn.Identity()
        else:
            self.backbone.lm_head = nn.Identity()
        self.score = nn.Linear(config.d_model, num_labels)

    def forward(
        self,
        tokens: Tensor,
        mems: Any = None,
        *,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """``attention_mask`` (B, L) True at real tokens (`examples.collate` gives it to an
        encoder, whose attention must not read the pads); without it the real tokens are the
        non-pad ones. ``mems`` and ``memory_reset`` are the trainer's arguments to any model;
        examples are independent, so neither applies."""
        # (B, L, d), already normalised
        hidden, _ = self.backbone(tokens, None, attention_mask=attention_mask)
        real = tokens != self.pad_id if attention_mask is None else attention_mask.to(torch.bool)
        if self.pooling == "mean":
            weights = real.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        else:
            last = (real.sum(1) - 1).clamp(min=0)  # (B,)
            pooled = hidden[torch.arange(tokens.size(0), device=tokens.device), last]
        return self.score(pooled).unsqueeze(1), []

    @torch.no_grad()
    def init_weights(self, gather: GatherFn | None = None) -> None:
        """The backbone as a family initialises it (pretrained weights are loaded after), and
        the class head normal(0, init_std) with a zero bias."""
        gather = gather or (lambda params: nullcontext())
        self.backbone.init_weights(gather)
        with gather(list(self.score.parameters())):
            nn.init.normal_(self.score.weight, 0.0, self.config.init_std)
            nn.init.zeros_(self.score.bias)


def model_factory(kind: str, num_labels: int, pad_id: int) -> Callable[[ModelConfig], nn.Module]:
    """Builds the task's model from the (pretrained) model config."""
    if kind == "classification":
        return lambda config: SequenceClassifier(config, num_labels, pad_id)
    return lambda config: FAMILIES[config.family](config)


def pretrained_names(kind: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A pretrained model's weights under the names the task's model gives them."""
    if kind == "classification":
        return {f"backbone.{name}": value for name, value in state.items()}
    return state


def build_task_model(config: ModelConfig, kind: str, num_labels: int, pad_id: int) -> nn.Module:
    model = model_factory(kind, num_labels, pad_id)(config)
    model.init_weights()  # type: ignore[operator]
    return model
