"""Incremental decoding for decoders, with the Transformer-XL memory as the cache.

The cache is the model's memory: per layer, the hidden states entering that layer for every
token seen so far (``mem_len`` set to the cache size). Each step feeds only the new tokens and
attends over the cache, so nothing is recomputed through the layers; unlike a key/value cache,
each step does re-project the cached states to keys and values (Transformer-XL's trade-off:
one cache format for training and generation).

With learned absolute positions the cache must hold the whole sequence (up to
``max_seq_len``); with relative or rotary positions a cache shorter than the sequence slides
(the Transformer-XL evaluation regime).

Sampling on top of this (temperature, top-k, top-p, stop ids, a seeded generator) is
`pretrain.generate.sampling.sample`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pretrain.model.families import Decoder


def default_cache_len(model: Decoder) -> int:
    config = model.config
    if config.position == "learned":
        return config.max_seq_len
    return max(config.mem_len, config.max_seq_len)


@torch.no_grad()
def decode_step(
    model: Decoder, tokens: Tensor, cache: list[Tensor] | None, *, cache_len: int | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Feed ``tokens`` (B, t) after ``cache`` -> (logits (B, t, V), cache grown by t tokens and
    cut to ``cache_len``)."""
    size = default_cache_len(model) if cache_len is None else cache_len
    logits, new_cache = model(tokens, cache, mem_len=size)
    return logits, new_cache
