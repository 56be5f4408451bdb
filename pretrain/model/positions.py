"""Positional schemes: Transformer-XL relative encoding and rotary embeddings.

Learned absolute positions are a plain embedding table added to the token embeddings (see
`families.py`); the two schemes here act inside attention and so work over memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Transformer-XL's sinusoidal embedding of (possibly negative) distances.
    positions (P,) float -> (P, dim): [sin(p * f), cos(p * f)] over dim / 2 frequencies."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=positions.device) / dim))
    angles = positions[:, None] * inv_freq[None, :]  # (P, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def relative_distances(query_len: int, key_len: int, causal: bool, device: torch.device) -> Tensor:
    """The distances (query position - key position) that scores are computed for, largest
    first: from key_len - 1 (the current last query against the oldest memory key) down to 0
    for a causal layer, or down to -(query_len - 1) when queries also look ahead. (P,)"""
    lowest = 0 if causal else -(query_len - 1)
    return torch.arange(key_len - 1, lowest - 1, -1, device=device, dtype=torch.float32)


def relative_shift(scores: Tensor, key_len: int) -> Tensor:
    """Turn scores by distance into scores by key: (..., T, P) -> (..., T, K).

    Queries are the last T of K positions, so query i and key j are ``K - T + i - j`` apart,
    which is column ``T - 1 - i + j`` of ``scores`` (distances largest first, see
    :func:`relative_distances`). That column moves left by one per row, so padding each row with
    one extra column and reading the flat buffer with a row stride of P (instead of P + 1) from
    offset T - 1 lines every row up: a view and one pad, no loop, no gather. Entries for keys a
    causal query must not see (negative distances it has no column for) read neighbouring
    values and are masked by the caller.
    """
    return shifted_view(F.pad(scores, (0, 1)), key_len)  # (..., T, K)


def shifted_view(padded: Tensor, key_len: int) -> Tensor:
    """The view behind :func:`relative_shift`, for scores already padded: (..., T, P + 1) ->
    (..., T, K), no copy. The last two dimensions must be contiguous; the leading ones may have
    any strides (a permuted view reads straight through). Rows of the view do not overlap
    (K <= P), so it can also be written through."""
    *lead, query_len, width = padded.shape
    if padded.stride(-1) != 1 or (query_len > 1 and padded.stride(-2) != width):
        raise ValueError("shifted_view needs contiguous rows (..., T, P + 1)")
    return padded.as_strided(
        (*lead, query_len, key_len),
        (*padded.stride()[:-2], width - 1, 1),
        padded.storage_offset() + query_len - 1,
    )


class _ShiftedBias(torch.autograd.Function):
    """``shifted_view(padded) + mask`` as one new contiguous tensor, with a backward that
    writes the gradient straight back through the same view: one zero fill and one strided
    copy (autograd's own as_strided backward is written for arbitrary, possibly overlapping
    views)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        padded: Tensor,
        mask: Tensor | None,
        key_len: int,
    ) -> Tensor:
        ctx.padded_shape = padded.shape  # type: ignore[attr-defined]
        ctx.key_len = key_len  # type: ignore[attr-defined]
        view = shifted_view(padded, key_len)
        if mask is None:
            return view.contiguous()
        return view + mask

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None, None]:
        padded = grad.new_zeros(ctx.padded_shape)  # type: ignore[attr-defined]
        shifted_view(padded, ctx.key_len).copy_(grad)  # type: ignore[attr-defined]
        return padded, None, None


def shifted_bias(padded: Tensor, mask: Tensor | None, key_len: int) -> Tensor:
    """Scores by distance, already padded with one column, moved under their keys and plus an
    additive mask (0 / -inf, broadcast over the leading dimensions): (..., T, P + 1) ->
    (..., T, K), contiguous. Masked entries read padding or a neighbouring row's values, which
    the -inf replaces; they get zero gradient through the softmax, so the padding column and
    those neighbours get none either."""
    out: Tensor = _ShiftedBias.apply(padded, mask, key_len)
    return out


def rotary_tables(
    length: int, dim: int, theta: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles of positions 0..length-1: (length, dim) each, the
    dim / 2 frequencies repeated for the two halves that :func:`apply_rotary` pairs up."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)  # (length, dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + dim/2]) by the position's angle. x (B, H, L, hd), cos/sin
    (L, hd). Only differences of positions survive in q . k, so giving memory keys positions
    0..M-1 and the segment M..M+T-1 is exact whatever the absolute offset of the segment."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)
