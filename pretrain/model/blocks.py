"""Pre-norm residual blocks and a stack of them with Transformer-XL segment memory.

The memory of layer l is the last ``mem_len`` inputs of layer l (the residual stream entering
it), detached: the next segment's layer l attends over ``[memory_l; segment]``, and no gradient
flows into the past (Dai et al., 2019, section 3.2). Memory is an argument and a return value,
never module state, so the trainer owns it and checkpoints it with the loader state.

Rows whose text breaks (``memory_reset``, from the loader: a jump in the row's stream, or in a
mixture a change of source) must not see their memory: its keys are masked out of that row's
attention, so the row's outputs are those of a stack given no memory. While a masked slot is
still inside the window (``mem_len`` longer than a segment) it stays masked: the memory then
ends with a (B, M) bool entry after the layers' states, True where a slot holds the row's own
context. Without any masked slot that entry is absent and attention keeps its unmasked fast
paths.

Padding composes with this: a fine-tuning batch's ``attention_mask`` (B, T), True at real
tokens, masks the segment's pad keys the same way (a padded row then gives the outputs of the
same row alone), pads kept in memory stay masked, and an encoder-decoder's source mask reaches
the decoder's cross-attention. Without pads it is None and changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.attention import (
    CrossAttention,
    Positions,
    SelfAttention,
    causal_mask,
    real_keys,
)
from pretrain.model.layers import MLP, make_norm
from pretrain.model.positions import relative_distances, rotary_tables, sinusoid


class Block(nn.Module):
    def __init__(self, config: ModelConfig, *, cross: bool) -> None:
        super().__init__()
        self.norm_attn = make_norm(config)
        self.attn = SelfAttention(config)
        self.norm_cross = make_norm(config) if cross else None
        self.cross = CrossAttention(config) if cross else None
        self.norm_mlp = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        pos: Positions,
        encoder_out: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, d), memory (B, M, d) or None; source_mask (B, S) the encoder's real
        tokens, or None for all -> (B, T, d)"""
        # Normalise segment and memory apart (the norm is per row): the attention's queries
        # then read a contiguous tensor rather than a slice of the context.
        h = self.norm_attn(x)  # (B, T, d)
        context = h if memory is None else torch.cat([self.norm_attn(memory), h], dim=1)
        x = x + self.dropout(self.attn(h, context, pos))  # context (B, K, d)
        if self.cross is not None and self.norm_cross is not None:
            assert encoder_out is not None, "a decoder block with cross-attention needs encoder_out"
            x = x + self.dropout(self.cross(self.norm_cross(x), encoder_out, source_mask))
        return x + self.mlp(self.norm_mlp(x))  # the MLP applies its own output dropout


def update_memory(memory: Tensor | None, x: Tensor, mem_len: int) -> Tensor:
    """The last ``mem_len`` of [memory; x] along time, detached. (B, M', d)"""
    joined = x if memory is None or memory.size(1) == 0 else torch.cat([memory, x], dim=1)
    return joined[:, -mem_len:].detach()


def split_memory(mems: list[Tensor] | None, n_layers: int) -> tuple[list[Tensor], Tensor | None]:
    """(the layers' states, the (B, M) bool of usable slots or None for all) of a memory."""
    if not mems:
        return [], None
    if len(mems) == n_layers + 1 and mems[-1].dtype == torch.bool:
        return mems[:-1], mems[-1]
    if len(mems) != n_layers:
        raise ValueError(f"expected memory for {n_layers} layers, got {len(mems)}")
    return mems, None


def usable_memory(
    valid: Tensor | None, reset: Tensor | None, batch: int, memory_len: int, device: torch.device
) -> Tensor | None:
    """(B, M) bool: the memory slots each row may attend to, or None when all of them are
    (the common case, decided on the host so attention keeps its fast paths)."""
    if memory_len == 0 or (valid is None and reset is None):
        return None
    usable = torch.ones(batch, memory_len, dtype=torch.bool, device=device)
    if valid is not None:
        usable &= valid.to(device)
    if reset is not None:
        usable &= ~reset.to(device=device, dtype=torch.bool)[:, None]
    return None if bool(usable.all()) else usable


