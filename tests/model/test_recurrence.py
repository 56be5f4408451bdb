"""Causality, Transformer-XL recurrence, memory handling and incremental decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.generate.sampling import SamplingConfig, sample
from pretrain.model import Decoder, Encoder, EncoderDecoder
from pretrain.model.attention import Positions
from pretrain.model.decoding import decode_step
from pretrain.objectives import causal_lm_loss
from tests.model.common import VOCAB, tiny_model, tokens


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Float64 agreement up to rounding: a real mistake moves outputs by far more."""
    return torch.allclose(a, b, rtol=1e-9, atol=1e-10)


MEMORY_SCHEMES = ["relative", "rotary"]


# ------------------------------------------------------------------------------------------
# Causality
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["learned", "relative", "rotary"])
def test_future_tokens_do_not_change_past_outputs(position: str) -> None:
    model = tiny_model(position=position)
    x = tokens(2, 12)
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % VOCAB  # change positions 7.. only
    out_x, _ = model(x)
    out_y, _ = model(y)
    assert close(out_x[:, :7], out_y[:, :7])
    assert not torch.allclose(out_x[:, 7:], out_y[:, 7:])  # the change is visible downstream


@pytest.mark.parametrize("position", MEMORY_SCHEMES)
def test_future_tokens_do_not_change_past_outputs_with_memory(position: str) -> None:
    model = tiny_model(position=position, mem_len=8)
    _, mems = model(tokens(2, 8, seed=1))
    x = tokens(2, 8, seed=2)
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % VOCAB
    out_x, _ = model(x, mems)
    out_y, _ = model(y, mems)
    assert close(out_x[:, :5], out_y[:, :5])
    assert not torch.allclose(out_x[:, 5:], out_y[:, 5:])
    # ... and the memory is really used: another past changes the present.
    _, other = model(tokens(2, 8, seed=3))
    assert not torch.allclose(model(x, other)[0], out_x)


def test_encoder_decoder_decoder_side_is_causal() -> None:
    model = tiny_model(family="encoder_decoder", position="relative", mem_len=6)
    assert isinstance(model, EncoderDecoder)
    src = tokens(2, 9)
    tgt = tokens(2, 6, seed=1)
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    a, mems = model(src, tgt)
    b, _ = model(src, changed)
    assert close(a[:, :4], b[:, :4])
    assert len(mems) == 2 and mems[0].shape == (2, 6, 32)  # memory on the encoder side
    other_src = src.clone()
    other_src[:, -1] = (other_src[:, -1] + 1) % VOCAB  # the decoder sees the whole source
    assert not torch.allclose(model(other_src, tgt)[0][:, 0], a[:, 0])


# ------------------------------------------------------------------------------------------
# Recurrence equivalence
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", MEMORY_SCHEMES)
@pytest.mark.parametrize("mem_len", [8, 11])
def test_two_segments_with_memory_equal_one_causal_pass(position: str, mem_len: int) -> None:
    model = tiny_model(position=position, mem_len=mem_len)
    x = tokens(3, 16)
    full, _ = model(x, mem_len=0)  # one causal pass over both segments, no memory
    first, mems = model(x[:, :8])
    second, _ = model(x[:, 8:], mems)
    assert close(first, full[:, :8])
    assert close(second, full[:, 8:])


@pytest.mark.parametrize("position", MEMORY_SCHEMES)
def test_encoder_with_memory_equals_a_block_structured_mask(
    position: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(family="encoder", position=position, mem_len=8)
    assert isinstance(model, Encoder)
    x = tokens(2, 16)
    first, mems = model(x[:, :8])
    second, _ = model(x[:, 8:], mems)

    # One pass over both segments where segment 1 sees only itself and segment 2 sees both:
    # exactly what segment-level recurrence computes.
    block = torch.ones(16, 16, dtype=torch.bool)
    block[:8, 8:] = False
    original = model.stack.positions

    def with_block_mask(*args: object) -> Positions:
        pos = original(*args)  # type: ignore[arg-type]
        pos.mask = block
        return pos

    monkeypatch.setattr(model.stack, "positions", with_block_mask)
    full, _ = model(x, mem_len=0)
    assert close(first, full[:, :8])
    assert close(second, full[:, 8:])


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------


def test_no_gradient_reaches_the_memory() -> None:
    model = tiny_model(position="relative", mem_len=8).train()
    x = tokens(2, 17)
    _, mems = model(x[:, :8])
    assert all(not m.requires_grad and m.grad_fn is None for m in mems)
    logits, _ = model(x[:, 8:16], mems)
    causal_lm_loss(logits, x[:, 9:17]).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    # Same loss with memory that is a fresh copy (certainly no graph behind it): if any
    # gradient flowed through the memory into segment 1, these would differ.
    model.zero_grad()
    fresh = [m.clone() for m in mems]
    logits, _ = model(x[:, 8:16], fresh)
    causal_lm_loss(logits, x[:, 9:17]).backward()
    again = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(again) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, again, strict=True))


