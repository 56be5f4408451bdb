"""Pack one unit's token stream of one split into fixed-length samples and WebDataset shards.

Stream: documents in order, each followed by EOS. Sample i of the stream is tokens
[i * chunk_len, (i + 1) * chunk_len); the remainder shorter than chunk_len is dropped and counted.
Each sample is ``tokens.npy`` (1-D uint16/uint32) and ``meta.json`` with ``doc_starts`` (offsets
in the chunk where a document begins) and ``utf8_bytes``.

UTF-8 bytes are attributed per token: a document of B bytes and T tokens gives its j-th token
floor((j+1)B/T) - floor(jB/T) bytes and its EOS none, so the bytes of a document's chunks sum to
exactly B and a split's ``utf8_bytes`` is exactly the sum over its samples.

Shards are tar files built in memory with webdataset's TarWriter (mtime 0, fixed owner and mode:
the same samples always give the same bytes), cut when they reach ``shard_bytes``, and committed
whole under ``{split}-{unit:05d}-{seq:05d}.tar``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.storage import Output


class PlainTarWriter:
    """The subset of webdataset's TarWriter used here, byte for byte the same archive (USTAR,
    owner/group "bigdata", mode 0o444, members in sorted key order). ``import webdataset``
    imports torch, which a data-preparation box may not have; this stands in for it there."""

    def __init__(self, fileobj: io.BytesIO, mtime: float = 0.0) -> None:
        self.mtime = mtime
        self.tarstream = tarfile.open(fileobj=fileobj, mode="w|")  # noqa: SIM115 (closed in close())

    def write(self, obj: dict[str, Any]) -> None:
        key = obj["__key__"]
        for k in sorted(obj):
            if k.startswith("_"):
                continue
            ti = tarfile.TarInfo(f"{key}.{k}")
            ti.size, ti.mtime, ti.mode = len(obj[k]), self.mtime, 0o444
            ti.uname = ti.gname = "bigdata"
            self.tarstream.addfile(ti, io.BytesIO(obj[k]))

    def close(self) -> None:
        self.tarstream.close()


def tar_writer(fileobj: io.BytesIO) -> PlainTarWriter:
    """The shard writer. Not webdataset's own TarWriter: ``import webdataset`` imports torch,
    which costs ~3 s in every worker process (it dominated prepare on corpora of a few MB) and
    which a data box should not need. The archives are byte-identical to webdataset's with a
    fixed mtime (a test writes the same samples with both)."""
    return PlainTarWriter(fileobj, mtime=0.0)


def shard_name(split: str, unit: int, seq: int) -> str:
    return f"{split}-{unit:05d}-{seq:05d}.tar"


def sample_key(unit: int, index: int) -> str:
    return f"{unit:05d}-{index:08d}"


def encode_sample(tokens: np.ndarray, doc_starts: list[int], utf8_bytes: int) -> dict[str, bytes]:
    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    meta = json.dumps({"doc_starts": doc_starts, "utf8_bytes": utf8_bytes}, sort_keys=True)
    return {"tokens.npy": buf.getvalue(), "meta.json": meta.encode("utf-8")}


class SplitStream:
    """The packer and shard cutter for one (unit, split)."""

    def __init__(
        self,
        out: Output,
        split: str,
        unit: int,
        chunk_len: int,
        dtype: str,
        shard_bytes: int,
        eos: int,
    ) -> None:
        self.out, self.split, self.unit = out, split, unit
        self.chunk_len, self.dtype, self.shard_bytes, self.eos = (
            chunk_len,
            np.dtype(dtype),
            shard_bytes,
            eos,
        )
        self.tokens = np.zeros(0, dtype=np.int64)
        self.cum = np.zeros(0, dtype=np.int64)  # cumulative attributed bytes, per token
        self.base = 0  # cumulative bytes before the buffer's first token
        self.starts = np.zeros(0, dtype=np.int64)  # document starts, buffer offsets
        self.samples = 0
        self.shards: list[dict[str, Any]] = []
        self._tar: Any = None
        self._buf: io.BytesIO | None = None
        self._shard: dict[str, Any] = {}
        self.documents = 0

    def add(self, docs: Sequence[Sequence[int]], nbytes: Sequence[int]) -> None:
        """Append documents (token ids without EOS) and their UTF-8 sizes."""
        if not docs:
            return
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        sizes = np.asarray(nbytes, dtype=np.int64)
        flat: list[int] = []
        for d in docs:
            flat.extend(d)
            flat.append(self.eos)
        toks = np.asarray(flat, dtype=np.int64)
        spans = lengths + 1
        offsets = np.concatenate(([0], np.cumsum(spans)[:-1]))
        before = int(self.cum[-1]) if len(self.cum) else self.base
        doc_base = before + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        j = np.arange(len(toks), dtype=np.int64) - np.repeat(offsets, spans)
        t = np.maximum(np.repeat(lengths, spans), 1)
        b = np.repeat(sizes, spans)
        cum = np.repeat(doc_base, spans) + np.minimum((j + 1) * b // t, b)
        self.starts = np.concatenate((self.starts, offsets + len(self.tokens)))
        self.tokens = np.concatenate((self.tokens, toks))
        self.cum = np.concatenate((self.cum, cum))
        self._emit_full_chunks()

    def _emit_full_chunks(self) -> None:
        n = len(self.tokens) // self.chunk_len
        if n == 0:
            return
        length = self.chunk_len
        for c in range(n):
            lo, hi = c * length, (c + 1) * length
            prev = self.base if c == 0 else int(self.cum[lo - 1])
            nbytes = int(self.cum[hi - 1]) - prev
            mask = (self.starts >= lo) & (self.starts < hi)
            starts = [int(s) - lo for s in self.starts[mask]]
            self._write(self.tokens[lo:hi].astype(self.dtype), starts, nbytes)
        cut = n * length
        self.base = int(self.cum[cut - 1])
        self.tokens, self.cum = self.tokens[cut:], self.cum[cut:]
        self.starts = self.starts[self.starts >= cut] - cut

    def _write(self, tokens: np.ndarray, doc_starts: list[int], nbytes: int) -> None:
        if self._tar is None:
            self._buf = io.BytesIO()
            self._tar = tar_writer(self._buf)
            self._shard = {"samples": 0, "tokens": 0, "utf8_bytes": 0, "documents": 0}
        sample = encode_sample(tokens, doc_starts, nbytes)
        self._tar.write({"__key__": sample_key(self.unit, self.samples), **sample})
        self.samples += 1
        self._shard["samples"] += 1
        self._shard["tokens"] += len(tokens)
        self._shard["utf8_bytes"] += nbytes
        self._shard["documents"] += len(doc_starts)
        assert self._buf is not None
        if self._buf.tell() >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._buf is not None
        self._tar.close()
        data = self._buf.getvalue()
        name = shard_name(self.split, self.unit, len(self.shards))
        self.out.commit(name, data)
        self.shards.append(
            {
                "name": name,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                **self._shard,
            }
        )
        self._tar, self._buf = None, None

    def finish(self) -> int:
        """Commit the last shard; return how many tail tokens were dropped."""
        if self._tar is not None:
            self._close_shard()
        dropped = len(self.tokens)
        self.tokens = np.zeros(0, dtype=np.int64)
        return dropped
