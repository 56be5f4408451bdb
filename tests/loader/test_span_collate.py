"""The loader's batched span corruption equals `pretrain.objectives.span_corruption` applied to
each row with its own seeded generator, for full rows and for short validation tails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.loader.collate import Row, SpanCollator, _segment_lengths, make_collator
from pretrain.objectives import IGNORE_INDEX, shift_right, span_corruption, span_counts
from tests.helpers.reference import reconstruct_from_spans
from tests.loader.shard_fixture import BOS, EOS, MASK, PAD, SENTINELS, UNK, VOCAB_SIZE

SPECIAL_IDS = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK, "mask": MASK, "sentinels": SENTINELS}


def _collator() -> SpanCollator:
    collator = make_collator("span", SPECIAL_IDS, vocab_size=VOCAB_SIZE)
    assert isinstance(collator, SpanCollator)
    return collator


@pytest.mark.parametrize("seq_len", [2, 7, 64, 512])
def test_equals_span_corruption_row_by_row(seq_len: int) -> None:
    collator = _collator()
    rng = np.random.default_rng(seq_len)
    for _ in range(10):
        lengths = [seq_len, seq_len, 0, 1, max(seq_len // 2, 2), seq_len]
        rows: list[Row] = [
            (
                rng.integers(0, 256, n).astype(np.int64),
                np.zeros(n, bool),
                int(rng.integers(1 << 62)),
            )
            for n in lengths
        ]
        batch = collator(rows, seq_len)
        for i, (tokens, _, seed) in enumerate(rows):
            enc_row, dec_row = batch["encoder_input_ids"][i], batch["decoder_targets"][i]
            dec_in = batch["decoder_input_ids"][i]
            # Every family's targets: IGNORE_INDEX on padding; the decoder input is T5's.
            padded = dec_row.masked_fill(dec_row == IGNORE_INDEX, PAD)
            assert torch.equal(dec_in, shift_right(padded[None], PAD)[0])
            if tokens.shape[0] < 2:
                assert (enc_row == PAD).all() and (dec_row == IGNORE_INDEX).all()
                continue
            enc, dec = span_corruption(
                torch.from_numpy(tokens)[None],
                noise_density=collator.noise_density,
                mean_span_length=collator.mean_span_length,
                sentinel_ids=collator.sentinel_ids,
                eos_id=EOS,
                pad_id=PAD,
                generator=torch.Generator().manual_seed(seed),
            )
            assert torch.equal(enc_row[: enc.shape[1]], enc[0]), (seq_len, i)
            assert torch.equal(dec_row[: dec.shape[1]], dec[0]), (seq_len, i)
            assert (enc_row[enc.shape[1] :] == PAD).all()
            assert (dec_row[dec.shape[1] :] == IGNORE_INDEX).all()
        full = [i for i, n in enumerate(lengths) if n == seq_len]
        restored = reconstruct_from_spans(
            batch["encoder_input_ids"][full],
            batch["decoder_targets"][full],
            sentinel_ids=SENTINELS,
        )
        assert restored == [rows[i][0].tolist() for i in full]


def test_too_few_sentinels_is_a_clear_error() -> None:
    rows: list[Row] = [(np.arange(1024, dtype=np.int64) % 256, np.zeros(1024, bool), 1)]
    with pytest.raises(ValueError, match="noise spans need as many sentinels"):
        _collator()(rows, 1024)  # 51 spans, 32 sentinels


def test_a_tie_at_a_cut_is_decided_by_torchs_sort() -> None:
    # Seed 114555 (found by search) draws two equal keep-span uniforms at the cut for 512
    # tokens; numpy's stable sort would cut at the other one of the pair than torch's.
    collator = _collator()
    seed, length = 114555, 512
    num_noise, num_spans = span_counts(length, collator.noise_density, collator.mean_span_length)
    generator = torch.Generator().manual_seed(seed)
    torch.rand(num_noise - 1, generator=generator)
    keep = torch.rand(length - num_noise - 1, generator=generator).numpy()[None]
    assert _segment_lengths(keep, length - num_noise, num_spans)[1][0]  # the tie is there
    tokens = np.arange(length, dtype=np.int64) % 256
    batch = collator([(tokens, np.zeros(length, bool), seed)] * 2, length)
    enc, dec = span_corruption(
        torch.from_numpy(tokens)[None],
        noise_density=collator.noise_density,
        mean_span_length=collator.mean_span_length,
        sentinel_ids=collator.sentinel_ids,
        eos_id=EOS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(batch["encoder_input_ids"], enc.expand(2, -1))
    assert torch.equal(batch["decoder_targets"], dec.expand(2, -1))
