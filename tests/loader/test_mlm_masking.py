"""The loader's batched MLM masking: equal to `pretrain.objectives.mask_tokens` applied to each
row with its own seeded generator, independent of the other rows, and with BERT's statistics
(15% of ordinary tokens, 80% mask / 10% random ordinary token / 10% unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.loader.collate import MLMCollator, Row, make_collator
from pretrain.objectives import IGNORE_INDEX, mask_tokens
from tests.loader.shard_fixture import BOS, EOS, MASK, PAD, SENTINELS, UNK, VOCAB_SIZE

SPECIAL_IDS = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK, "mask": MASK, "sentinels": SENTINELS}


def _collator() -> MLMCollator:
    collator = make_collator("mlm", SPECIAL_IDS, vocab_size=VOCAB_SIZE)
    assert isinstance(collator, MLMCollator)
    return collator


def _rows(rng: np.random.Generator, lengths: list[int]) -> list[Row]:
    # tokens over the whole vocabulary, special ids included, as a stream has (EOS at least)
    return [
        (
            rng.integers(0, VOCAB_SIZE, n).astype(np.int64),
            np.zeros(n, dtype=bool),
            int(rng.integers(1 << 62)),
        )
        for n in lengths
    ]


def test_equals_mask_tokens_row_by_row() -> None:
    collator = _collator()
    rows = _rows(np.random.default_rng(0), [96, 96, 0, 31, 1, 96])  # full, empty, short tails
    batch = collator(rows, 96)
    assert batch["input_ids"].shape == batch["labels"].shape == (6, 96)
    for i, (tokens, _, seed) in enumerate(rows):
        n = tokens.shape[0]
        want_in, want_labels = mask_tokens(
            torch.from_numpy(tokens)[None],
            vocab_size=VOCAB_SIZE,
            mask_id=MASK,
            special_ids=collator.special_ids,
            probability=collator.probability,
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(batch["input_ids"][i, :n], want_in[0]), i
        assert torch.equal(batch["labels"][i, :n], want_labels[0]), i
        # padding: pad id in, no loss, not attended
        assert (batch["input_ids"][i, n:] == PAD).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].tolist() == [True] * n + [False] * (96 - n)


def test_a_rows_mask_does_not_depend_on_the_other_rows() -> None:
    collator = _collator()
    rows = _rows(np.random.default_rng(1), [64] * 5)
    alone = collator(rows[2:3], 64)
    together = collator(rows, 64)
    reordered = collator([rows[4], rows[2], rows[0]], 64)
    for key in ("input_ids", "labels"):
        assert torch.equal(alone[key][0], together[key][2])
        assert torch.equal(alone[key][0], reordered[key][1])
    other_seed = collator([(rows[2][0], rows[2][1], rows[2][2] + 1)], 64)
    assert not torch.equal(alone["labels"], other_seed["labels"])  # the seed does matter


def test_bert_statistics() -> None:
    collator = _collator()
    rows = _rows(np.random.default_rng(2), [1024] * 96)
    batch = collator(rows, 1024)
    tokens = torch.from_numpy(np.stack([r[0] for r in rows]))
    inputs, labels = batch["input_ids"], batch["labels"]
    special = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    special[list(collator.special_ids)] = True
    special[MASK] = True
    is_special = special[tokens]
    selected = labels != IGNORE_INDEX

    assert not (selected & is_special).any()  # special tokens are never selected
    assert torch.equal(labels[selected], tokens[selected])  # labels are the original tokens
    assert torch.equal(inputs[~selected], tokens[~selected])  # the rest is untouched

    def near(observed: float, p: float, n: int) -> bool:  # within 5 binomial sigmas
        return abs(observed - p) <= 5 * (p * (1 - p) / n) ** 0.5

    ordinary = int((~is_special).sum())
    n_sel = int(selected.sum())
    assert near(n_sel / ordinary, 0.15, ordinary)
    got = inputs[selected]
    orig = tokens[selected]
    masked = got == MASK
    assert near(float(masked.float().mean()), 0.8, n_sel)
    replaced = ~masked & (got != orig)  # a random pick may equal the original token
    v_ordinary = VOCAB_SIZE - int(special.sum())
    assert near(float(replaced.float().mean()), 0.1 * (1 - 1 / v_ordinary), n_sel)
    assert not special[got[~masked]].any()  # random replacements are never special tokens
    assert near(float((got == orig).float().mean()), 0.1 + 0.1 / v_ordinary, n_sel)
    # replacements cover the ordinary vocabulary, not some corner of it
    assert torch.unique(got[replaced]).numel() > 0.9 * v_ordinary


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_probability_out_of_range_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        make_collator("mlm", SPECIAL_IDS, vocab_size=VOCAB_SIZE, mlm_probability=probability)
