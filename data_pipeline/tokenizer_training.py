"""`data-pipeline train-tokenizer`: sample the corpus with a seeded reservoir (bounded memory on
corpora larger than RAM), train a sentencepiece or HF `tokenizers` model, and write one artifact
directory (model file + tokenizer_meta.json with kind, vocab size, special ids and hash)."""

from __future__ import annotations

import io
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from data_pipeline.configuration import to_dict, without_storage_options
from data_pipeline.readers import UnitReader
from data_pipeline.schemas import TokenizerTrainingConfig
from data_pipeline.skips import SkipSummary
from data_pipeline.sources import expand_sources
from data_pipeline.storage import Output, json_bytes
from data_pipeline.tokenizer import (
    FORMAT_VERSION,
    HF_MODEL_FILE,
    META_FILE,
    SP_ESCAPE_SCHEME,
    SP_MODEL_FILE,
    Tokenizer,
    content_hash,
    sp_escape,
)
from data_pipeline.units import WorkUnit

# The continuation prefix of byte-level WordPiece: a character outside the byte-level alphabet,
# so "##"-style ambiguity with real text cannot arise and decoding is a plain string replace.
WORDPIECE_PREFIX = "\u2581"

logger = logging.getLogger(__name__)


def split_items(text: str, item_chars: int) -> Iterator[str]:
    """Cut a document into pieces of at most ``item_chars``, at line ends where possible."""
    if len(text) <= item_chars:
        yield text
        return
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > item_chars:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            yield line[:item_chars]
            line = line[item_chars:]
        if size + len(line) > item_chars and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


def sample_corpus(
    cfg: TokenizerTrainingConfig,
) -> tuple[list[str], dict[str, Any]]:
    """Algorithm R over the items of every document of every input, seeded: the same corpus and
    seed give the same sample; memory is at most max_items * item_chars characters."""
    rng = random.Random(cfg.sample.seed)
    reservoir: list[str] = []
    seen = 0
    documents = 0
    skipped: Counter[str] = Counter()
    skips = SkipSummary()
    started = time.monotonic()
    for i, source in enumerate(expand_sources(cfg.source.paths, cfg.source.storage_options)):
        reader = UnitReader(WorkUnit(i, source, 0, -1, -1, None), cfg.source)
        before = documents
        for doc in reader.documents():
            documents += 1
            for item in split_items(doc.text, cfg.sample.item_chars):
                seen += 1
                if len(reservoir) < cfg.sample.max_items:
                    reservoir.append(item)
                else:
                    j = rng.randrange(seen)
                    if j < cfg.sample.max_items:
                        reservoir[j] = item
        skipped.update(reader.skipped)
        file_docs = documents - before
        skips.add(source.path, reader.input_bytes, file_docs, reader.skipped, reader.skipped_bytes)
        logger.info(
            "[sample] %s: %d documents, %d items so far (%.1fs)",
            source.path,
            documents,
            seen,
            time.monotonic() - started,
        )
    skips.log("sample")
    skips.check(cfg.source.max_skipped_fraction)
    if not reservoir:
        raise ValueError("the corpus holds no usable document to train a tokenizer on")
    stats = {
        "documents": documents,
        "items_seen": seen,
        "items_sampled": len(reservoir),
        "skipped": dict(sorted(skipped.items())),
    }
    return reservoir, stats


def _train_sentencepiece(cfg: TokenizerTrainingConfig, items: list[str]) -> bytes:
    import sentencepiece as spm

    st = cfg.special_tokens
    model_type = cfg.kind.removeprefix("sp_")
    # sentencepiece trains on lines; newline itself is a user-defined symbol so that it is one
    # token, and every other setting keeps the text byte-exact (no normalisation, no dummy
    # prefix, whitespace kept as pieces).
    sentences = [sp_escape(line) for item in items for line in item.split("\n") if line]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=model_type,
        vocab_size=cfg.vocab_size if model_type != "char" else 1_000_000,
        hard_vocab_limit=False,  # small corpora: take the largest vocabulary they support
        character_coverage=cfg.character_coverage,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=cfg.split_digits,
        byte_fallback=cfg.byte_fallback,
        max_sentence_length=max(4192, 4 * cfg.sample.item_chars),
        user_defined_symbols=["\n"],
        control_symbols=[st.mask, *st.sentinels()],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=st.unk,
        bos_piece=st.bos,
        eos_piece=st.eos,
        pad_piece=st.pad,
        num_threads=cfg.num_threads,
        minloglevel=2,
    )
    return model.getvalue()


