"""Turn stream segments into model batches for each objective.

Every collator takes a list of rows, one per stream, each ``(tokens, doc_start, seed)``: the
segment's token ids (int64), its document-start flags and a seed that is a pure function of
(run seed, stream, position), so masking and span corruption come out identical after a resume.
Rows may be shorter than ``width`` (the tail of a validation stream); they are padded and the
padding carries no loss. The corruption itself is `pretrain.objectives`'; nothing is
reimplemented here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.objectives import IGNORE_INDEX, mask_tokens, span_corruption, span_corruption_lengths

Objective = Literal["causal_lm", "mlm", "span"]
Row = tuple[np.ndarray, np.ndarray, int]  # (tokens int64, doc_start bool, seed)
Batch = dict[str, Tensor]


class Collator(Protocol):
    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        """(tokens to read per row, tokens to advance the stream by) for segments of seq_len."""
        ...

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch: ...


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _padded(rows: Sequence[Row], width: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens (B, width) padded with pad_id, doc_start (B, width), valid (B, width))."""
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    starts = np.zeros((len(rows), width), dtype=bool)
    valid = np.zeros((len(rows), width), dtype=bool)
    for i, (t, d, _) in enumerate(rows):
        tokens[i, : t.shape[0]] = t
        starts[i, : d.shape[0]] = d
        valid[i, : t.shape[0]] = True
    return torch.from_numpy(tokens), torch.from_numpy(starts), torch.from_numpy(valid)


@dataclass(frozen=True)
class CausalLMCollator:
    """input_ids, targets (the next token; IGNORE_INDEX on padding), doc_start, all (B, T).

    A segment reads T + 1 tokens and advances T, so consecutive segments overlap by one token:
    every token of the stream is a target exactly once and segment t+1 starts where segment t's
    inputs stopped, which is what Transformer-XL memory needs.
    """

    pad_id: int

    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        return seq_len + 1, seq_len

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch:
        tokens, starts, valid = _padded(rows, seq_len + 1, self.pad_id)
        targets = tokens[:, 1:].masked_fill(~valid[:, 1:], IGNORE_INDEX)
        return {"input_ids": tokens[:, :-1], "targets": targets, "doc_start": starts[:, :-1]}


@dataclass(frozen=True)
class MLMCollator:
    """input_ids (masked), labels (IGNORE_INDEX where not selected or padding), doc_start,
    attention_mask (False on padding), all (B, T)."""

    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: tuple[int, ...]
    probability: float

    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        return seq_len, seq_len

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch:
        tokens, starts, valid = _padded(rows, seq_len, self.pad_id)
        inputs, labels = tokens.clone(), torch.full_like(tokens, IGNORE_INDEX)
        for i, (t, _, seed) in enumerate(rows):
            n = t.shape[0]
            if n == 0:
                continue
            # One generator per row, seeded by that row's stream and position: the masks do
            # not depend on which rank or micro-batch the stream sits in.
            row_in, row_labels = mask_tokens(
                tokens[i : i + 1, :n],
                vocab_size=self.vocab_size,
                mask_id=self.mask_id,
                special_ids=self.special_ids,
                probability=self.probability,
                generator=_generator(seed),
            )
            inputs[i, :n], labels[i, :n] = row_in[0], row_labels[0]
        return {
            "input_ids": inputs,
            "labels": labels,
            "doc_start": starts,
            "attention_mask": valid,
        }


@dataclass(frozen=True)
class SpanCollator:
    """encoder_input_ids (B, S) and decoder_targets (B, U), T5 style; padding is ``pad_id``
    (which `seq2seq_loss(pad_id=...)` ignores). S and U depend on seq_len only."""

    noise_density: float
    mean_span_length: float
    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int

    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        return seq_len, seq_len

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch:
        enc_len, dec_len = span_corruption_lengths(
            seq_len, self.noise_density, self.mean_span_length
        )
        encoder, decoder = [], []
        for t, _, seed in rows:
            if t.shape[0] < 2:  # nothing to corrupt (an exhausted validation stream)
                encoder.append(torch.full((1, enc_len), self.pad_id, dtype=torch.long))
                decoder.append(torch.full((1, dec_len), self.pad_id, dtype=torch.long))
                continue
            enc, dec = span_corruption(
                torch.from_numpy(t)[None],
                noise_density=self.noise_density,
                mean_span_length=self.mean_span_length,
                sentinel_ids=self.sentinel_ids,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                generator=_generator(seed),
            )
            # A short tail corrupts to shorter outputs: pad them to the full-segment shape.
            encoder.append(F.pad(enc, (0, enc_len - enc.shape[1]), value=self.pad_id))
            decoder.append(F.pad(dec, (0, dec_len - dec.shape[1]), value=self.pad_id))
        return {"encoder_input_ids": torch.cat(encoder), "decoder_targets": torch.cat(decoder)}


def make_collator(
    objective: Objective,
    special_ids: dict[str, object],
    *,
    vocab_size: int,
    mlm_probability: float = 0.15,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> Collator:
    """The collator of ``objective``, with the special ids from the manifest's tokenizer."""

    def special(name: str) -> int:
        value = special_ids.get(name)
        if not isinstance(value, int):
            raise ValueError(f"objective {objective} needs special id {name!r} in the manifest")
        return value

    if objective == "causal_lm":
        return CausalLMCollator(pad_id=special("pad"))
    sentinels = special_ids.get("sentinels") or []
    assert isinstance(sentinels, list)
    if objective == "mlm":
        ids = [v for k, v in special_ids.items() if k != "sentinels" and isinstance(v, int)]
        return MLMCollator(
            vocab_size=vocab_size,
            mask_id=special("mask"),
            pad_id=special("pad"),
            special_ids=tuple(sorted({*ids, *sentinels})),
            probability=mlm_probability,
        )
    if objective == "span":
        if not sentinels:
            raise ValueError("objective span needs sentinel ids in the manifest's tokenizer")
        return SpanCollator(
            noise_density=noise_density,
            mean_span_length=mean_span_length,
            sentinel_ids=tuple(int(s) for s in sentinels),
            eos_id=special("eos"),
            pad_id=special("pad"),
        )
    raise ValueError(f"unknown objective {objective!r}: use causal_lm, mlm or span")
