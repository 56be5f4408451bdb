"""Our tokenizer artifact as files ``transformers.AutoTokenizer`` loads with the same ids:
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

* HF kinds (``hf_bpe``, ``hf_unigram``, ``hf_wordpiece``): the artifact's ``tokenizer.json`` is
  already the tokenizers library's own file.
* sentencepiece kinds (``sp_unigram``, ``sp_bpe``, ``sp_char``): transformers' own converter,
  ``SpmConverter.build_tokenizer_from_spm_proto``, which follows the model's normaliser spec,
  user-defined pieces and byte fallback. Three things are ours to add: a char model is given to
  it as the unigram over its single-character pieces it is (its segmentation is unique); our
  control and unknown pieces get a score no segmentation picks (sentencepiece never matches
  them in text; as unigram pieces ``<s>`` would beat its three characters); a pre-tokenizer
  isolates the characters that keep such a piece's text from matching whole
  (`_unmatchable_characters`); and our U+2581 escape (`data_pipeline.tokenizer.sp_escape`)
  runs first, as two ``Replace`` normalisers.

In every kind special tokens in the text stay text (``split_special_tokens``), as our
``encode`` has them, and nothing is added around the ids (no post-processor): our
``encode(text)`` is ``AutoTokenizer(text)["input_ids"]``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from data_pipeline.tokenizer import SP_ESCAPE, SP_META, Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_NEVER = -1e9  # the score of pieces a segmentation must never use
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _unmatchable_characters(pieces: Any) -> str:
    """Characters that stop a control or unknown piece's text (``<s>``, ``<unk>``, sentinels,
    byte pieces' ``<0x41>``) from matching as one piece, as sentencepiece never matches them.
    tokenizers' unigram and BPE models match every vocabulary entry, and no score keeps them
    out: an unknown character costs the lowest piece score less a penalty, so our control
    pieces' score, the lowest, still beats ``<`` spelled out by byte fallback. Isolated by a
    pre-tokenizer, such a character ends every match at its edges; those chosen here belong
    to no piece sentencepiece can use of more than one character, so for every other text the
    segmentation is the one the lattice found anyway."""
    special = {_UNKNOWN, _CONTROL, _BYTE}
    used = {p.piece for p in pieces if p.type not in special and len(p.piece) > 1}
    in_used = {char for piece in used for char in piece}
    return "".join(
        sorted({char for p in pieces if p.type in special for char in p.piece} - in_used)
    )


def _from_sentencepiece(tokenizer: Tokenizer) -> Any:
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(tokenizer._model_bytes)
    pieces = proto.pieces
    if tokenizer.kind == "sp_bpe":
        vocab: Any = {piece.piece: i for i, piece in enumerate(pieces)}
    else:  # unigram, and char as the unigram over its pieces
        vocab = [(p.piece, _NEVER if p.type in (_UNKNOWN, _CONTROL) else p.score) for p in pieces]
    hf = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    if hf is None:
        raise ValueError(f"transformers could not convert the {tokenizer.kind} model")
    escape = [
        normalizers.Replace(SP_ESCAPE, SP_ESCAPE + SP_ESCAPE),
        normalizers.Replace(SP_META, SP_ESCAPE + "u"),
    ]
    hf.normalizer = normalizers.Sequence([*escape, hf.normalizer])
    breakers = _unmatchable_characters(pieces)
    whole = [p.piece for p in pieces if p.type in (_UNKNOWN, _CONTROL, _BYTE)]
    if unbroken := [piece for piece in whole if not set(piece) & set(breakers)]:
        logger.warning(
            "tokenizer.json: the text of %d special piece(s) (%s) can match whole, where our "
            "tokenizer spells it out; ids differ for documents that contain it",
            len(unbroken),
            ", ".join(unbroken[:5]),
        )
    if breakers:
        isolate = pre_tokenizers.Split(Regex("[" + re.escape(breakers) + "]"), behavior="isolated")
        steps = [hf.pre_tokenizer, isolate] if hf.pre_tokenizer is not None else [isolate]
        hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
    hf.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in pieces
            if p.type in (_UNKNOWN, _CONTROL)
        ]
    )
    return hf


def _special_tokens(tokenizer: Tokenizer) -> dict[str, Any]:
    ids = tokenizer.special_ids
    token = tokenizer.id_to_token
    return {
        "bos_token": token(ids.bos),
        "eos_token": token(ids.eos),
        "pad_token": token(ids.pad),
        "unk_token": token(ids.unk),
        "mask_token": token(ids.mask),
        "extra_special_tokens": [token(i) for i in ids.sentinels],
    }


def write_hf_tokenizer(out: Path, tokenizer: Tokenizer, *, model_max_length: int) -> None:
    """The three files under ``out``."""
    if tokenizer.kind.startswith("hf_"):
        (out / "tokenizer.json").write_bytes(tokenizer._model_bytes)
    else:
        _from_sentencepiece(tokenizer).save(str(out / "tokenizer.json"))
    specials = _special_tokens(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "split_special_tokens": True,  # "<s>" in a document is text, as in our encode
        "clean_up_tokenization_spaces": False,
        "mnemos_tokenizer_kind": tokenizer.kind,
        "mnemos_tokenizer_hash": tokenizer.hash,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n")
