"""`Tokenizer`: one wrapper over a sentencepiece or HF `tokenizers` artifact directory.

An artifact directory (local or any fsspec URL) holds the backend's model file and
``tokenizer_meta.json``: kind, vocab size, special token ids, and a content hash. Both backends
are set up so that ``decode(encode(text)) == text`` exactly (see docs/data_pipeline.md for how,
kind by kind), special tokens are never produced by ``encode`` from text (a document containing
"</s>" stays text), and ``decode`` drops special tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.storage import local_path

META_FILE = "tokenizer_meta.json"
FORMAT_VERSION = 1
SP_KINDS = ("sp_unigram", "sp_bpe", "sp_char")
HF_KINDS = ("hf_bpe", "hf_unigram", "hf_wordpiece")
SP_MODEL_FILE = "spm.model"
HF_MODEL_FILE = "tokenizer.json"


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int
    unk: int
    mask: int
    sentinels: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pad": self.pad,
            "bos": self.bos,
            "eos": self.eos,
            "unk": self.unk,
            "mask": self.mask,
            "sentinels": list(self.sentinels),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecialIds:
        return cls(
            pad=int(data["pad"]),
            bos=int(data["bos"]),
            eos=int(data["eos"]),
            unk=int(data["unk"]),
            mask=int(data["mask"]),
            sentinels=tuple(int(i) for i in data["sentinels"]),
        )

    def all(self) -> set[int]:
        return {self.pad, self.bos, self.eos, self.unk, self.mask, *self.sentinels}


def content_hash(kind: str, model_bytes: bytes) -> str:
    """The artifact's identity: what the model file holds and how it is used."""
    return hashlib.sha256(kind.encode() + b"\0" + model_bytes).hexdigest()


# sentencepiece writes spaces as U+2581 and decodes every U+2581 back to a space, so a literal
# U+2581 in the text would come back as a space. Before encoding, the wrapper escapes it (and the
# escape character itself) with a private-use character; decoding undoes it. The artifact records
# the scheme, so a model file used without this wrapper is flagged by its metadata.
SP_ESCAPE = "\uf8ff"
SP_META = "\u2581"
SP_ESCAPE_SCHEME = "u2581-escape-v1"
_SP_UNESCAPE = re.compile(SP_ESCAPE + "(.)", re.DOTALL)


def sp_escape(text: str) -> str:
    if SP_ESCAPE in text:
        text = text.replace(SP_ESCAPE, SP_ESCAPE + SP_ESCAPE)
    if SP_META in text:
        text = text.replace(SP_META, SP_ESCAPE + "u")
    return text


_SP_ESCAPE_UTF8 = SP_ESCAPE.encode()
_SP_META_UTF8 = SP_META.encode()


def sp_escape_utf8(data: bytes) -> bytes:
    """`sp_escape` on UTF-8 bytes (the same bytes as escaping the text, then encoding it)."""
    if _SP_ESCAPE_UTF8 in data:
        data = data.replace(_SP_ESCAPE_UTF8, _SP_ESCAPE_UTF8 + _SP_ESCAPE_UTF8)
    if _SP_META_UTF8 in data:
        data = data.replace(_SP_META_UTF8, _SP_ESCAPE_UTF8 + b"u")
    return data


def sp_unescape(text: str) -> str:
    if SP_ESCAPE not in text:
        return text
    return _SP_UNESCAPE.sub(lambda m: SP_META if m[1] == "u" else m[1], text)


def token_dtype(vocab_size: int) -> str:
    """The shard dtype for this vocabulary (the manifest contract)."""
    return "uint16" if vocab_size <= 65535 else "uint32"


