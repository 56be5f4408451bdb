"""Positional building blocks checked against direct, loop-based definitions."""

from __future__ import annotations

import pytest
import torch

from pretrain.model.attention import causal_mask
from pretrain.model.positions import (
    apply_rotary,
    relative_distances,
    relative_shift,
    rotary_tables,
)


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
