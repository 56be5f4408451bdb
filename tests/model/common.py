"""Small configs and helpers shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch

from pretrain.config import ModelConfig
from pretrain.model import build_model
from pretrain.model.families import LanguageModel

VOCAB = 64


def tiny_config(**overrides: Any) -> ModelConfig:
    """Two layers, 32 dims: builds in milliseconds."""
    fields: dict[str, Any] = dict(
        family="decoder", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64
    )
    fields.update(overrides)
    config = ModelConfig(**fields)
    config.validate()
    return config


def tiny_model(
    seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any
) -> LanguageModel:
    """An initialised model in eval mode (no dropout), float64 by default so that equivalence
    tests can use tight tolerances."""
    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides)).to(dtype).eval()


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