class Tokenizer:
    """Encode and decode text in batches with either backend.

    >>> tok = Tokenizer.load("runs/tokenizers/shakespeare_char")   # doctest: +SKIP
    >>> tok.decode(tok.encode("To be, or not to be"))               # doctest: +SKIP
    'To be, or not to be'
    """

    def __init__(self, meta: dict[str, Any], model_bytes: bytes, path: str = "") -> None:
        self.meta = meta
        self.path = path
        self.kind: str = meta["kind"]
        self.hash: str = meta["hash"]
        self.special_ids = SpecialIds.from_dict(meta["special_ids"])
        if content_hash(self.kind, model_bytes) != self.hash:
            raise ValueError(f"{path}: tokenizer model does not match the hash in {META_FILE}")
        self._model_bytes = model_bytes
        self._sp: Any = None
        self._hf: Any = None
        if self.kind in SP_KINDS:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
            self.vocab_size: int = int(self._sp.get_piece_size())
        elif self.kind in HF_KINDS:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_str(model_bytes.decode("utf-8"))
            # Special tokens in the text are text, never control tokens.
            self._hf.encode_special_tokens = True
            self.vocab_size = int(self._hf.get_vocab_size(with_added_tokens=True))
        else:
            raise ValueError(f"{path}: unknown tokenizer kind {self.kind!r}")
        self._special = self.special_ids.all()

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, storage_options: dict[str, Any] | None = None) -> Tokenizer:
        """Load an artifact directory (local path or fsspec URL)."""
        local = local_path(path)
        if local is not None:
            root, cat_file = local.rstrip("/"), lambda name: Path(name).read_bytes()
        else:
            from fsspec.core import url_to_fs

            fs, root = url_to_fs(path, **(storage_options or {}))
            root, cat_file = root.rstrip("/"), fs.cat_file
        try:
            meta = json.loads(cat_file(f"{root}/{META_FILE}"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: not a tokenizer artifact (no {META_FILE}); "
                "run `data-pipeline train-tokenizer` first"
            ) from None
        model = cat_file(f"{root}/{meta['model_file']}")
        return cls(meta, bytes(model), path)

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to worker processes as its artifact: the worker rebuilds it without reading
        # storage (or importing fsspec) again.
        return (type(self), (self.meta, self._model_bytes, self.path))

    # -- encoding -------------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text, without bos/eos (the caller decides where those go).
        ``num_threads``: sentencepiece's threads; HF follows TOKENIZERS_PARALLELISM."""
        if not texts:
            return []
        if self._sp is not None:
            escaped = [sp_escape(t) for t in texts]
            result: list[list[int]] = self._sp.encode(
                escaped, out_type=int, num_threads=num_threads
            )
            return result
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def encodes_utf8(self) -> bool:
        """Whether `encode_utf8_batch` takes the bytes as they are (sentencepiece, which works
        on UTF-8: given a str it encodes it to UTF-8 first, ~10% of its time on WikiText)."""
        return self._sp is not None

    def encode_utf8_batch(self, data: Sequence[bytes], num_threads: int = 1) -> list[list[int]]:
        """`encode_batch` of texts given as valid UTF-8 bytes: the same ids."""
        if not data:
            return []
        if self._sp is not None:
            escaped = [sp_escape_utf8(d) for d in data]
            result: list[list[int]] = self._sp.encode(
                escaped, out_type=int, num_threads=num_threads
            )
            return result
        return self.encode_batch([d.decode("utf-8") for d in data], num_threads)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence; special tokens are dropped."""
        clean = [[int(i) for i in ids if int(i) not in self._special] for ids in batch]
        if self._sp is not None:
            decoded: list[str] = self._sp.decode(clean)
            return [sp_unescape(t) for t in decoded]
        texts: list[str] = self._hf.decode_batch(clean, skip_special_tokens=True)
        return texts

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_batch([ids])[0]

    def token_to_id(self, token: str) -> int | None:
        if self._sp is not None:
            i = int(self._sp.piece_to_id(token))
            return None if i == self.special_ids.unk and token != self._sp.id_to_piece(i) else i
        found = self._hf.token_to_id(token)
        return None if found is None else int(found)

    def id_to_token(self, i: int) -> str:
        if self._sp is not None:
            return str(self._sp.id_to_piece(i))
        return str(self._hf.id_to_token(i))

    @property
    def dtype(self) -> str:
        return token_dtype(self.vocab_size)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"


def single_threaded_env() -> None:
    """Make HF `tokenizers` encode on the calling thread only: worker processes are the unit of
    parallelism, and Rayon threads in each would oversubscribe the cores."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
