"""Pretraining objectives as functions over token tensors: causal LM, BERT masking, T5 spans.

Everything here is vectorised over the batch and the sequence (no Python loop over tokens) and
draws its randomness from an explicit ``torch.Generator``, so the loader can make the data order
and the corruption a pure function of its seed and state. Losses are the mean over *target*
tokens (ignored positions do not count), and ``token_loss_sum`` returns the sum and the count
separately so that a trainer can normalise by the global number of targets across ranks and
micro-batches instead of averaging per-batch means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # the label of positions that carry no loss (PyTorch's cross_entropy default)


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------


def token_loss_sum(
    logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the non-ignored targets, and how many there are.

    logits (..., V) float, targets (...) long. Computed in float32 whatever the logits' dtype:
    a bf16 log-softmax over a 50k vocabulary loses most of the loss's precision.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    total = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="sum")
    count = (flat_targets != ignore_index).sum()
    return total, count


def _mean_over_targets(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    total, count = token_loss_sum(logits, targets, ignore_index)
    # A batch with no targets (possible for MLM on a tiny batch) gives 0, not NaN, so one
    # unlucky micro-batch cannot poison the gradient.
    return total / count.clamp(min=1)


def causal_lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Next-token loss. ``targets`` are already aligned with ``logits``: ``targets[:, t]`` is
    the token that follows input ``t`` (the loader cuts T + 1 tokens into inputs and targets,
    which keeps Transformer-XL segments contiguous). logits (B, T, V), targets (B, T)."""
    return _mean_over_targets(logits, targets, ignore_index)


def masked_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """MLM loss over the selected positions only (``labels`` from :func:`mask_tokens`)."""
    return _mean_over_targets(logits, labels, ignore_index)


def seq2seq_loss(logits: Tensor, targets: Tensor, pad_id: int | None = None) -> Tensor:
    """Decoder loss of an encoder-decoder. logits (B, U, V), targets (B, U); padding in the
    targets (``pad_id``) carries no loss."""
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE_INDEX)
    return _mean_over_targets(logits, targets, IGNORE_INDEX)


def shift_right(targets: Tensor, start_id: int) -> Tensor:
    """Decoder inputs for teacher forcing: ``[start, y0, ..., y_{U-2}]`` (T5 uses pad as start).
    targets (B, U) -> (B, U)."""
    start = targets.new_full((targets.size(0), 1), start_id)
    return torch.cat([start, targets[:, :-1]], dim=1)


# ------------------------------------------------------------------------------------------
# BERT masking
# ------------------------------------------------------------------------------------------


def mask_tokens(
    tokens: Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    probability: float = 0.15,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption: select each non-special token with ``probability``; of the
    selected, 80% become ``mask_id``, 10% a random ordinary token, 10% stay unchanged.

    tokens (B, T) long -> (inputs (B, T), labels (B, T)); labels hold the original token where
    selected and ``IGNORE_INDEX`` elsewhere. Special tokens (pad, bos, eos, ... ) are never
    selected, and random replacements are drawn from the ordinary tokens only (never a special
    token nor the mask token), so the model never sees a special token in an odd place.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    device = tokens.device
    special = torch.zeros(vocab_size, dtype=torch.bool)
    special[list(special_ids)] = True
    special[mask_id] = True
    ordinary = (~special).nonzero().squeeze(1).to(device)  # (V_ordinary,)
    if ordinary.numel() == 0:
        raise ValueError("every token id is special: nothing to draw random replacements from")
    special = special.to(device)

    def uniform() -> Tensor:
        # Drawn on CPU from the caller's generator, so the result does not depend on the device.
        return torch.rand(tokens.shape, generator=generator).to(device)

    selected = (uniform() < probability) & ~special[tokens]  # (B, T)
    action = uniform()  # one draw decides mask / random / keep for each selected position
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    picks = torch.randint(ordinary.numel(), tokens.shape, generator=generator).to(device)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, ordinary[picks], inputs)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, labels


