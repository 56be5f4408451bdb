"""Test-only references: code the product does not need, used to check the product.

`reconstruct_from_spans` inverts span corruption in plain Python (sharing no code with the
vectorised `pretrain.objectives.span_corruption`, so agreement means something).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def reconstruct_from_spans(
    encoder_inputs: Tensor, decoder_targets: Tensor, *, sentinel_ids: Sequence[int]
) -> list[list[int]]:
    """Invert :func:`span_corruption`: each row's original tokens, as lists.

    Written with plain Python on purpose:
    it shares no code with the vectorised corruption, so agreement between the two means
    something. Each output drops its final EOS (the last position; rows are never padded) and
    replaces every sentinel in the input by the tokens that follow it in the targets.
    """
    sentinel_set = set(sentinel_ids)
    rows = []
    for enc_row, dec_row in zip(encoder_inputs.tolist(), decoder_targets.tolist(), strict=True):
        spans: dict[int, list[int]] = {}
        current: list[int] | None = None
        for token in dec_row[:-1]:
            if token in sentinel_set:
                current = spans.setdefault(token, [])
            elif current is None:
                raise ValueError("decoder targets must start with a sentinel")
            else:
                current.append(token)
        original: list[int] = []
        for token in enc_row[:-1]:
            original.extend(spans[token] if token in sentinel_set else [token])
        rows.append(original)
    return rows
