"""Turn stream segments into model batches for each objective.

Every collator takes a list of rows, one per stream, each ``(tokens, doc_start, seed)``: the
segment's token ids (int64), its document-start flags and a seed that is a pure function of
(run seed, stream, position), so masking and span corruption come out identical after a resume.
Rows may be shorter than ``width`` (the tail of a validation stream); they are padded and the
padding carries no loss. The corruption is `pretrain.objectives`' (`mask_tokens`,
`span_corruption`) with one generator per row; for speed the collators make, per row, the random
draws those functions make for that row alone and apply the rest to the whole micro-batch in
numpy, with results equal to calling them row by row (see `MLMCollator`, `SpanCollator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from pretrain.objectives import (
    IGNORE_INDEX,
    shift_right,
    span_corruption,
    span_corruption_lengths,
    span_counts,
)

Objective = Literal["causal_lm", "mlm", "span"]
Row = tuple[np.ndarray, np.ndarray, int]  # (tokens int64, doc_start bool, seed)
Batch = dict[str, Tensor]


class Collator(Protocol):
    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        """(tokens to read per row, tokens to advance the stream by) for segments of seq_len."""
        ...

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch: ...


def with_memory_reset(batch: Batch, breaks: Sequence[bool]) -> Batch:
    """``batch`` plus ``memory_reset`` (B,) bool: True for a row whose text does not continue
    what the row read at the previous step (a break in its stream, or in a mixture a change of
    source), so a model with Transformer-XL memory must not attend to that memory. The
    loaders, not the collators, know this, and it is the same for every objective."""
    batch["memory_reset"] = torch.tensor(list(breaks), dtype=torch.bool)
    return batch


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
    attention_mask (False on padding), all (B, T).

    The result is exactly `pretrain.objectives.mask_tokens` applied to each row alone with a
    ``torch.Generator`` seeded by that row's seed (tests check equality), but computed for the
    whole micro-batch at once: per row only the three random draws that `mask_tokens` makes
    (selection uniforms, action uniforms, replacement picks, in that order and from that row's
    own generator), then the 80/10/10 selection for all rows together in numpy. Calling
    `mask_tokens` once per micro-batch would share one generator between rows, so a row's mask
    would depend on its neighbours (on which rank or micro-batch holds the stream); calling it
    per row, as before, cost more than reading the data (see docs/loader.md).
    """

    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: tuple[int, ...]
    probability: float
    _special: np.ndarray = field(init=False, repr=False, compare=False)
    _ordinary: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"probability must be in (0, 1), got {self.probability}")
        # The same tables `mask_tokens` builds on every call, built once.
        special = np.zeros(self.vocab_size, dtype=bool)
        special[list(self.special_ids)] = True
        special[self.mask_id] = True
        ordinary = np.flatnonzero(~special).astype(np.int64)
        if ordinary.size == 0:
            raise ValueError("every token id is special: nothing to draw random replacements from")
        object.__setattr__(self, "_special", special)
        object.__setattr__(self, "_ordinary", ordinary)

    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        return seq_len, seq_len

    def draws(self, rows: Sequence[Row], width: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each row's (selection uniforms, action uniforms, replacement picks), (B, width), drawn
        as `mask_tokens` draws them for that row alone; zero past a row's length."""
        select = torch.zeros(len(rows), width)
        action = torch.zeros(len(rows), width)
        picks = torch.zeros(len(rows), width, dtype=torch.long)
        high = int(self._ordinary.size)
        for i, (t, _, seed) in enumerate(rows):
            n = t.shape[0]
            if n == 0:
                continue
            # One generator per row, seeded by that row's stream and position: the masks do
            # not depend on which rank or micro-batch the stream sits in.
            generator = _generator(seed)
            torch.rand((n,), generator=generator, out=select[i, :n])
            torch.rand((n,), generator=generator, out=action[i, :n])
            torch.randint(high, (n,), generator=generator, out=picks[i, :n])
        return select, action, picks

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch:
        tokens, starts, valid = _padded(rows, seq_len, self.pad_id)
        select, action, picks = (x.numpy() for x in self.draws(rows, seq_len))
        tok = tokens.numpy()
        # float32 thresholds: mask_tokens compares float32 uniforms with these in float32.
        p, mask_below, random_below = (np.float32(x) for x in (self.probability, 0.8, 0.9))
        selected = (select < p) & ~self._special[tok] & valid.numpy()
        to_mask = selected & (action < mask_below)
        to_random = selected & (action >= mask_below) & (action < random_below)
        inputs = np.where(to_mask, self.mask_id, tok)
        inputs = np.where(to_random, self._ordinary[picks], inputs)
        labels = np.where(selected, tok, IGNORE_INDEX)
        return {
            "input_ids": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "doc_start": starts,
            "attention_mask": valid,
        }


def _segment_lengths(
    uniforms: np.ndarray, num_items: int, num_segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """`pretrain.objectives._random_segment_lengths` for rows of given uniforms, (B, n - 1) ->
    ((B, k) segment lengths, (B,) tie flags): the k - 1 cuts sit after the items whose uniforms
    are the k - 1 smallest. Where the (k-1)-th and k-th smallest are equal, which of the tied
    items is cut depends on the sort (torch's CPU argsort is not stable), so those rows are
    flagged for the caller to compute with torch itself."""
    batch, gaps = uniforms.shape
    cut = num_segments - 1
    order = np.argsort(uniforms, axis=1, kind="stable")
    if 0 < cut < gaps:
        ranked = np.take_along_axis(uniforms, order[:, cut - 1 : cut + 1], axis=1)
        ties = ranked[:, 0] == ranked[:, 1]
    else:
        ties = np.zeros(batch, dtype=bool)
    cuts = np.sort(order[:, :cut], axis=1) + 1  # (B, k - 1): first item of segments 1..k-1
    bounds = np.concatenate(
        [np.zeros((batch, 1), np.int64), cuts, np.full((batch, 1), num_items, np.int64)], axis=1
    )
    return np.diff(bounds, axis=1), ties


@dataclass(frozen=True)
class SpanCollator:
    """encoder_input_ids (B, S, padded with ``pad_id``), decoder_input_ids (B, U: the targets
    shifted right, from ``pad_id``) and decoder_targets (B, U, ``IGNORE_INDEX`` on padding, as
    every family's targets), T5 style. S and U depend on seq_len only.

    Full-length rows (every training row) are corrupted together: per row, the two draws
    `span_corruption` makes for that row alone (noise-span and keep-span cut uniforms, from the
    row's own generator, in that order), then the segmentation, noise mask and packing of
    `pretrain.objectives.span_corruption` for the whole micro-batch in numpy; tests check the
    result equals `span_corruption` per row. Shorter rows (the tail of a validation stream), and
    the rare full row whose uniforms tie at a cut, call `span_corruption` one by one.
    """

    noise_density: float
    mean_span_length: float
    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int

    def segment_tokens(self, seq_len: int) -> tuple[int, int]:
        return seq_len, seq_len

    def _full_rows(self, rows: Sequence[Row], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`span_corruption` of rows that all have exactly seq_len tokens, batched."""
        batch, length = len(rows), seq_len
        num_noise, num_spans = span_counts(length, self.noise_density, self.mean_span_length)
        if len(self.sentinel_ids) < num_spans:
            raise ValueError(
                f"{num_spans} noise spans need as many sentinels, got {len(self.sentinel_ids)}"
            )
        enc_len, dec_len = span_corruption_lengths(
            length, self.noise_density, self.mean_span_length
        )
        noise_u = torch.empty(batch, num_noise - 1)
        keep_u = torch.empty(batch, length - num_noise - 1)
        for i, (_, _, seed) in enumerate(rows):
            generator = _generator(seed)  # the row's own generator: same draws as alone
            torch.rand((num_noise - 1,), generator=generator, out=noise_u[i])
            torch.rand((length - num_noise - 1,), generator=generator, out=keep_u[i])
        noise_len, noise_ties = _segment_lengths(noise_u.numpy(), num_noise, num_spans)
        keep_len, keep_ties = _segment_lengths(keep_u.numpy(), length - num_noise, num_spans)
        interleaved = np.stack([keep_len, noise_len], axis=2).reshape(batch, 2 * num_spans)
        starts = np.cumsum(interleaved, axis=1)[:, :-1]  # (B, 2k - 1)
        boundary = np.zeros((batch, length), np.int64)
        np.put_along_axis(boundary, starts, 1, axis=1)
        noise = np.cumsum(boundary, axis=1) % 2 == 1  # (B, T)

        tokens = np.stack([t for t, _, _ in rows])  # (B, T) int64
        previous = np.zeros_like(noise)
        previous[:, 1:] = noise[:, :-1]
        span_start = noise & ~previous
        span_index = np.maximum(np.cumsum(span_start, axis=1) - 1, 0)
        sentinel = np.asarray(self.sentinel_ids, dtype=np.int64)[span_index]
        slots = np.stack([sentinel, tokens], axis=2).reshape(batch, 2 * length)
        keep_in = np.stack([span_start, ~noise], axis=2).reshape(batch, 2 * length)
        keep_out = np.stack([span_start, noise], axis=2).reshape(batch, 2 * length)

        def pack(keep: np.ndarray, size: int) -> np.ndarray:
            out = np.full((batch, size), self.pad_id, dtype=np.int64)
            out[:, : size - 1] = slots[keep].reshape(batch, size - 1)
            out[:, size - 1] = self.eos_id
            return out

        encoder, decoder = pack(keep_in, enc_len), pack(keep_out, dec_len)
        # A tie at the cut (about 1e-5 of rows): torch's own sort decides, as in span_corruption.
        for tied in np.flatnonzero(noise_ties | keep_ties).tolist():
            encoder[tied], decoder[tied] = self._one_row(rows[tied])
        return encoder, decoder

    def _one_row(self, row: Row) -> tuple[np.ndarray, np.ndarray]:
        tokens, _, seed = row
        enc, dec = span_corruption(
            torch.from_numpy(tokens)[None],
            noise_density=self.noise_density,
            mean_span_length=self.mean_span_length,
            sentinel_ids=self.sentinel_ids,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            generator=_generator(seed),
        )
        return enc[0].numpy(), dec[0].numpy()

    def __call__(self, rows: Sequence[Row], seq_len: int) -> Batch:
        enc_len, dec_len = span_corruption_lengths(
            seq_len, self.noise_density, self.mean_span_length
        )
        encoder = np.full((len(rows), enc_len), self.pad_id, dtype=np.int64)
        decoder = np.full((len(rows), dec_len), self.pad_id, dtype=np.int64)
        full = [i for i, (t, _, _) in enumerate(rows) if t.shape[0] == seq_len]
        if full:
            encoder[full], decoder[full] = self._full_rows([rows[i] for i in full], seq_len)
        for i, row in enumerate(rows):
            if row[0].shape[0] == seq_len or row[0].shape[0] < 2:  # < 2: nothing to corrupt
                continue
            # A short tail corrupts to shorter outputs: padded to the full-segment shape.
            enc, dec = self._one_row(row)
            encoder[i, : enc.shape[0]], decoder[i, : dec.shape[0]] = enc, dec
        targets = torch.from_numpy(decoder)
        return {
            "encoder_input_ids": torch.from_numpy(encoder),
            # T5's decoder input: the targets shifted right, starting from pad.
            "decoder_input_ids": shift_right(targets, self.pad_id),
            "decoder_targets": targets.masked_fill(targets == self.pad_id, IGNORE_INDEX),
        }


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