# ------------------------------------------------------------------------------------------
# T5 span corruption
# ------------------------------------------------------------------------------------------


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) in a sequence of ``length`` tokens, as T5 rounds them;
    clamped so that there is at least one span and every span, noise or not, is non-empty."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def span_corruption_lengths(
    length: int, noise_density: float, mean_span_length: float
) -> tuple[int, int]:
    """(encoder input length S, decoder target length U) for ``length`` input tokens: the same
    arithmetic as T5's ``random_spans_helper``, with one sentinel per span on both sides and
    one EOS at the end of each. They depend on the three arguments only, so batches stack."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def _random_segment_lengths(
    batch: int, num_items: int, num_segments: int, generator: torch.Generator
) -> Tensor:
    """Split ``num_items`` into ``num_segments`` non-empty parts at random, per row -> (B, k).

    Chooses k - 1 distinct cut points among the num_items - 1 gaps (a random permutation's
    first k - 1 entries), like T5's ``_random_segmentation``.
    """
    ranks = torch.rand(batch, num_items - 1, generator=generator).argsort(dim=1).argsort(dim=1)
    cuts = (ranks < num_segments - 1).long()  # (B, n - 1), exactly k - 1 ones per row
    segment_id = torch.cat([cuts.new_zeros(batch, 1), cuts.cumsum(dim=1)], dim=1)  # (B, n)
    lengths = torch.zeros(batch, num_segments, dtype=torch.long)
    return lengths.scatter_add_(1, segment_id, torch.ones_like(segment_id))


def random_spans_noise_mask(
    batch: int,
    length: int,
    noise_density: float,
    mean_span_length: float,
    generator: torch.Generator,
) -> Tensor:
    """(B, T) bool: which tokens are noise. Each row alternates non-noise and noise spans,
    starting with non-noise and ending with noise, with exactly the counts of
    :func:`span_counts` (so every row corrupts to the same lengths)."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    noise = _random_segment_lengths(batch, num_noise, num_spans, generator)  # (B, k)
    keep = _random_segment_lengths(batch, length - num_noise, num_spans, generator)  # (B, k)
    interleaved = torch.stack([keep, noise], dim=2).reshape(batch, 2 * num_spans)  # (B, 2k)
    starts = interleaved.cumsum(dim=1)[:, :-1]  # (B, 2k - 1): where each span after the 1st starts
    boundary = torch.zeros(batch, length, dtype=torch.long).scatter_(1, starts, 1)
    return boundary.cumsum(dim=1) % 2 == 1  # span number odd = noise


def span_corruption(
    tokens: Tensor,
    *,
    noise_density: float,
    mean_span_length: float,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """T5's span corruption. tokens (B, T) -> (encoder_inputs (B, S), decoder_targets (B, U)).

    Each noise span is replaced by one sentinel in the input (the i-th span by
    ``sentinel_ids[i]``); the targets are, for each span, its sentinel followed by the span's
    tokens; both end with ``eos_id``. S and U come from :func:`span_corruption_lengths`. The
    noise mask has the same counts in every row, so every row fills its length exactly; the
    outputs are allocated with ``pad_id`` so that the fixed-shape contract would still hold
    for a mask with varying counts. ``tokens`` must not contain sentinel ids.
    """
    batch, length = tokens.shape
    _, num_spans = span_counts(length, noise_density, mean_span_length)
    if len(sentinel_ids) < num_spans:
        raise ValueError(f"{num_spans} noise spans need as many sentinels, got {len(sentinel_ids)}")
    enc_len, dec_len = span_corruption_lengths(length, noise_density, mean_span_length)
    device = tokens.device

    noise = random_spans_noise_mask(batch, length, noise_density, mean_span_length, generator)
    noise = noise.to(device)
    previous = F.pad(noise[:, :-1], (1, 0), value=False)
    span_start = noise & ~previous  # (B, T): first token of each noise span
    span_index = (span_start.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=tokens.dtype, device=device)
    sentinel = sentinels[span_index]  # (B, T), meaningful where span_start

    # Every position emits up to two slots: [sentinel if it starts a span, the token itself].
    # The input keeps the sentinel slot and the non-noise tokens; the target keeps the sentinel
    # slot and the noise tokens. Row-major boolean selection keeps the order, and every row
    # keeps the same number of slots, so the result reshapes to (B, ...).
    slots = torch.stack([sentinel, tokens], dim=2).reshape(batch, 2 * length)  # (B, 2T)
    keep_in = torch.stack([span_start, ~noise], dim=2).reshape(batch, 2 * length)
    keep_out = torch.stack([span_start, noise], dim=2).reshape(batch, 2 * length)

    def pack(keep: Tensor, size: int) -> Tensor:
        out = tokens.new_full((batch, size), pad_id)
        out[:, : size - 1] = slots[keep].view(batch, size - 1)
        out[:, size - 1] = eos_id
        return out

    return pack(keep_in, enc_len), pack(keep_out, dec_len)
