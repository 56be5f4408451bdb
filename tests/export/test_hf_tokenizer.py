"""Every tokenizer kind exported for ``transformers.AutoTokenizer``: the same ids as ours on
the bundled corpora, special tokens included."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from data_pipeline.configuration import from_dict
from data_pipeline.schemas import TokenizerTrainingConfig
from data_pipeline.tokenizer import SP_ESCAPE, SP_META
from data_pipeline.tokenizer_training import train_tokenizer
from pretrain.export.hf_tokenizer import write_hf_tokenizer
from tests.conftest import REPO_ROOT

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

KINDS = ["sp_unigram", "sp_bpe", "sp_char", "hf_bpe", "hf_unigram", "hf_wordpiece"]
CORPORA = REPO_ROOT / "corpora"
SLICE = 60_000  # characters of each corpus


def _corpus_texts() -> list[str]:
    """Slices of the three bundled corpora, plus text that exercises the edges: special
    tokens written in a document, our U+2581 escape, digits, tabs and runs of spaces."""
    with gzip.open(CORPORA / "gutenberg" / "gutenberg-8.jsonl.gz", "rt", encoding="utf-8") as f:
        gutenberg = json.loads(f.readline())["text"][:SLICE]
    texts = [
        (CORPORA / "tinyshakespeare" / "input.txt").read_text()[:SLICE],
        (CORPORA / "wikitext-2" / "valid.txt").read_text()[:SLICE],
        gutenberg,
        f"<s> a </s><pad><mask><extra_id_0> {SP_META}x{SP_ESCAPE}u 12345\t  end\n\n 漢字 ñ",
    ]
    return [line for text in texts for line in text.splitlines(keepends=True)] + texts[-1:]


# Every kind learns from Shakespeare; a sentencepiece model also learns from WikiText, whose
# literal "<unk>" puts "<" and ">" into its vocabulary (the special texts must stay spelled out).
CASES = [(kind, "tinyshakespeare/input.txt") for kind in KINDS]
CASES += [(kind, "wikitext-2/test.txt") for kind in ("sp_unigram", "sp_bpe")]


@pytest.mark.parametrize(("kind", "corpus"), CASES)
def test_auto_tokenizer_gives_our_ids(
    kind: str, corpus: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    training_text = tmp_path / "training.txt"
    training_text.write_text((CORPORA / corpus).read_text()[:200_000])
    config = from_dict(
        TokenizerTrainingConfig,
        {
            "name": kind,
            "output": str(tmp_path / "artifact"),
            "kind": kind,
            "vocab_size": 600,
            "source": {"paths": [str(training_text)], "format": "text", "text_mode": "file"},
            "sample": {"max_items": 500, "item_chars": 2048},
            "num_threads": 1,
        },
    )
    ours = train_tokenizer(config)
    out = tmp_path / "hf"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        write_hf_tokenizer(out, ours, model_max_length=256)
    assert "can match whole" not in caplog.text  # every special piece's text is broken up
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    texts = _corpus_texts()
    expected = ours.encode_batch(texts)
    got = theirs(texts)["input_ids"]
    mismatched = [(t, e, g) for t, e, g in zip(texts, expected, got, strict=True) if e != g]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, first: {mismatched[0]}"
    ids = ours.special_ids
    assert theirs.bos_token_id == ids.bos and theirs.eos_token_id == ids.eos
    assert theirs.pad_token_id == ids.pad and theirs.unk_token_id == ids.unk
    assert theirs.mask_token_id == ids.mask
    assert theirs.convert_tokens_to_ids(theirs.extra_special_tokens) == list(ids.sentinels)
    assert theirs.model_max_length == 256
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "special_tokens_map.json"}
    assert theirs.decode(got[0], skip_special_tokens=True) == ours.decode(expected[0])
