"""Multi-head self- and cross-attention, all through ``scaled_dot_product_attention``.

Self-attention runs over ``[memory; segment]``: queries come from the segment only, keys and
values from both. The positional scheme arrives as a `Positions` built once per stack forward,
so the layers hold no position state and every layer of a stack shares the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.positions import apply_rotary, relative_shift


@dataclass
class Positions:
    """What attention needs to know about positions for one (T queries, K keys) forward."""

    mask: Tensor | None  # (T, K) bool, True where a query may attend; None: everything
    is_causal: bool  # let SDPA build the causal mask itself (only when K == T and no bias)
    relative: Tensor | None = None  # (P, d) sinusoids of the distances, relative scheme only
    u: Tensor | None = None  # (H, hd) learned global content bias (Transformer-XL's u)
    v: Tensor | None = None  # (H, hd) learned global position bias (Transformer-XL's v)
    cos: Tensor | None = None  # (K, hd) rotary tables for the keys' positions
    sin: Tensor | None = None


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.d_model = config.d_model
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.proj.residual = True  # type: ignore[assignment]  # scaled init, see init_weights()
        # Transformer-XL's W_{k,R}: each layer projects the shared sinusoids its own way.
        self.r_proj = (
            nn.Linear(config.d_model, config.d_model, bias=False)
            if config.position == "relative"
            else None
        )
        self.attn_dropout = config.attn_dropout

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, -1).transpose(1, 2)  # (B, H, L, hd)

    def forward(self, x: Tensor, context: Tensor, pos: Positions) -> Tensor:
        """x (B, T, d) the normalised segment; context (B, K, d) the normalised
        [memory; segment] (``x`` itself when there is no memory). -> (B, T, d)"""
        batch, seq, d = x.shape
        key_len = context.size(1)
        if key_len == seq:
            q, k, v = self.qkv(x).split(d, dim=-1)  # (B, T, d) each
        else:
            # Memory rows need keys and values only: split the fused weight rather than
            # computing queries for the memory and throwing them away.
            w_q, w_kv = self.qkv.weight.split([d, 2 * d])
            b_q, b_kv = (
                self.qkv.bias.split([d, 2 * d]) if self.qkv.bias is not None else (None, None)
            )
            q = F.linear(x, w_q, b_q)  # (B, T, d)
            k, v = F.linear(context, w_kv, b_kv).split(d, dim=-1)  # (B, K, d) each
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        dropout = self.attn_dropout if self.training else 0.0

        if pos.cos is not None and pos.sin is not None:
            q = apply_rotary(q, pos.cos[key_len - seq :], pos.sin[key_len - seq :])
            k = apply_rotary(k, pos.cos, pos.sin)

        if self.r_proj is not None:
            assert pos.relative is not None and pos.u is not None and pos.v is not None
            # score(i, j) = (q_i + u) . k_j + (q_i + v) . W_R R_{i-j}   (Dai et al., eq. 3)
            # The first term is SDPA's own product with q + u; the second enters as an additive
            # bias, scaled like SDPA scales q . k, with -inf where the mask forbids.
            r = self._split_heads(self.r_proj(pos.relative)[None])[0]  # (H, P, hd)
            by_distance = (q + pos.v[:, None]) @ r.transpose(-1, -2)  # (B, H, T, P)
            bias = relative_shift(by_distance, key_len) * q.size(-1) ** -0.5  # (B, H, T, K)
            if pos.mask is not None:
                bias = bias.masked_fill(~pos.mask, float("-inf"))
            q = q + pos.u[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=pos.mask, dropout_p=dropout, is_causal=pos.is_causal
            )  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(batch, seq, d)  # (B, T, d)
        return self.proj(y)


class CrossAttention(nn.Module):
    """Decoder queries over the encoder's output; no positions (as in T5) and no mask: the
    encoder input of span corruption has no padding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.proj.residual = True  # type: ignore[assignment]  # scaled init, see init_weights()
        self.attn_dropout = config.attn_dropout

    def forward(self, x: Tensor, encoder_out: Tensor) -> Tensor:
        """x (B, U, d) normalised decoder states; encoder_out (B, S, d). -> (B, U, d)"""
        batch, length, d = x.shape
        q = self.q(x).view(batch, length, self.n_heads, -1).transpose(1, 2)  # (B, H, U, hd)
        k, v = self.kv(encoder_out).split(d, dim=-1)  # (B, S, d) each
        k = k.view(batch, -1, self.n_heads, q.size(-1)).transpose(1, 2)  # (B, H, S, hd)
        v = v.view(batch, -1, self.n_heads, q.size(-1)).transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, H, U, hd)
        return self.proj(y.transpose(1, 2).reshape(batch, length, d))


def causal_mask(query_len: int, key_len: int, device: torch.device) -> Tensor:
    """(T, K) bool: query i (position K - T + i) sees keys 0..K - T + i: all of the memory and
    the segment up to itself."""
    offset = key_len - query_len
    rows = torch.arange(query_len, device=device)[:, None]
    cols = torch.arange(key_len, device=device)[None, :]
    return cols <= rows + offset
