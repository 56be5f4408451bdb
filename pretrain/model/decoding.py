"""Incremental decoding for decoders, with the Transformer-XL memory as the cache.

The cache is the model's memory: per layer, the hidden states entering that layer for every
token seen so far (``mem_len`` set to the cache size). Each step feeds only the new tokens and
attends over the cache, so nothing is recomputed through the layers; unlike a key/value cache,
each step does re-project the cached states to keys and values (Transformer-XL's trade-off:
one cache format for training and generation).

With learned absolute positions the cache must hold the whole sequence (up to
``max_seq_len``); with relative or rotary positions a cache shorter than the sequence slides
(the Transformer-XL evaluation regime).
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


@torch.no_grad()
def generate(
    model: Decoder,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    cache_len: int | None = None,
) -> Tensor:
    """Continue ``prompt`` (B, T0) by ``max_new_tokens`` -> (B, T0 + max_new_tokens).
    ``temperature`` 0 is greedy; otherwise sample, optionally from the ``top_k`` logits."""
    if not isinstance(model, Decoder):
        raise TypeError(f"incremental decoding needs a Decoder, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    logits, cache = decode_step(model, prompt, None, cache_len=cache_len)  # prefill
    out = [prompt]
    for step in range(max_new_tokens):
        last = logits[:, -1].float()  # (B, V)
        if temperature == 0.0:
            token = last.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            last = last / temperature
            if top_k is not None:
                kth = last.topk(min(top_k, last.size(-1)), dim=-1).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            probs = last.softmax(dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompt.device)
        out.append(token)
        if step == max_new_tokens - 1:
            break  # the last token's logits are not needed
        logits, cache = decode_step(model, token, cache, cache_len=cache_len)
    model.train(was_training)
    return torch.cat(out, dim=1)
