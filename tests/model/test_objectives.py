"""Objectives: losses normalised by target count, BERT masking statistics, T5 span corruption."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.objectives import (
    IGNORE_INDEX,
    causal_lm_loss,
    mask_tokens,
    masked_lm_loss,
    random_spans_noise_mask,
    seq2seq_loss,
    shift_right,
    span_corruption,
    span_corruption_lengths,
    span_counts,
    token_loss_sum,
)
from tests.helpers.reference import reconstruct_from_spans

VOCAB = 50
SPECIAL = (0, 1, 2)  # pad, bos, eos
MASK_ID = 3
SENTINELS = list(range(VOCAB - 1, VOCAB - 41, -1))  # 49, 48, ... as in T5 (top of the vocabulary)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------


def test_causal_lm_loss_is_mean_over_non_ignored_targets() -> None:
    logits = torch.randn(2, 5, 7, generator=_gen())
    targets = torch.randint(7, (2, 5), generator=_gen(1))
    targets[0, :3] = IGNORE_INDEX
    # Per-token losses computed independently, then averaged over the 7 real targets only.
    log_probs = logits.log_softmax(-1)
    keep = targets != IGNORE_INDEX
    picked = log_probs[keep].gather(1, targets[keep].unsqueeze(1)).squeeze(1)
    assert torch.allclose(causal_lm_loss(logits, targets), -picked.sum() / 7)
    total, count = token_loss_sum(logits, targets)
    assert count.item() == 7
    assert torch.allclose(total, -picked.sum())


def test_loss_with_no_targets_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 5, requires_grad=True)
    loss = masked_lm_loss(logits, torch.full((1, 3), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_seq2seq_loss_ignores_padding_and_bf16_logits_are_upcast() -> None:
    logits = torch.randn(2, 4, 9, generator=_gen())
    targets = torch.tensor([[5, 6, 7, 0], [4, 0, 0, 0]])
    expected = F.cross_entropy(logits[targets != 0], targets[targets != 0])
    assert torch.allclose(seq2seq_loss(logits, targets, pad_id=0), expected)
    low = seq2seq_loss(logits.bfloat16(), targets, pad_id=0)
    assert low.dtype == torch.float32


def test_shift_right() -> None:
    targets = torch.tensor([[5, 6, 7], [8, 9, 1]])
    assert shift_right(targets, start_id=0).tolist() == [[0, 5, 6], [0, 8, 9]]


# ------------------------------------------------------------------------------------------
# BERT masking
# ------------------------------------------------------------------------------------------


def _tokens_with_specials(batch: int, length: int, seed: int) -> torch.Tensor:
    tokens = torch.randint(len(SPECIAL) + 1, VOCAB, (batch, length), generator=_gen(seed))
    tokens[:, 0] = 1  # bos
    tokens[:, -1] = 2  # eos
    tokens[:, 10:20] = 0  # padding
    return tokens


def test_mask_tokens_rates_and_80_10_10_split_within_statistical_bounds() -> None:
    tokens = _tokens_with_specials(64, 512, seed=1)
    p = 0.15
    inputs, labels = mask_tokens(
        tokens,
        vocab_size=VOCAB,
        mask_id=MASK_ID,
        special_ids=SPECIAL,
        probability=p,
        generator=_gen(2),
    )
    ordinary = torch.isin(tokens, torch.tensor(SPECIAL), invert=True)
    n = int(ordinary.sum())
    selected = labels != IGNORE_INDEX
    k = int(selected.sum())

    def within(count: int, total: int, prob: float) -> bool:
        # 6 sigma: a correct implementation fails once in ~5e8 runs, a wrong rate (say 0.8
        # of 15% instead of 15%, or 70/20/10) misses by tens of sigmas at these sizes.
        return abs(count / total - prob) < 6 * math.sqrt(prob * (1 - prob) / total)

    assert within(k, n, p)
    assert within(int((inputs[selected] == MASK_ID).sum()), k, 0.8)
    changed = selected & (inputs != MASK_ID) & (inputs != tokens)
    # A random replacement draws the original token with probability 1/V_ordinary, so the
    # "changed" count slightly undercounts the 10% random branch.
    v_ordinary = VOCAB - len(SPECIAL) - 1
    assert within(int(changed.sum()), k, 0.1 * (1 - 1 / v_ordinary))
    kept = selected & (inputs == tokens)
    assert within(int(kept.sum()), k, 0.1 + 0.1 / v_ordinary)


def test_mask_tokens_never_touches_or_produces_special_tokens() -> None:
    tokens = _tokens_with_specials(32, 256, seed=3)
    inputs, labels = mask_tokens(
        tokens,
        vocab_size=VOCAB,
        mask_id=MASK_ID,
        special_ids=SPECIAL,
        probability=0.5,
        generator=_gen(4),
    )
    special = torch.isin(tokens, torch.tensor(SPECIAL))
    assert torch.equal(inputs[special], tokens[special])
    assert (labels[special] == IGNORE_INDEX).all()
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], tokens[selected])
    assert (inputs[~selected] == tokens[~selected]).all()
    replaced = selected & (inputs != MASK_ID)
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()


def test_mask_tokens_is_deterministic_per_seed() -> None:
    tokens = _tokens_with_specials(4, 64, seed=5)
    kwargs = dict(vocab_size=VOCAB, mask_id=MASK_ID, special_ids=SPECIAL)
    a = mask_tokens(tokens, generator=_gen(7), **kwargs)  # type: ignore[arg-type]
    b = mask_tokens(tokens, generator=_gen(7), **kwargs)  # type: ignore[arg-type]
    c = mask_tokens(tokens, generator=_gen(8), **kwargs)  # type: ignore[arg-type]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


# ------------------------------------------------------------------------------------------
# T5 span corruption
# ------------------------------------------------------------------------------------------


def test_lengths_match_t5_random_spans_helper() -> None:
    # T5's default: 512 tokens at 15% noise, mean span 3 -> 77 noise tokens in 26 spans;
    # inputs 512 - 77 + 26 + 1 = 462, targets 77 + 26 + 1 = 104.
    assert span_counts(512, 0.15, 3.0) == (77, 26)
    assert span_corruption_lengths(512, 0.15, 3.0) == (462, 104)
    assert span_counts(2, 0.15, 3.0) == (1, 1)  # clamped: at least one token each way


@pytest.mark.parametrize(
    ("length", "density", "mean"), [(64, 0.15, 3.0), (37, 0.5, 2.0), (8, 0.3, 8.0)]
)
def test_noise_mask_has_exact_counts_and_alternating_spans(
    length: int, density: float, mean: float
) -> None:
    mask = random_spans_noise_mask(16, length, density, mean, _gen(9))
    num_noise, num_spans = span_counts(length, density, mean)
    assert (mask.sum(1) == num_noise).all()
    starts = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
    assert (starts.sum(1) == num_spans).all()
    assert not mask[:, 0].any() and mask[:, -1].all()  # starts with keep, ends with noise


@pytest.mark.parametrize(
    ("length", "density", "mean"), [(64, 0.15, 3.0), (37, 0.5, 2.0), (9, 0.3, 1.0)]
)
def test_span_corruption_reconstructs_the_original_exactly(
    length: int, density: float, mean: float
) -> None:
    tokens = torch.randint(0, 10, (8, length), generator=_gen(10))  # pad/eos ids occur as data
    enc, dec = span_corruption(
        tokens,
        noise_density=density,
        mean_span_length=mean,
        sentinel_ids=SENTINELS,
        eos_id=2,
        pad_id=0,
        generator=_gen(11),
    )
    assert (enc.shape[1], dec.shape[1]) == span_corruption_lengths(length, density, mean)
    assert (enc[:, -1] == 2).all() and (dec[:, -1] == 2).all()
    num_spans = span_counts(length, density, mean)[1]
    # Sentinels appear in order, once each, on both sides.
    for side in (enc, dec):
        found = side[torch.isin(side, torch.tensor(SENTINELS))].view(8, num_spans)
        assert (found == torch.tensor(SENTINELS[:num_spans])).all()
    assert reconstruct_from_spans(enc, dec, sentinel_ids=SENTINELS) == tokens.tolist()


def test_span_corruption_is_seeded_and_varies_across_rows() -> None:
    tokens = torch.arange(3, 67).repeat(4, 1)  # identical rows
    kw = dict(noise_density=0.15, mean_span_length=3.0, sentinel_ids=SENTINELS, eos_id=2, pad_id=0)
    enc1, _ = span_corruption(tokens, generator=_gen(5), **kw)  # type: ignore[arg-type]
    enc2, _ = span_corruption(tokens, generator=_gen(5), **kw)  # type: ignore[arg-type]
    assert torch.equal(enc1, enc2)
    assert len({tuple(r) for r in enc1.tolist()}) > 1  # each row draws its own spans


def test_span_corruption_needs_enough_sentinels() -> None:
    with pytest.raises(ValueError, match="sentinels"):
        span_corruption(
            torch.zeros(1, 100, dtype=torch.long),
            noise_density=0.5,
            mean_span_length=1.0,
            sentinel_ids=[99],
            eos_id=2,
            pad_id=0,
            generator=_gen(),
        )
