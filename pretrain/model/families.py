"""The three model families: Decoder (+ LM head), Encoder (+ MLM head) and a T5-style
EncoderDecoder (+ LM head).

Every family returns ``(logits, new_mems)``. Memory lives on the side that reads a continuous
stream: the decoder's stack for a Decoder, the encoder's stack for an Encoder, and, for the
EncoderDecoder, the *encoder* stack: the encoder reads consecutive corrupted segments of one
stream and its memory carries context across them; the decoder only produces the current
segment's spans, attends to the current encoder output, and keeps no memory.

Construction allocates parameters with ``torch.empty``: under ``deepspeed.zero.Init`` each
submodule's parameters are partitioned across ranks as soon as its ``__init__`` returns, so
values are set in one place, :meth:`LanguageModel.init_weights`, which works on partitioned
parameters by gathering them module by module (through a context the engine passes in, which
keeps this file free of DeepSpeed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.blocks import Stack
from pretrain.model.layers import RMSNorm, make_norm
from pretrain.model.size import num_params

GatherFn = Callable[[list[nn.Parameter]], AbstractContextManager[object]]


def _no_gather(params: list[nn.Parameter]) -> AbstractContextManager[object]:
    return nullcontext()


class LanguageModel(nn.Module):
    """What the families share: embeddings, memory helpers and weight initialisation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def _learned_positions(self) -> nn.Embedding | None:
        if self.config.position != "learned":
            return None
        return nn.Embedding(self.config.max_seq_len, self.config.d_model)

    def embed(self, tokens: Tensor, offset: int, pos_emb: nn.Embedding | None) -> Tensor:
        """tokens (B, T) -> (B, T, d). ``offset`` is the number of positions before the segment
        (the memory length): only learned positions use it, and only in incremental decoding,
        where memory grows from the start of the sequence and is never cut."""
        x = self.tok_emb(tokens)  # (B, T, d)
        if pos_emb is not None:
            end = offset + tokens.size(1)
            if end > self.config.max_seq_len:
                raise ValueError(
                    f"position {end - 1} is past the learned table (max_seq_len "
                    f"{self.config.max_seq_len})"
                )
            x = x + pos_emb(torch.arange(offset, end, device=tokens.device))  # (T, d) broadcast
        return self.drop(x)

    def init_mems(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> list[Tensor]:
        """Empty memory, one (B, 0, d) tensor per layer of the memory stack: the state at the
        start of a stream, or after a reset."""
        dtype = dtype or self.tok_emb.weight.dtype
        return [
            torch.zeros(batch_size, 0, self.config.d_model, device=device, dtype=dtype)
            for _ in self.memory_stack.layers
        ]

    @property
    def memory_stack(self) -> Stack:
        """The stack whose memory the caller carries between segments."""
        raise NotImplementedError

    def _mem_len(self, mem_len: int | None) -> int:
        return self.config.mem_len if mem_len is None else mem_len

    def num_params(self) -> int:
        """Parameter count from the config's closed formula (equal to the module's own count,
        which tests check); tied embeddings count once."""
        return num_params(self.config)

    @torch.no_grad()
    def init_weights(self, gather: GatherFn | None = None) -> None:
        """Set every parameter: normal(0, init_std) for matrices and embeddings, with residual
        output projections scaled by 1 / sqrt(2 * n_layers) (GPT-2) so the residual stream's
        variance does not grow with depth; zeros for biases and Transformer-XL's u and v; ones
        for norm weights.

        ``gather(params)`` is a context in which ``params`` are whole; the engine passes
        ``partial(deepspeed.zero.GatheredParameters, modifier_rank=0)`` for a model built under
        ``deepspeed.zero.Init``: rank 0's values are then scattered back, so the model is the
        same whatever the world size. The default does nothing (ordinary parameters).
        """
        gather = gather or _no_gather
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            with gather(params):
                if isinstance(module, nn.Linear):
                    scaled = getattr(module, "residual", False)
                    nn.init.normal_(module.weight, 0.0, residual_std if scaled else std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, 0.0, std)
                elif isinstance(module, nn.LayerNorm | RMSNorm):
                    nn.init.ones_(module.weight)
                    bias = getattr(module, "bias", None)  # RMSNorm has none
                    if bias is not None:
                        nn.init.zeros_(bias)
                elif isinstance(module, Stack):  # its own parameters: u and v
                    for param in params:
                        nn.init.zeros_(param)
                else:
                    raise TypeError(f"init_weights does not know {type(module).__name__}")


class Decoder(LanguageModel):
    """Causal LM: causal within the segment, full over memory."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.pos_emb = self._learned_positions()
        self.stack = Stack(config, config.n_layers, causal=True, cross=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @property
    def memory_stack(self) -> Stack:
        return self.stack

    def forward(
        self,
        tokens: Tensor,
        mems: list[Tensor] | None = None,
        *,
        mem_len: int | None = None,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, T) -> (logits (B, T, V), new_mems). ``mem_len`` overrides the config's
        (incremental decoding keeps the whole context as memory); ``memory_reset`` (B,) bool
        marks rows that must not see their memory; ``attention_mask`` (B, T) True (or 1) at
        real tokens, None for all (see blocks.py)."""
        offset = mems[0].size(1) if mems else 0
        x = self.embed(tokens, offset, self.pos_emb)
        h, new_mems = self.stack(
            x,
            mems,
            self._mem_len(mem_len),
            memory_reset=memory_reset,
            attention_mask=attention_mask,
        )  # (B, T, d)
        return self.lm_head(h), new_mems


class MLMHead(nn.Module):
    """BERT's transform before the output projection: dense, GELU, norm, then vocabulary."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.norm = make_norm(config)
        self.out = nn.Linear(config.d_model, config.vocab_size, bias=config.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.norm(F.gelu(self.dense(h))))  # (B, T, V)


class Encoder(LanguageModel):
    """Bidirectional within the segment, full over memory; MLM head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.pos_emb = self._learned_positions()
        self.stack = Stack(config, config.n_layers, causal=False, cross=False)
        self.head = MLMHead(config)
        if config.tie_embeddings:
            self.head.out.weight = self.tok_emb.weight

    @property
    def memory_stack(self) -> Stack:
        return self.stack

    def forward(
        self,
        tokens: Tensor,
        mems: list[Tensor] | None = None,
        *,
        mem_len: int | None = None,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, T) -> (logits (B, T, V), new_mems); the arguments as `Decoder`'s."""
        offset = mems[0].size(1) if mems else 0
        x = self.embed(tokens, offset, self.pos_emb)
        h, new_mems = self.stack(
            x,
            mems,
            self._mem_len(mem_len),
            memory_reset=memory_reset,
            attention_mask=attention_mask,
        )
        return self.head(h), new_mems


class EncoderDecoder(LanguageModel):
    """T5-style: shared token embedding, bidirectional encoder with memory, causal decoder
    with cross-attention to the current segment's encoder output, tied LM head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.enc_pos_emb = self._learned_positions()
        self.dec_pos_emb = self._learned_positions()
        self.encoder = Stack(config, config.n_layers, causal=False, cross=False)
        self.decoder = Stack(config, config.decoder_layers, causal=True, cross=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @property
    def memory_stack(self) -> Stack:
        return self.encoder

    def encode(
        self,
        encoder_tokens: Tensor,
        mems: list[Tensor] | None = None,
        mem_len: int | None = None,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """encoder_tokens (B, S) -> (encoder output (B, S, d), new encoder memory);
        ``attention_mask`` (B, S) True (or 1) at the source's real tokens, None for all."""
        offset = mems[0].size(1) if mems else 0
        x = self.embed(encoder_tokens, offset, self.enc_pos_emb)
        out: tuple[Tensor, list[Tensor]] = self.encoder(
            x,
            mems,
            self._mem_len(mem_len),
            memory_reset=memory_reset,
            attention_mask=attention_mask,
        )
        return out

    def decode(
        self,
        decoder_input_tokens: Tensor,
        encoder_out: Tensor,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        """decoder_input_tokens (B, U), encoder_out (B, S, d), source_mask (B, S) the
        source's real tokens (None: all) -> logits (B, U, V). The decoder's own padding is
        on the right, which its causal attention never reads, so it needs no mask."""
        y = self.embed(decoder_input_tokens, 0, self.dec_pos_emb)
        h, _ = self.decoder(y, None, 0, encoder_out, source_mask=source_mask)
        return self.lm_head(h)

    def forward(
        self,
        encoder_tokens: Tensor,
        decoder_input_tokens: Tensor,
        mems: list[Tensor] | None = None,
        *,
        mem_len: int | None = None,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """-> (logits (B, U, V), new encoder memory); ``attention_mask`` is the source's."""
        encoder_out, new_mems = self.encode(
            encoder_tokens, mems, mem_len, memory_reset, attention_mask
        )
        return self.decode(decoder_input_tokens, encoder_out, attention_mask), new_mems
