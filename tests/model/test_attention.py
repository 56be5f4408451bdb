"""Positional building blocks and relative attention checked against direct, loop-based
definitions."""

from __future__ import annotations

import pytest
import torch

from pretrain.model.attention import SelfAttention, causal_mask
from pretrain.model.blocks import Stack
from pretrain.model.positions import (
    apply_rotary,
    relative_distances,
    relative_shift,
    rotary_tables,
    shifted_bias,
    sinusoid,
)
from tests.model.common import tiny_config


@pytest.mark.parametrize(
    ("query_len", "key_len", "causal"),
    [(1, 5, True), (4, 4, True), (3, 7, True), (4, 9, False), (1, 1, False)],
)
def test_relative_shift_puts_each_distance_under_its_key(
    query_len: int, key_len: int, causal: bool
) -> None:
    distances = relative_distances(query_len, key_len, causal, torch.device("cpu"))  # (P,)
    # Scores whose value *is* the distance they belong to make the check direct.
    scores = distances.expand(2, query_len, -1).clone()  # (2, T, P)
    shifted = relative_shift(scores, key_len)  # (2, T, K)
    offset = key_len - query_len
    for i in range(query_len):
        for j in range(key_len):
            distance = offset + i - j
            if causal and distance < 0:
                continue  # no column for it: masked by the caller
            assert shifted[0, i, j].item() == distance


def test_causal_mask_sees_all_memory_and_the_past() -> None:
    mask = causal_mask(2, 5, torch.device("cpu"))
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_rotary_scores_depend_only_on_relative_position() -> None:
    cos, sin = rotary_tables(16, 8, 10000.0, torch.device("cpu"))
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 1, 16, 8)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 1, 16, 8)
    qr = apply_rotary(q, cos.double(), sin.double())[0, 0]  # (16, 8)
    kr = apply_rotary(k, cos.double(), sin.double())[0, 0]
    scores = qr @ kr.T  # (16, 16): same vectors at every position
    assert torch.allclose(scores[3, 1], scores[10, 8])  # distance 2 both
    assert torch.allclose(scores[5, 5], scores[0, 0])
    assert not torch.allclose(scores[3, 1], scores[3, 2])


def _reference_relative_attention(
    attn: SelfAttention, x: torch.Tensor, context: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Dai et al., eq. 3, by definition: a loop over (query, key) pairs builds the position
    scores from the sinusoid of each pair's own distance."""
    batch, seq, d = x.shape
    key_len = context.size(1)
    heads, hd = attn.n_heads, d // attn.n_heads
    q, k, val = attn.qkv(torch.cat([context[:, :-seq], x], dim=1)).split(d, dim=-1)
    q = q[:, -seq:].view(batch, seq, heads, hd)
    k = k.view(batch, key_len, heads, hd)
    val = val.view(batch, key_len, heads, hd)
    assert attn.r_proj is not None
    scores = torch.empty(batch, heads, seq, key_len, dtype=x.dtype)
    for i in range(seq):
        for j in range(key_len):
            distance = key_len - seq + i - j
            r = attn.r_proj(sinusoid(torch.tensor([float(distance)]), d).to(x.dtype))
            r = r.view(heads, hd)
            content = ((q[:, i] + u) * k[:, j]).sum(-1)  # (B, H)
            position = ((q[:, i] + v) * r).sum(-1)
            score = (content + position) / hd**0.5
            scores[:, :, i, j] = score if distance >= 0 else float("-inf")
    y = torch.einsum("bhtk,bkhd->bthd", scores.softmax(-1), val).reshape(batch, seq, d)
    return attn.proj(y)


@pytest.mark.parametrize(("seq", "memory"), [(5, 0), (4, 3), (1, 6)])
def test_relative_attention_matches_its_definition(seq: int, memory: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(position="relative", mem_len=8)
    stack = Stack(config, 1, causal=True, cross=False).double()
    for p in stack.parameters():
        torch.nn.init.normal_(p, std=0.3)
    attn = stack.layers[0].attn
    assert isinstance(attn, SelfAttention) and attn.r_proj is not None
    x = torch.randn(2, seq, config.d_model, dtype=torch.float64, requires_grad=True)
    context = torch.cat([torch.randn(2, memory, config.d_model, dtype=torch.float64), x], 1)
    pos = stack.positions(seq, memory + seq, x.device, x.dtype)
    ours = attn(x, context, pos)
    expected = _reference_relative_attention(attn, x, context, stack.u, stack.v)
    assert torch.allclose(ours, expected, atol=1e-10)
    wrt = [x, stack.u, stack.v, attn.r_proj.weight, attn.qkv.weight]
    grads = torch.autograd.grad(ours.square().sum(), wrt)
    expected_grads = torch.autograd.grad(expected.square().sum(), wrt)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize(("query_len", "key_len", "causal"), [(3, 5, True), (3, 4, False)])
def test_shifted_bias_gradient(query_len: int, key_len: int, causal: bool) -> None:
    num_dist = key_len if causal else key_len + query_len - 1
    padded = torch.randn(2, query_len, num_dist + 1, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(query_len, key_len, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: shifted_bias(p, mask, key_len), (padded,))
    unpadded = padded.detach()[..., :-1]
    zero_padded = torch.nn.functional.pad(unpadded, (0, 1))
    assert torch.equal(
        shifted_bias(zero_padded, None, key_len), relative_shift(unpadded, key_len).contiguous()
    )