def _train_hf(cfg: TokenizerTrainingConfig, items: list[str]) -> bytes:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    st = cfg.special_tokens
    specials = [st.pad, st.bos, st.eos, st.unk, st.mask, *st.sentinels()]
    # Every kind runs on GPT-2's byte-level alphabet: a reversible map of all 256 bytes to
    # printable characters. Whitespace, newlines and any Unicode survive; no <unk> is needed.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer: Any
    if cfg.kind == "hf_bpe":
        tok = HFTokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=specials,
            initial_alphabet=alphabet,
            show_progress=False,
        )
        tok.decoder = decoders.ByteLevel()
    elif cfg.kind == "hf_unigram":
        tok = HFTokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=specials,
            initial_alphabet=alphabet,
            unk_token=st.unk,
            show_progress=False,
        )
        tok.decoder = decoders.ByteLevel()
    else:
        tok = HFTokenizer(_wordpiece({}, st.unk))
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=specials,
            initial_alphabet=alphabet,
            continuing_subword_prefix=WORDPIECE_PREFIX,
            show_progress=False,
        )
        # Strip the continuation prefix, then undo the byte-level map: exact text back.
        tok.decoder = decoders.Sequence(
            [decoders.Replace(WORDPIECE_PREFIX, ""), decoders.ByteLevel()]
        )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.train_from_iterator(items, trainer)
    if cfg.kind == "hf_wordpiece":
        # The trainer only keeps continuation pieces it saw; a word whose bytes it never saw in
        # a continuation would become <unk> as a whole. Add every byte in both forms.
        vocab = dict(tok.get_vocab(with_added_tokens=False))
        for char in alphabet:
            for piece in (char, WORDPIECE_PREFIX + char):
                vocab.setdefault(piece, len(vocab))
        tok.model = _wordpiece(vocab, st.unk)
    data: str = tok.to_str()
    return data.encode("utf-8")


def _wordpiece(vocab: dict[str, int], unk: str) -> Any:
    from tokenizers import models

    return models.WordPiece(
        vocab=vocab,
        unk_token=unk,
        continuing_subword_prefix=WORDPIECE_PREFIX,
        max_input_chars_per_word=1_000_000_000,  # never turn a long word into <unk>
    )


def _special_ids(cfg: TokenizerTrainingConfig, kind: str, model_bytes: bytes) -> dict[str, Any]:
    st = cfg.special_tokens
    if kind.startswith("sp_"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        lookup = {
            name: int(sp.piece_to_id(name))
            for name in [st.pad, st.bos, st.eos, st.unk, st.mask, *st.sentinels()]
        }
    else:
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_str(model_bytes.decode("utf-8"))
        lookup = {
            name: int(hf.token_to_id(name) or 0)  # every special token is in the vocabulary
            for name in [st.pad, st.bos, st.eos, st.unk, st.mask, *st.sentinels()]
        }
    return {
        "pad": lookup[st.pad],
        "bos": lookup[st.bos],
        "eos": lookup[st.eos],
        "unk": lookup[st.unk],
        "mask": lookup[st.mask],
        "sentinels": [lookup[s] for s in st.sentinels()],
    }


def train_tokenizer(cfg: TokenizerTrainingConfig) -> Tokenizer:
    """Sample, train, write the artifact (metadata last, so a directory with metadata is whole)."""
    started = time.monotonic()
    items, stats = sample_corpus(cfg)
    logger.info("[train] %s on %d items ...", cfg.kind, len(items))
    if cfg.kind.startswith("sp_"):
        model_bytes, model_file = _train_sentencepiece(cfg, items), SP_MODEL_FILE
    else:
        model_bytes, model_file = _train_hf(cfg, items), HF_MODEL_FILE
    special = _special_ids(cfg, cfg.kind, model_bytes)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": cfg.kind,
        "model_file": model_file,
        "text_escape": SP_ESCAPE_SCHEME if cfg.kind.startswith("sp_") else None,
        "hash": content_hash(cfg.kind, model_bytes),
        "special_ids": special,
        "special_tokens": to_dict(cfg.special_tokens),
        "sample": stats,
        "config": without_storage_options(to_dict(cfg)),  # no endpoints or credentials
    }
    tok = Tokenizer(meta, model_bytes, cfg.output)
    meta["vocab_size"] = tok.vocab_size
    out = Output(cfg.output)
    out.commit(model_file, model_bytes)
    out.commit(META_FILE, json_bytes(meta))
    logger.info(
        "[done] %s vocab_size=%d hash=%s -> %s (%.1fs)",
        cfg.kind,
        tok.vocab_size,
        tok.hash[:12],
        cfg.output,
        time.monotonic() - started,
    )
    return tok
