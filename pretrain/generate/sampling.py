"""Sampling from a decoder, incrementally, with the Transformer-XL memory as the cache; and
from an encoder-decoder, whose decoder keeps no memory.

Each decoder step feeds only the newest token and attends over the cache (the hidden states
entering every layer for the tokens so far; see `pretrain.model.decoding`), so nothing is
recomputed through the layers. The encoder-decoder encodes the source once and runs its decoder
over the whole output so far at each step (T5's decoder as our model has it). The randomness
comes from one seeded ``torch.Generator`` drawn on the CPU, so a seed gives the same text on
any device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.model import Decoder, EncoderDecoder, decode_step
from pretrain.model.decoding import default_cache_len


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p (nucleus)
    seed: int = 0
    stop_id: int | None = None  # stop a row once it produced this id (e.g. eos)
    # Ids the tokenizer has: embedding tables are often padded past the vocabulary, and those
    # rows were never trained towards nor can be decoded.
    vocab_size: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set to -inf every logit outside the top ``k`` and outside the nucleus ``p``. (B, V)"""
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach p; the first always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return logits


def next_token(logits: Tensor, sampling: SamplingConfig, generator: torch.Generator) -> Tensor:
    """One token per row from the last position's logits (B, V) -> (B, 1)."""
    logits = logits.float()
    if sampling.vocab_size is not None and sampling.vocab_size < logits.size(-1):
        logits[:, sampling.vocab_size :] = float("-inf")
    if sampling.temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = logits.softmax(dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


def check_length(model: Decoder, prompt_len: int, max_new_tokens: int, cache_len: int) -> None:
    """Learned absolute positions end at max_seq_len: refuse instead of failing mid-way. The
    model is fed the prompt and every new token but the last, whose logits are not needed."""
    fed = prompt_len + max(max_new_tokens - 1, 0)
    if model.config.position == "learned" and fed > cache_len:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) - 1 = {fed} positions "
            f"exceeds this model's learned position table (max_seq_len "
            f"{model.config.max_seq_len}); shorten the prompt or the output"
        )


def iter_sample(
    model: Decoder,
    prompt: Tensor,
    sampling: SamplingConfig,
    *,
    cache_len: int | None = None,
) -> Iterator[Tensor]:
    """Continue ``prompt`` (B, T0): yield each new token (B, 1) as soon as it is drawn, up to
    ``max_new_tokens``. A row that produced ``stop_id`` keeps producing it (as padding) until
    every row has; then generation stops. The caller may stop early (close the generator):
    nothing is computed ahead of what was yielded but the next token's logits."""
    if not isinstance(model, Decoder):
        raise TypeError(f"generation needs a decoder, got a {model.config.family}")
    sampling.validate()
    size = default_cache_len(model) if cache_len is None else cache_len
    check_length(model, prompt.size(1), sampling.max_new_tokens, size)
    if sampling.max_new_tokens == 0:
        return
    generator = torch.Generator().manual_seed(sampling.seed)
    with torch.no_grad():
        logits, cache = decode_step(model, prompt, None, cache_len=size)  # prefill
    done = torch.zeros(prompt.size(0), 1, dtype=torch.bool, device=prompt.device)
    for step in range(sampling.max_new_tokens):
        with torch.no_grad():
            token = next_token(logits[:, -1], sampling, generator)  # (B, 1)
        if sampling.stop_id is not None:
            token = token.masked_fill(done, sampling.stop_id)
            done |= token == sampling.stop_id
        yield token
        if bool(done.all()) or step == sampling.max_new_tokens - 1:
            return
        with torch.no_grad():
            logits, cache = decode_step(model, token, cache, cache_len=size)


def sample(
    model: Decoder,
    prompt: Tensor,
    sampling: SamplingConfig,
    *,
    cache_len: int | None = None,
) -> Tensor:
    """Continue ``prompt`` (B, T0) -> the new tokens (B, <= max_new_tokens): `iter_sample` to
    its end."""
    out = list(iter_sample(model, prompt, sampling, cache_len=cache_len))
    if not out:
        return prompt[:, :0]
    return torch.cat(out, dim=1)


def sample_seq2seq(
    model: EncoderDecoder, source: Tensor, sampling: SamplingConfig, start_id: int
) -> Tensor:
    """The output for ``source`` (B, S) -> (B, <= max_new_tokens) new tokens, the decoder
    started from ``start_id`` (the pad id, as the span collator shifts targets). Rows that
    produced ``stop_id`` keep producing it until every row has, as `iter_sample`."""
    sampling.validate()
    generator = torch.Generator().manual_seed(sampling.seed)
    out = source.new_full((source.size(0), 1), start_id)
    done = torch.zeros(source.size(0), 1, dtype=torch.bool, device=source.device)
    with torch.no_grad():
        encoded, _ = model.encode(source, None, 0)
        for _ in range(sampling.max_new_tokens):
            token = next_token(model.decode(out, encoded)[:, -1], sampling, generator)
            if sampling.stop_id is not None:
                token = token.masked_fill(done, sampling.stop_id)
                done |= token == sampling.stop_id
            out = torch.cat([out, token], dim=1)
            if bool(done.all()):
                break
    return out[:, 1:]
