"""Build real WebDataset shards and a manifest from real text, following the data-pipeline
contract (docs/loader.md), so loader tests never wait on `data_pipeline prepare`.

Tokenisation is byte-level (token = UTF-8 byte) with the special ids after the 256 bytes. The
text is split into documents at blank lines; documents are joined with EOS, cut into units,
each unit packed into chunks of exactly ``chunk_len`` tokens and written ``shard_samples``
chunks per shard with `webdataset.TarWriter`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from tests.conftest import CORPORA

TINYSHAKESPEARE = CORPORA / "tinyshakespeare" / "input.txt"
PAD, BOS, EOS, UNK, MASK = 256, 257, 258, 259, 260
SENTINELS = list(range(261, 261 + 32))
VOCAB_SIZE = 261 + 32
TOKENIZER_HASH = "bytes-v1-" + hashlib.sha256(b"byte-level toy tokenizer").hexdigest()[:16]


@dataclass
class BuiltDataset:
    manifest: Path
    root: Path
    samples: dict[str, list[np.ndarray]]  # split -> every sample's tokens, in manifest order
    shard_paths: dict[str, list[Path]]
    # split -> each sample's document starts (offsets in the sample)
    doc_starts: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _unit_tokens(docs: list[str]) -> tuple[list[int], list[int], list[int]]:
    """(tokens, document start offsets, utf8 byte count of each token) of one unit."""
    tokens: list[int] = []
    starts: list[int] = []
    for doc in docs:
        starts.append(len(tokens))
        tokens.extend(doc.encode())
        tokens.append(EOS)
    nbytes = [0 if t >= 256 else 1 for t in tokens]
    return tokens, starts, nbytes


def _write_split(
    root: Path,
    split: str,
    units: list[list[str]],
    chunk_len: int,
    shard_samples: int,
    dtype: str,
) -> tuple[dict[str, Any], list[np.ndarray], list[Path], list[tuple[int, ...]]]:
    shards, samples, paths = [], [], []
    sample_starts: list[tuple[int, ...]] = []
    for unit, docs in enumerate(units):
        tokens, starts, nbytes = _unit_tokens(docs)
        n_chunks = len(tokens) // chunk_len  # the tail shorter than a chunk is dropped
        for seq, first in enumerate(range(0, n_chunks, shard_samples)):
            name = f"{split}-{unit:05d}-{seq:05d}.tar"
            path = root / name
            shard: dict[str, Any] = {"name": name, "samples": 0, "tokens": 0, "utf8_bytes": 0}
            shard["documents"] = 0
            with wds.TarWriter(str(path)) as sink:
                for c in range(first, min(first + shard_samples, n_chunks)):
                    lo, hi = c * chunk_len, (c + 1) * chunk_len
                    chunk = np.asarray(tokens[lo:hi], dtype=dtype)
                    doc_starts = [s - lo for s in starts if lo <= s < hi]
                    utf8 = sum(nbytes[lo:hi])
                    meta = {"doc_starts": doc_starts, "utf8_bytes": utf8}
                    sink.write(
                        {
                            "__key__": f"{c:09d}",
                            "tokens.npy": _npy(chunk),
                            "meta.json": json.dumps(meta).encode(),
                        }
                    )
                    samples.append(chunk)
                    sample_starts.append(tuple(doc_starts))
                    shard["samples"] += 1
                    shard["tokens"] += chunk_len
                    shard["utf8_bytes"] += utf8
                    shard["documents"] += len(doc_starts)
            data = path.read_bytes()
            shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            shards.append(shard)
            paths.append(path)
    totals = {
        k: sum(s[k] for s in shards) for k in ("samples", "tokens", "utf8_bytes", "documents")
    }
    return {"shards": shards, **totals}, samples, paths, sample_starts


def build_dataset(
    root: Path,
    *,
    text_bytes: int = 40_000,
    chunk_len: int = 64,
    shard_samples: int = 48,
    train_units: int = 2,
    dtype: str = "uint16",
    tokenizer_hash: str = TOKENIZER_HASH,
    text_start: int = 0,
) -> BuiltDataset:
    """Shards + manifest.json under ``root`` from ``text_bytes`` of tinyshakespeare from
    character ``text_start`` on (the last tenth of the documents is the validation split)."""
    text = TINYSHAKESPEARE.read_text(encoding="utf-8")[text_start : text_start + text_bytes]
    docs = [d for d in text.split("\n\n") if d.strip()]
    n_val = max(len(docs) // 10, 1)
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    per_unit = -(-len(train_docs) // train_units)
    units = [train_docs[i : i + per_unit] for i in range(0, len(train_docs), per_unit)]
    root.mkdir(parents=True, exist_ok=True)
    splits, samples, paths, doc_starts = {}, {}, {}, {}
    for split, split_units in (("train", units), ("validation", [val_docs])):
        splits[split], samples[split], paths[split], doc_starts[split] = _write_split(
            root, split, split_units, chunk_len, shard_samples, dtype
        )
    manifest = {
        "format_version": 1,
        "dtype": dtype,
        "chunk_len": chunk_len,
        "tokenizer": {
            "hash": tokenizer_hash,
            "kind": "bytes",
            "vocab_size": VOCAB_SIZE,
            "special_ids": {
                "pad": PAD,
                "bos": BOS,
                "eos": EOS,
                "unk": UNK,
                "mask": MASK,
                "sentinels": SENTINELS,
            },
            "path": "",
        },
        "splits": splits,
        "sources": [{"path": str(TINYSHAKESPEARE), "bytes": text_bytes}],
        "counters": {"documents": len(docs)},
        "config": {"chunk_len": chunk_len, "shard_samples": shard_samples},
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return BuiltDataset(path, root, samples, paths, doc_starts)
