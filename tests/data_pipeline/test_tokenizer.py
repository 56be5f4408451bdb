"""Every tokenizer kind: exact round trip on the bundled corpora and on non-Latin text, special
tokens for every objective, a content hash, and loading through fsspec."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from data_pipeline.tokenizer import (
    META_FILE,
    Tokenizer,
    sp_escape,
    sp_escape_utf8,
    sp_unescape,
)
from data_pipeline.tokenizer_training import sample_corpus, split_items, train_tokenizer

from .conftest import tokenizer_config

KINDS = ["sp_char", "sp_unigram", "sp_bpe", "hf_bpe", "hf_unigram", "hf_wordpiece"]

HARD_TEXTS = [
    "  two leading spaces, three trailing   ",
    "tabs\tand\r\nCRLF\n\n\nblank lines\n",
    "Ελληνικά, русский, 中文文本, 日本語のテキスト, 한국어, עברית, العربية",
    "emoji 🎉🧪👩‍🔬 and combining e\u0301 and NBSP\u00a0here and zero-width\u200bjoiner",
    "rare: \x00\x07 control, \U0001d11e music, private \uf8ff use, lower block \u2581 too",
    "looks special: <s> </s> <pad> <mask> <extra_id_0> [UNK] ## ##ing \u2581\u2581",
    "digits 1234567890 3.14159 and a very long word " + "x" * 3000,
    "",
    "\n",
    " ",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("kinds")
    paths = [str(corpus_dir / "shakespeare.txt"), str(corpus_dir / "wikitext.txt")]
    return {kind: train_tokenizer(tokenizer_config(root / kind, kind, paths)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_exact_on_corpora_and_hard_text(
    kind: str, tokenizers: dict[str, Tokenizer], corpus_dir: Path
) -> None:
    tok = tokenizers[kind]
    books = [json.loads(line)["text"][:20_000] for line in (corpus_dir / "books.jsonl").open()]
    texts = [
        (corpus_dir / "shakespeare.txt").read_text(encoding="utf-8")[:50_000],
        (corpus_dir / "wikitext.txt").read_text(encoding="utf-8")[:50_000],
        *books,  # Gutenberg: BOMs and CRLF line endings as published
        *HARD_TEXTS,
    ]
    ids = tok.encode_batch(texts)
    # What prepare calls with the reader's bytes: the same ids.
    assert tok.encode_utf8_batch([t.encode() for t in texts]) == ids
    decoded = tok.decode_batch(ids)
    for text, back in zip(texts, decoded, strict=True):
        assert back == text, f"{kind}: {text[:60]!r} came back as {back[:60]!r}"
    assert tok.decode(tok.encode(texts[0])) == texts[0]
    assert all(0 <= i < tok.vocab_size for seq in ids for i in seq)
    # Text that looks like a special token is text: encode never emits special ids.
    specials = tok.special_ids.all()
    assert not specials & {i for seq in ids for i in seq}


@pytest.mark.parametrize("kind", KINDS)
def test_special_ids_for_every_objective(kind: str, tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers[kind]
    s = tok.special_ids
    assert len(s.sentinels) == 100  # the default: enough for T5 span corruption
    every = [s.pad, s.bos, s.eos, s.unk, s.mask, *s.sentinels]
    assert len(set(every)) == len(every)
    assert all(0 <= i < tok.vocab_size for i in every)
    assert tok.id_to_token(s.eos) == "</s>" and tok.id_to_token(s.sentinels[7]) == "<extra_id_7>"
    assert tok.dtype == "uint16"


def test_artifact_has_metadata_and_hash_and_loads_through_fsspec(
    tokenizers: dict[str, Tokenizer], tmp_path: Path
) -> None:
    tok = tokenizers["sp_unigram"]
    meta = json.loads((Path(tok.path) / META_FILE).read_text())
    assert meta["kind"] == "sp_unigram" and meta["vocab_size"] == tok.vocab_size
    assert meta["hash"] == tok.hash and len(tok.hash) == 64
    assert meta["special_ids"]["eos"] == tok.special_ids.eos
    # Same artifact copied to an in-memory object store: same tokenizer.
    mem = fsspec.filesystem("memory")
    for f in Path(tok.path).iterdir():
        mem.pipe_file(f"/tokcopy/{f.name}", f.read_bytes())
    copy = Tokenizer.load("memory://tokcopy")
    assert copy.hash == tok.hash and copy.encode("Hello there") == tok.encode("Hello there")
    # A model file that does not match its recorded hash is refused.
    mem.pipe_file("/tokcopy/spm.model", b"not a model")
    with pytest.raises(ValueError, match="does not match the hash"):
        Tokenizer.load("memory://tokcopy")


def test_sentencepiece_escape_is_reversible() -> None:
    for text in ["a\u2581b", "\uf8ff", "\uf8ffu", "\uf8ff\uf8ff\u2581", "plain"]:
        assert sp_unescape(sp_escape(text)) == text
        assert "\u2581" not in sp_escape(text)
        assert sp_escape_utf8(text.encode()) == sp_escape(text).encode()


def test_reservoir_sample_is_seeded_and_bounded(corpus_dir: Path, tmp_path: Path) -> None:
    paths = [str(corpus_dir / "shakespeare.txt"), str(corpus_dir / "wikitext.txt")]
    small = {"max_items": 20, "item_chars": 500, "seed": 3}
    cfg = tokenizer_config(tmp_path / "t", "sp_bpe", paths, sample=small)
    first, stats = sample_corpus(cfg)
    again, _ = sample_corpus(cfg)
    assert first == again  # seeded
    assert len(first) == 20 and all(len(item) <= 500 for item in first)
    assert stats["items_seen"] > 400  # drew from the whole of both inputs
    other = tokenizer_config(tmp_path / "t", "sp_bpe", paths, sample={**small, "seed": 4})
    assert sample_corpus(other)[0] != first
    # Items from both files made it in: the reservoir spans all inputs.
    assert any("Citizen" in i for i in first + again) or any(" = " in i for i in first)


def test_split_items_keeps_every_character() -> None:
    text = "line one\n" * 50 + "y" * 1200 + "\nend"
    items = list(split_items(text, 256))
    assert "".join(items) == text and all(len(i) <= 256 for i in items)
