"""Transformer-XL memory at a break in a row's text (``memory_reset``: a mixture's change of
source, a jump in a stream): the row's memory is masked out of attention, for every family and
memory scheme, and stays masked while its slots are still in the window; the other rows keep
theirs; without a reset nothing changes, and the trainer's and the evaluator's batches carry
the loaders' flags into the model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pretrain.batch_loss import forward_loss, to_device
from pretrain.model.blocks import row_keys
from pretrain.model.families import EncoderDecoder, LanguageModel
from tests.model.common import tiny_model, tokens

FAMILIES = ["decoder", "encoder", "encoder_decoder"]
SCHEMES = ["relative", "rotary"]
SEQ = 8


def close(a: Tensor, b: Tensor) -> bool:
    """Agreement up to rounding (rotary tables are float32, so the same text at other absolute
    positions differs by ~1e-9 even in float64); memory moves outputs by ~1e-1."""
    return torch.allclose(a, b, rtol=1e-7, atol=1e-7)


def run(
    model: LanguageModel, x: Tensor, mems: list[Tensor] | None, reset: Tensor | None = None
) -> tuple[Tensor, list[Tensor]]:
    inputs = (x, x) if isinstance(model, EncoderDecoder) else (x,)
    out: tuple[Tensor, list[Tensor]] = model(*inputs, mems, memory_reset=reset)
    return out


def memory_model(family: str, position: str, mem_len: int) -> LanguageModel:
    model = tiny_model(family=family, position=position, mem_len=mem_len)
    with torch.no_grad():  # u and v start at zero: give the position biases some weight
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("position", SCHEMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_reset_row_sees_no_memory_and_the_others_keep_theirs(family: str, position: str) -> None:
    model = memory_model(family, position, mem_len=SEQ)
    first, second = tokens(3, SEQ, seed=1), tokens(3, SEQ, seed=2)
    _, mems = run(model, first, None)
    reset = torch.tensor([False, True, False])
    out, new_mems = run(model, second, mems, reset)
    alone, _ = run(model, second, None)
    with_memory, _ = run(model, second, mems)
    assert close(out[1], alone[1])  # the reset row: as if the stream started here
    for row in (0, 2):  # the rows that continue still use their memory
        assert close(out[row], with_memory[row])
        assert not torch.allclose(out[row], alone[row])
    # mem_len = SEQ: the new memory is this segment's only, nothing left to mask.
    assert len(new_mems) == len(model.memory_stack.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_slots_stay_masked_while_they_are_in_a_longer_memory(family: str) -> None:
    # mem_len = 2 segments: after a reset, the old text's last segment is still in the memory
    # for one more step; the row must not see it, and reads exactly what a row that started
    # at the reset reads.
    model = memory_model(family, "relative", mem_len=2 * SEQ)
    a, b, c, d = (tokens(2, SEQ, seed=s) for s in range(4))
    _, mems = run(model, a, None)
    _, mems = run(model, b, mems)
    _, mems = run(model, c, mems, torch.tensor([True, False]))
    assert len(mems) == len(model.memory_stack.layers) + 1  # the usable slots ride along
    assert mems[-1].tolist() == [[False] * SEQ + [True] * SEQ, [True] * 2 * SEQ]
    out, mems = run(model, d, mems)

    _, fresh = run(model, c, None)
    started_at_reset, _ = run(model, d, fresh)
    _, kept = run(model, b, run(model, a, None)[1])
    _, kept = run(model, c, kept)
    continued, _ = run(model, d, kept)
    assert close(out[0], started_at_reset[0])
    assert close(out[1], continued[1])
    # Once the old slots have left the window the memory is plain again.
    assert len(mems) == len(model.memory_stack.layers)


@pytest.mark.parametrize("position", SCHEMES)
def test_without_a_reset_the_memory_and_the_fast_paths_are_unchanged(position: str) -> None:
    model = memory_model("decoder", position, mem_len=SEQ)
    first, second = tokens(2, SEQ, seed=1), tokens(2, SEQ, seed=2)
    _, mems = run(model, first, None)
    out, new_mems = run(model, second, mems, torch.tensor([False, False]))
    plain, plain_mems = run(model, second, mems)
    assert torch.equal(out, plain)
    assert all(torch.equal(x, y) for x, y in zip(new_mems, plain_mems, strict=True))
    stack = model.memory_stack
    pos = stack.positions(SEQ, SEQ, first.device, torch.float64, None)
    if position == "rotary":  # no memory and no reset: SDPA builds the causal mask itself
        assert pos.is_causal and pos.mask is None
    usable = torch.tensor([[True] * SEQ, [False] * SEQ])
    keys = row_keys(usable, None, SEQ, SEQ)
    masked = stack.positions(SEQ, 2 * SEQ, first.device, torch.float64, keys)
    assert masked.mask is not None and masked.mask.shape == (2, 1, SEQ, 2 * SEQ)
    assert not masked.mask[1, 0, :, :SEQ].any() and masked.mask[0, 0, :, :SEQ].all()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_loss_passes_the_loaders_flags(family: str) -> None:
    # The trainer and the evaluator go through forward_loss: a batch's memory_reset reaches
    # the model, so both drop memory at the same rows.
    model = memory_model(family, "rotary", mem_len=SEQ)
    x = tokens(2, SEQ, seed=3)
    keys = {
        "decoder": {"input_ids": x, "targets": x},
        "encoder": {"input_ids": x, "labels": x},
        "encoder_decoder": {"encoder_input_ids": x, "decoder_input_ids": x, "decoder_targets": x},
    }[family]
    _, mems = run(model, tokens(2, SEQ, seed=4), None)
    reset = torch.tensor([True, False])
    parts = forward_loss(model, {**keys, "memory_reset": reset}, mems, family)  # type: ignore[arg-type]
    expected, _ = run(model, x, mems, reset)
    assert torch.equal(parts.logits, expected)
    unflagged = forward_loss(model, keys, mems, family)  # type: ignore[arg-type]
    assert not torch.allclose(unflagged.logits[0], parts.logits[0])


def test_masks_that_change_nothing_stay_on_the_host() -> None:
    """`to_device` (the trainer's and the evaluator's) leaves out a memory_reset with no row
    flagged and an attention_mask with no pad, decided on the CPU tensors, so the model never
    asks the device whether they mask anything; a mask that does is kept."""
    x = tokens(2, SEQ, seed=5)
    plain = {"input_ids": x, "memory_reset": torch.tensor([False, False])}
    plain["attention_mask"] = torch.ones(2, SEQ, dtype=torch.bool)
    moved = to_device(plain, torch.device("cpu"))
    assert set(moved) == {"input_ids"} and torch.equal(moved["input_ids"], x)
    padded = {**plain, "memory_reset": torch.tensor([False, True])}
    padded["attention_mask"] = torch.ones(2, SEQ, dtype=torch.bool)
    padded["attention_mask"][1, -2:] = False
    assert set(to_device(padded, torch.device("cpu"))) == {
        "input_ids",
        "memory_reset",
        "attention_mask",
    }
