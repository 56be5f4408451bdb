"""`pretrain make-task` on the bundled corpora: deterministic, no document in both splits, the
records each task promises; and the batches every (task, family) pair trains on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from pretrain.config import Family, ModelConfig
from pretrain.finetune.examples import Example, collate
from pretrain.finetune.heads import SequenceClassifier
from pretrain.finetune.tasks import build, speeches
from pretrain.objectives import IGNORE_INDEX
from tests.conftest import CORPORA

SHAKESPEARE = str(CORPORA / "tinyshakespeare" / "input.txt")
WIKITEXT = [str(CORPORA / "wikitext-2" / "valid.txt"), str(CORPORA / "wikitext-2" / "test.txt")]


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("task", "inputs", "text_key", "label_key"),
    [
        ("speakers", [SHAKESPEARE], "text", "label"),
        ("headings", WIKITEXT, "source", "target"),
        ("sources", [SHAKESPEARE, WIKITEXT[0]], "text", "label"),
    ],
)
def test_tasks_are_deterministic_and_share_no_document(
    tmp_path: Path, task: str, inputs: list[str], text_key: str, label_key: str
) -> None:
    build(task, inputs, tmp_path / "a")
    build(task, inputs, tmp_path / "b")
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, validation = (
        _read(tmp_path / "a" / "train.jsonl"),
        _read(tmp_path / "a" / "validation.jsonl"),
    )
    assert len(validation) > 20 and len(train) > 5 * len(validation)
    assert not {r["document"] for r in train} & {r["document"] for r in validation}
    assert not {r[text_key] for r in train} & {r[text_key] for r in validation}
    assert all(r[text_key] and r[label_key] for r in train + validation)


def test_speakers_are_the_most_frequent_ones(tmp_path: Path) -> None:
    summary = build("speakers", [SHAKESPEARE], tmp_path, speakers=3)
    text = Path(SHAKESPEARE).read_text(encoding="utf-8")
    top = [name for name, _ in Counter(n for n, _ in speeches(text)).most_common(3)]
    records = _read(tmp_path / "train.jsonl") + _read(tmp_path / "validation.jsonl")
    assert {r["label"] for r in records} == set(top) == {"GLOUCESTER", "DUKE VINCENTIO", "MENENIUS"}
    counts = [
        int(str(summary[k])) for k in ("train", "validation", "validation_dropped_as_repeats")
    ]
    assert sum(counts) == (sum(1 for name, speech in speeches(text) if name in top and speech))


PAD, EOS = 0, 2


def test_decoder_seq2seq_learns_the_completion_only() -> None:
    e = Example(source=(5, 6, 7), target=(8, 9), label=-1, source_text="", target_text="")
    batch = collate([e, None], "seq2seq", "decoder", PAD, EOS)
    # prompt + eos + completion + eos, fed without its last token
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS, 8, 9], [PAD] * 6]
    assert batch["targets"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9, EOS],
        [IGNORE_INDEX] * 6,  # a filler row carries no target
    ]


def test_encoder_decoder_seq2seq_decodes_from_the_pad_id() -> None:
    e = Example(source=(5, 6, 7), target=(8, 9), label=-1, source_text="", target_text="")
    batch = collate([e], "seq2seq", "encoder_decoder", PAD, EOS)
    assert batch["encoder_input_ids"].tolist() == [[5, 6, 7]]
    assert batch["decoder_input_ids"].tolist() == [[PAD, 8, 9]]
    assert batch["decoder_targets"].tolist() == [[8, 9, EOS]]


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_a_classifier_reads_the_real_tokens_only(family: Family) -> None:
    """Padding a row further changes neither the pooled (encoder: mean over real tokens, but
    its attention sees the pads, so only the decoder is exact) nor the last-token logits."""
    config = ModelConfig(
        family=family,
        vocab_size=16,
        d_model=16,
        n_layers=1,
        n_heads=2,
        max_seq_len=16,
        position="relative",
    )
    torch.manual_seed(0)
    model = SequenceClassifier(config, num_labels=3, pad_id=PAD)
    model.init_weights()
    model.eval()
    short = collate([Example((5, 6, 7), (), 1, "", "")], "classification", family, PAD, EOS)
    key = "targets" if family == "decoder" else "labels"
    assert short[key].tolist() == [[1]]
    padded = torch.cat([short["input_ids"], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    a, _ = model(short["input_ids"])
    b, _ = model(padded)
    assert a.shape == (1, 1, 3)
    if family == "decoder":  # causal: the last real token never reads the padding after it
        torch.testing.assert_close(a, b)
    else:
        assert torch.isfinite(b).all()