def test_memory_is_capped_at_mem_len_and_holds_the_latest_layer_inputs() -> None:
    model = tiny_model(position="rotary", mem_len=7)
    assert isinstance(model, Decoder)
    x = tokens(2, 15)
    _, mems = model(x[:, :5])
    assert [m.shape for m in mems] == [(2, 5, 32)] * 2
    _, mems = model(x[:, 5:10], mems)
    assert [m.shape for m in mems] == [(2, 7, 32)] * 2
    _, mems = model(x[:, 10:15], mems)
    assert [m.shape for m in mems] == [(2, 7, 32)] * 2
    # Layer 0's input is the token embedding (no learned positions): the last 7 tokens'.
    assert torch.equal(mems[0], model.tok_emb(x[:, 8:15]))


def test_memory_is_empty_without_recurrence_and_init_mems_is_empty() -> None:
    model = tiny_model(position="relative")
    _, mems = model(tokens(1, 4))
    assert mems == []
    empty = model.init_mems(3)
    assert [m.shape for m in empty] == [(3, 0, 32)] * 2
    x = tokens(3, 4)
    assert close(model(x, [m.double() for m in empty])[0], model(x)[0])


def test_memory_survives_a_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model(position="relative", mem_len=6)
    x = tokens(2, 12)
    _, mems = model(x[:, :6])
    torch.save(mems, tmp_path / "mems.pt")
    loaded = torch.load(tmp_path / "mems.pt", weights_only=True)
    expected, expected_mems = model(x[:, 6:], mems)
    got, got_mems = model(x[:, 6:], loaded)
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(got_mems, expected_mems, strict=True))


def test_wrong_number_of_memory_layers_is_an_error() -> None:
    model = tiny_model(position="relative", mem_len=4)
    with pytest.raises(ValueError, match="memory for 2 layers"):
        model(tokens(1, 4), [torch.zeros(1, 4, 32, dtype=torch.float64)])


# ------------------------------------------------------------------------------------------
# Incremental decoding
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["learned", "relative", "rotary"])
def test_incremental_decoding_matches_a_full_pass(position: str) -> None:
    model = tiny_model(position=position)
    assert isinstance(model, Decoder)
    x = tokens(2, 10)
    full, _ = model(x)
    logits, cache = decode_step(model, x[:, :4], None)  # prefill
    steps = [logits]
    for t in range(4, 10):
        logits, cache = decode_step(model, x[:, t : t + 1], cache)
        steps.append(logits)
    assert close(torch.cat(steps, dim=1), full)
    assert cache[0].shape == (2, 10, 32)


def test_greedy_sampling_equals_recomputing_without_cache() -> None:
    model = tiny_model(position="rotary", seed=3)
    assert isinstance(model, Decoder)
    prompt = tokens(2, 3)
    out = sample(model, prompt, SamplingConfig(max_new_tokens=6, temperature=0.0))
    naive = prompt
    for _ in range(6):
        logits, _ = model(naive)
        naive = torch.cat([naive, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(torch.cat([prompt, out], dim=1), naive)


def test_learned_positions_refuse_to_decode_past_their_table() -> None:
    model = tiny_model(position="learned", max_seq_len=8)
    assert isinstance(model, Decoder)
    # The last new token is never fed: 4 + 5 new tokens use positions 0..7, 4 + 6 need 8.
    assert sample(model, tokens(1, 4), SamplingConfig(max_new_tokens=5)).shape == (1, 5)
    with pytest.raises(ValueError, match="learned position table"):
        sample(model, tokens(1, 4), SamplingConfig(max_new_tokens=6))