def row_keys(
    usable: Tensor | None, segment: Tensor | None, memory_len: int, seq: int
) -> Tensor | None:
    """(B, M + T) bool: the keys of ``[memory; segment]`` each row may read, from the usable
    memory slots and the segment's real tokens (None: all of either), or None for all."""
    if usable is None and segment is None:
        return None
    some = usable if usable is not None else segment
    assert some is not None
    ones = some.new_ones(some.size(0), memory_len + seq)
    memory_keys = usable if usable is not None else ones[:, :memory_len]
    segment_keys = segment if segment is not None else ones[:, :seq]
    return torch.cat([memory_keys, segment_keys], dim=1)


def update_usable(keys: Tensor | None, mem_len: int) -> Tensor | None:
    """The usable slots of the next memory (the last ``mem_len`` of this forward's readable
    keys: the segment's real tokens are), or None for all."""
    if keys is None or mem_len == 0:
        return None
    joined = keys[:, -mem_len:]
    return None if bool(joined.all()) else joined


class Stack(nn.Module):
    """``n_layers`` blocks, a final norm, and the positional state shared by the layers
    (Transformer-XL's u and v are global to the stack, as in the paper)."""

    def __init__(self, config: ModelConfig, n_layers: int, *, causal: bool, cross: bool) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.layers = nn.ModuleList(Block(config, cross=cross) for _ in range(n_layers))
        self.norm = make_norm(config)
        if config.position == "relative":
            self.u = nn.Parameter(torch.empty(config.n_heads, config.head_dim))
            self.v = nn.Parameter(torch.empty(config.n_heads, config.head_dim))

    def positions(
        self,
        seq: int,
        key_len: int,
        device: torch.device,
        dtype: torch.dtype,
        keys: Tensor | None = None,
    ) -> Positions:
        """``keys``: (B, K) the keys each row may attend to (`row_keys`; None: all)."""
        config = self.config
        mask = causal_mask(seq, key_len, device) if self.causal else None
        if keys is not None:
            # Per row: the usable memory slots and the segment's real tokens. (B, 1, T, K)
            rows = keys[:, None, None, :]
            mask = rows if mask is None else rows & mask
            mask = mask.expand(-1, -1, seq, -1)
        if config.position == "relative":
            distances = relative_distances(seq, key_len, self.causal, device)  # (P,)
            relative = sinusoid(distances, config.d_model).to(dtype)  # (P, d)
            relative = F.pad(relative, (0, 0, 0, 1))  # (P + 1, d): see Positions.relative
            return Positions(mask=mask, is_causal=False, relative=relative, u=self.u, v=self.v)
        # Without memory a causal mask is SDPA's own (its fast path); with memory it is explicit.
        fast_causal = self.causal and key_len == seq and keys is None
        pos = Positions(mask=None if fast_causal else mask, is_causal=fast_causal)
        if config.position == "rotary":
            cos, sin = rotary_tables(key_len, config.head_dim, config.rope_theta, device)
            pos.cos, pos.sin = cos.to(dtype), sin.to(dtype)
        return pos

    def forward(
        self,
        x: Tensor,
        mems: list[Tensor] | None,
        mem_len: int,
        encoder_out: Tensor | None = None,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """x (B, T, d) embedded segment; mems: per layer (B, M, d) (then possibly the (B, M)
        usable slots, see the module's doc), or None; memory_reset (B,) bool: rows that must
        not see their memory; attention_mask (B, T): True (or 1) at the segment's real
        tokens, None for all; source_mask (B, S): the same for ``encoder_out``.
        -> (normalised output (B, T, d), new memory: per layer (B, min(M + T, mem_len), d)
        (then the usable slots while some are not), or [] when mem_len == 0)."""
        layer_mems, valid = split_memory(mems, len(self.layers))
        memory_len = layer_mems[0].size(1) if layer_mems else 0
        batch, seq = x.size(0), x.size(1)
        usable = usable_memory(valid, memory_reset, batch, memory_len, x.device)
        keys = row_keys(usable, real_keys(attention_mask), memory_len, seq)
        pos = self.positions(seq, memory_len + seq, x.device, x.dtype, keys)
        source = real_keys(source_mask)
        new_mems = []
        for i, layer in enumerate(self.layers):
            memory = layer_mems[i] if memory_len else None
            if mem_len:
                new_mems.append(update_memory(memory, x, mem_len))
            x = layer(x, memory, pos, encoder_out, source)
        still_masked = update_usable(keys, mem_len)
        if still_masked is not None:
            new_mems.append(still_masked)
        return self.norm(x), new_mems
