"""Padding in fine-tuning batches: a padded row gives the outputs of the same row alone.

Each task's batch (`examples.collate`) goes through the trainer's forward (`forward_loss`) in
float32; the row padded to the batch's longest gives the same class logits (pooled encoder
head, last-token decoder head) or seq2seq logits as that row in a batch of its own, for every
positional scheme. The masks also compose with Transformer-XL memory, and pads kept in memory
stay masked.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pretrain.batch_loss import forward_loss
from pretrain.config import Family
from pretrain.finetune.examples import Example, collate
from pretrain.finetune.heads import SequenceClassifier, build_task_model
from pretrain.model.attention import real_keys
from pretrain.model.families import Encoder
from tests.model.common import VOCAB, tiny_config, tokens

PAD, EOS = 0, 1
SCHEMES = ["relative", "rotary", "learned"]
TASKS: list[tuple[str, Family]] = [
    ("classification", "encoder"),
    ("classification", "decoder"),
    ("seq2seq", "encoder_decoder"),
    ("seq2seq", "decoder"),
]


def example(length: int, seed: int, target: int = 4) -> Example:
    ids = torch.randint(2, VOCAB, (length + target,), generator=torch.Generator().manual_seed(seed))
    source, answer = tuple(ids[:length].tolist()), tuple(ids[length:].tolist())
    return Example(source, answer, label=seed % 3, source_text="", target_text="")


def task_model(kind: str, family: Family, position: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config(family=family, position=position, mem_len=0)
    model = build_task_model(config, kind, num_labels=3, pad_id=PAD).float().eval()
    with torch.no_grad():  # u and v start at zero: give the relative position terms weight
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def logits(model: torch.nn.Module, rows: list[Example | None], kind: str, family: Family) -> Tensor:
    batch = collate(rows, kind, family, PAD, EOS)
    with torch.no_grad():
        return forward_loss(model, batch, None, family).logits


@pytest.mark.parametrize("position", SCHEMES)
@pytest.mark.parametrize(("kind", "family"), TASKS)
def test_a_padded_row_gives_the_outputs_of_the_row_alone(
    kind: str, family: Family, position: str
) -> None:
    short, long = example(5, seed=1), example(12, seed=2, target=9)
    model = task_model(kind, family, position)
    batched = logits(model, [short, long, None], kind, family)
    alone = logits(model, [short], kind, family)
    width = alone.size(1)  # seq2seq: the short row's own positions; classification: 1
    assert batched.size(1) > width or kind == "classification"
    torch.testing.assert_close(batched[0, :width], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        batched[1], logits(model, [long], kind, family)[0], rtol=1e-5, atol=1e-5
    )
    assert torch.isfinite(batched).all()  # the filler row too (no softmax over no key)


def test_the_pads_move_an_unmasked_encoder() -> None:
    # What the mask is for: without it the short row's pooled class logits change.
    short, long = example(5, seed=1), example(12, seed=2)
    model = task_model("classification", "encoder", "rotary")
    assert isinstance(model, SequenceClassifier)
    batch = collate([short, long], "classification", "encoder", PAD, EOS)
    with torch.no_grad():
        masked, _ = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        unmasked = model.score(  # the pooled head over real tokens, attention over all
            (model.backbone(batch["input_ids"], None)[0][0, :5]).mean(0)
        )
    assert not torch.allclose(masked[0, 0], unmasked, atol=1e-4)


def test_pads_kept_in_memory_stay_masked() -> None:
    # An encoder with memory: a padded first segment's pad slots stay masked while they are
    # memory for the next segment, so what they hold changes nothing.
    torch.manual_seed(0)
    model = Encoder(tiny_config(family="encoder", position="relative", mem_len=16)).eval()
    first, second = tokens(1, 5, seed=1), tokens(1, 6, seed=2)
    padded = torch.cat([first, torch.full((1, 3), PAD)], dim=1)
    other = torch.cat([first, tokens(1, 3, seed=3)], dim=1)  # other "pads", as masked
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        out_a, mems_a = model(padded, None, attention_mask=mask)
        next_a, _ = model(second, mems_a)
        out_b, mems_b = model(other, None, attention_mask=mask)
        next_b, _ = model(second, mems_b)
        unmasked, _ = model(second, mems_b[:-1])  # the same memory, its pads readable
    assert mems_a[-1].dtype == torch.bool and mems_a[-1].tolist() == mask.tolist()
    torch.testing.assert_close(out_a[:, :5], out_b[:, :5], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(next_a, next_b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(next_b, unmasked, atol=1e-4)


def test_without_pads_the_fast_paths_are_kept() -> None:
    model = Encoder(tiny_config(family="encoder", position="rotary")).eval()
    x = tokens(2, 6)
    stack = model.memory_stack
    assert real_keys(torch.ones(2, 6, dtype=torch.bool)) is None
    assert real_keys(None) is None
    pos = stack.positions(6, 6, x.device, torch.float32, None)
    assert pos.mask is None
    row = real_keys(torch.tensor([[1, 1, 0], [0, 0, 0]]))
    assert row is not None and row.tolist() == [[True, True, False], [True, True, True]]
