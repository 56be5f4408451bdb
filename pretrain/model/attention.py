"""Multi-head self- and cross-attention: through ``scaled_dot_product_attention``, except
Transformer-XL's relative attention, which is written out (see `SelfAttention._relative`).

Self-attention runs over ``[memory; segment]``: queries come from the segment only, keys and
values from both. The positional scheme arrives as a `Positions` built once per stack forward,
so the layers hold no position state and every layer of a stack shares the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.config import ModelConfig
from pretrain.model.positions import apply_rotary, shifted_bias


@dataclass
class Positions:
    """What attention needs to know about positions for one (T queries, K keys) forward."""

    # (T, K) bool, True where a query may attend; (B, 1, T, K) when rows differ (some rows'
    # memory is masked, see blocks.py); None: everything
    mask: Tensor | None
    is_causal: bool  # let SDPA build the causal mask itself (only when K == T and no bias)
    # (P + 1, d) sinusoids of the P distances and a zero row (the padding column of the
    # relative shift, see `shifted_bias`), relative scheme only
    relative: Tensor | None = None
    u: Tensor | None = None  # (H, hd) learned global content bias (Transformer-XL's u)
    v: Tensor | None = None  # (H, hd) learned global position bias (Transformer-XL's v)
    cos: Tensor | None = None  # (K, hd) rotary tables for the keys' positions
    sin: Tensor | None = None
    _additive: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def additive_mask(self, dtype: torch.dtype) -> Tensor | None:
        """``mask`` as an additive (T, K) or (B, T, K) bias, 0 where allowed and -inf
        elsewhere; built once and shared by the layers (rebuilt if ``mask`` is replaced)."""
        if self.mask is None:
            return None
        if self._additive is None or self._additive[0] is not self.mask:
            mask = self.mask[:, 0] if self.mask.dim() == 4 else self.mask
            bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            self._additive = (self.mask, bias.masked_fill_(~mask, float("-inf")))
        return self._additive[1].to(dtype)


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
        if self.r_proj is not None:
            return self._relative(x, context, pos)
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

        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=pos.mask, dropout_p=dropout, is_causal=pos.is_causal
        )  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(batch, seq, d)  # (B, T, d)
        return self.proj(y)

    def _relative(self, x: Tensor, context: Tensor, pos: Positions) -> Tensor:
        """Transformer-XL attention (Dai et al., eq. 3), written out rather than through SDPA:
        score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_R R_{i-j}) / sqrt(hd).

        The position term is a bias that needs a gradient, and SDPA then takes its unfused
        math path on CPU, which costs more than this. Here each product is one batched matmul
        in a head-major layout ((H * B, L, hd), so W_R R, shared by the batch, needs no
        broadcast copy); u and the scale are folded into the query projection; the position
        scores go under their keys, plus the mask, in one pass (`shifted_bias`), and the
        content product is accumulated onto them by baddbmm. Memory rows' keys and values are
        projected again every segment (memory holds hidden states, see blocks.py).
        """
        assert self.r_proj is not None
        assert pos.relative is not None and pos.u is not None and pos.v is not None
        batch, seq, d = x.shape
        key_len = context.size(1)
        heads, head_dim = self.n_heads, d // self.n_heads
        scale = head_dim**-0.5
        w_q, w_kv = self.qkv.weight.split([d, 2 * d])
        b_q, b_kv = self.qkv.bias.split([d, 2 * d]) if self.qkv.bias is not None else (None, None)
        # The softmax scale and u ride on the query projection's (small) weight and bias:
        # q_u = (q + u) * scale comes out of one addmm, with no pass over the queries.
        u = pos.u.reshape(d)
        q_u = F.linear(x, w_q * scale, (u if b_q is None else b_q + u) * scale)  # (B, T, d)
        kv = F.linear(context, w_kv, b_kv)  # (B, K, 2d)

        # Head-major copies: (H * B, T, hd) and (2, H * B, K, hd).
        q_u = q_u.view(batch, seq, heads, head_dim).permute(2, 0, 1, 3).reshape(-1, seq, head_dim)
        kv = kv.view(batch, key_len, 2, heads, head_dim).permute(2, 3, 0, 1, 4)
        k, v = kv.reshape(2, heads * batch, key_len, head_dim).unbind(0)
        # (q + v) * scale = q_u + (v - u) * scale, in one pass.
        q_v = q_u + ((pos.v - pos.u) * scale).repeat_interleave(batch, dim=0)[:, None]

        r = self.r_proj(pos.relative)  # (P + 1, d), last row zero (no bias)
        r = r.view(-1, heads, head_dim).permute(1, 2, 0)  # (H, hd, P + 1)
        by_distance = torch.bmm(q_v.view(heads, batch * seq, head_dim), r)  # (H, B * T, P + 1)
        by_distance = by_distance.view(heads, batch, seq, -1)  # (H, B, T, P + 1)
        # The mask, (T, K) or per row (B, T, K), broadcasts over the heads.
        bias = shifted_bias(by_distance, pos.additive_mask(x.dtype), key_len)  # (H, B, T, K)
        scores = torch.baddbmm(
            bias.view(heads * batch, seq, key_len), q_u, k.transpose(1, 2)
        )  # (H * B, T, K), already scaled
        attn = scores.softmax(dim=-1)
        if self.training and self.attn_dropout:
            attn = F.dropout(attn, self.attn_dropout)
        y = torch.bmm(attn, v).view(heads, batch, seq, head_dim)
        return self.proj(y.permute(1, 2, 0, 3).reshape(batch, seq, d))


class CrossAttention(nn.Module):
    """Decoder queries over the encoder's output; no positions (as in T5). The source's pads
    (fine-tuning batches) are masked out when a ``source_mask`` is given; span corruption's
    encoder input has none and keeps SDPA's unmasked path."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.proj.residual = True  # type: ignore[assignment]  # scaled init, see init_weights()
        self.attn_dropout = config.attn_dropout

    def forward(self, x: Tensor, encoder_out: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """x (B, U, d) normalised decoder states; encoder_out (B, S, d); source_mask (B, S)
        bool, True at the source's real tokens, or None for all. -> (B, U, d)"""
        batch, length, d = x.shape
        q = self.q(x).view(batch, length, self.n_heads, -1).transpose(1, 2)  # (B, H, U, hd)
        k, v = self.kv(encoder_out).split(d, dim=-1)  # (B, S, d) each
        k = k.view(batch, -1, self.n_heads, q.size(-1)).transpose(1, 2)  # (B, H, S, hd)
        v = v.view(batch, -1, self.n_heads, q.size(-1)).transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        mask = None if source_mask is None else source_mask[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(batch, length, d))


def real_keys(attention_mask: Tensor | None) -> Tensor | None:
    """(B, L) bool of the keys a row may read, from an ``attention_mask`` (B, L) (True or 1 at
    real tokens, the Hugging Face convention), or None when every token is real (decided on
    the host, so attention keeps its unmasked fast paths). A row with no real token at all
    reads everything: a softmax over no key is NaN, and would poison the batch's gradient."""
    if attention_mask is None:
        return None
    real = attention_mask.to(torch.bool)
    if bool(real.all()):
        return None
    return real | ~real.any(dim=1, keepdim=True)


def causal_mask(query_len: int, key_len: int, device: torch.device) -> Tensor:
    """(T, K) bool: query i (position K - T + i) sees keys 0..K - T + i: all of the memory and
    the segment up to itself."""
    offset = key_len - query_len
    rows = torch.arange(query_len, device=device)[:, None]
    cols = torch.arange(key_len, device=device)[None, :]
    return cols <= rows + offset
