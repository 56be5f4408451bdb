"""Pack one unit's token stream of one split into fixed-length samples and WebDataset shards.

Stream: documents in order, each followed by EOS. Sample i of the stream is tokens
[i * chunk_len, (i + 1) * chunk_len); the remainder shorter than chunk_len is dropped and counted.
Each sample is a tokens member and a meta member, in the format `data_pipeline.sample_format`
defines (the one definition the writer, `verify` and the loader share).

UTF-8 bytes are attributed per token: a document of B bytes and T tokens gives its j-th token
floor((j+1)B/T) - floor(jB/T) bytes and its EOS none, so the bytes of a document's chunks sum to
exactly B and a split's ``utf8_bytes`` is exactly the sum over its samples.

Shards are tar files built in memory by `PlainTarWriter` (the bytes of webdataset's TarWriter with
mtime 0, fixed owner and mode: the same samples always give the same bytes), cut when they reach
``shard_bytes``, and committed whole under ``{split}-{unit:05d}-{seq:05d}.tar``. Per sample, only
the key, ``meta.json`` and two header checksums are made in Python; the ``.npy`` header, the tar
header templates and the token bytes of a whole batch of chunks are made once.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any, Protocol

import numpy as np

from data_pipeline.sample_format import (
    META_MEMBER,
    SAMPLE_KEY_BYTES,
    TOKENS_MEMBER,
    meta_json,
    npy_header,
    shard_name,
)
from data_pipeline.storage import Committer, Output

_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240: tarfile's stream buffer and end-of-archive padding
_ZEROS = bytes(_RECORD)
_MAX_TEMPLATES = 4096
# repr(mtime) -> member size -> header template: (bytes before the name, bytes between the name
# and the checksum, bytes after the checksum, checksum of the template with a blank name). Keyed
# by repr: mtime 0 and 0.0 are equal keys but not the same header (a float adds a PAX record).
_TEMPLATES: dict[str, dict[int, tuple[bytes, bytes, bytes, int]]] = {}
_META_SUFFIX = f".{META_MEMBER}".encode()  # a member's name is {key}{suffix}
_NPY_SUFFIX = f".{TOKENS_MEMBER}".encode()
_META_SUM = sum(_META_SUFFIX)  # checksum share of a member name's suffix
_NPY_SUM = sum(_NPY_SUFFIX)
_NAME_FIELD = 100  # bytes of a tar header's name field


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class PlainTarWriter:
    """The subset of webdataset's TarWriter used here, byte for byte the same archive: what
    ``tarfile.open(mode="w|")`` writes (PAX format; a float mtime adds a PAX ``mtime`` record to
    every member), owner/group "bigdata", mode 0o444, members in sorted key order. ``import
    webdataset`` imports torch, which a data-preparation box may not have; this stands in for it.

    Headers are not built member by member with `tarfile` (that was most of prepare's time on
    small samples): for each member size one header is made by `tarfile` itself, with the name
    field blanked, and every member of that size gets a copy with its name and checksum filled
    in. Names that are not short ASCII fall back to `tarfile`. ``offset`` is the bytes written so
    far."""

    def __init__(self, fileobj: Writable, mtime: float = 0.0) -> None:
        self.fileobj = fileobj
        self.mtime = mtime
        self.offset = 0
        self._templates = _TEMPLATES.setdefault(repr(mtime), {})

    def _tarinfo(self, name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = size, self.mtime, 0o444
        ti.uname = ti.gname = "bigdata"
        return ti

    def _tarfile_header(self, name: str, size: int) -> bytes:
        # What TarFile.addfile writes before the data (tarfile.open's defaults: PAX format,
        # utf-8, surrogateescape).
        return self._tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def _template(self, size: int) -> tuple[bytes, bytes, bytes, int]:
        found = self._templates.get(size)
        if found is not None:
            return found
        probe = "x"
        whole = self._tarfile_header(probe, size)
        ustar = whole[-_BLOCK:]
        blank = bytes(100) + ustar[100:]
        base = 256 + sum(blank[:148]) + sum(blank[156:])  # tarfile.calc_chksums, name blanked
        template = (whole[:-_BLOCK], blank[100:148], blank[156:], base)
        if self._header(probe.encode(), template) != whole:  # pragma: no cover - tarfile changed
            raise AssertionError("tar header template does not reproduce tarfile's header")
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        self._templates[size] = template
        return template

    @staticmethod
    def _header(name: bytes, template: tuple[bytes, bytes, bytes, int]) -> bytes:
        before, middle, after, base = template
        checksum = b"%06o\0 " % (base + sum(name))
        return b"".join((before, name, bytes(100 - len(name)), middle, checksum, after))

    def write_members(self, members: Sequence[tuple[str, bytes]]) -> None:
        """Regular file members in this order, each a header, its data and zero padding to the
        next 512-byte block, passed to the file object in one write."""
        parts: list[bytes] = []
        for name, data in members:
            size = len(data)
            if name.isascii() and len(name) <= 100 and size < 8**11:
                parts.append(self._header(name.encode(), self._template(size)))
            else:
                parts.append(self._tarfile_header(name, size))
            parts.append(data)
            parts.append(_ZEROS[: -size % _BLOCK])
        blob = b"".join(parts)
        self.fileobj.write(blob)
        self.offset += len(blob)

    def write(self, obj: dict[str, Any]) -> None:
        key = obj["__key__"]
        self.write_members([(f"{key}.{k}", obj[k]) for k in sorted(obj) if not k.startswith("_")])

    def close(self) -> None:
        """End of archive as tarfile writes it: two zero blocks, then zeros to a whole record."""
        end = self.offset + 2 * _BLOCK
        tail = 2 * _BLOCK + (-end % _RECORD)
        self.fileobj.write(_ZEROS[:tail] if tail <= _RECORD else bytes(tail))
        self.offset += tail


class _Parts(list[bytes]):
    """A write-only sink that keeps the written pieces; joined once when the shard is done
    (cheaper than growing a BytesIO by thousands of small writes)."""

    def write(self, data: bytes) -> int:
        self.append(data)
        return len(data)


def tar_writer(fileobj: Writable) -> PlainTarWriter:
    """The shard writer. Not webdataset's own TarWriter: ``import webdataset`` imports torch,
    which costs ~3 s in every worker process (it dominated prepare on corpora of a few MB) and
    which a data box should not need. The archives are byte-identical to webdataset's with a
    fixed mtime (a test writes the same samples with both)."""
    return PlainTarWriter(fileobj, mtime=0.0)


def stream_flushed(offset: int) -> int:
    """Bytes that ``tarfile.open(fileobj, "w|")`` has passed to ``fileobj`` after ``offset``
    bytes of members: it holds back up to one record (10240 bytes) and passes whole records.
    Shards are cut when this reaches ``shard_bytes`` (the rule of the tarfile-based writer this
    one replaced, kept so that shard boundaries, and so the bytes, do not change)."""
    return 0 if offset <= 0 else (offset - 1) // _RECORD * _RECORD


class SplitStream:
    """The packer and shard cutter for one (unit, split).

    Per batch of documents, the work is done once for all its tokens: the ids go into one
    array of the shard dtype (with EOS after each document) by one `np.fromiter`; the
    attributed UTF-8 bytes are worked out only at chunk ends (the bytes of a chunk are the
    difference of the running total there), and the document starts per chunk by one
    `searchsorted`. Per sample, Python only formats the key, ``meta.json`` and two header
    checksums. Shards go to ``committer`` (written on its thread) or, without one, are
    committed to ``out`` before `add` returns."""

    def __init__(
        self,
        out: Output,
        split: str,
        unit: int,
        chunk_len: int,
        dtype: str,
        shard_bytes: int,
        eos: int,
        committer: Committer | None = None,
    ) -> None:
        self.out, self.split, self.unit = out, split, unit
        self.chunk_len, self.dtype, self.shard_bytes, self.eos = (
            chunk_len,
            np.dtype(dtype),
            shard_bytes,
            eos,
        )
        self.committer = committer
        self.tokens = np.zeros(0, dtype=self.dtype)  # less than one chunk, left from the last add
        self.starts = np.zeros(0, dtype=np.int64)  # document starts, offsets in self.tokens
        self.total_bytes = 0  # UTF-8 bytes of every document added so far
        self.base = 0  # attributed bytes before self.tokens[0]
        self.samples = 0
        self.shards: list[dict[str, Any]] = []
        self._tar: PlainTarWriter | None = None
        self._buf: _Parts | None = None
        self._shard: dict[str, Any] = {}
        self._npy_header = npy_header(self.dtype, chunk_len)
        # tarfile's stream had passed shard_bytes to the file (`stream_flushed`) once the
        # archive's offset is above this.
        self._cut_after = -(-shard_bytes // _RECORD) * _RECORD
        self._eos = [eos]
        self.documents = 0

    def add(self, docs: Sequence[Sequence[int]], nbytes: Sequence[int]) -> None:
        """Append documents (token ids without EOS) and their UTF-8 sizes."""
        n = len(docs)
        if not n:
            return
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=n)
        sizes = np.fromiter(nbytes, dtype=np.int64, count=n)
        ends = np.cumsum(lengths + 1)  # in this batch's tokens, each document + its EOS
        offsets = ends - lengths - 1
        ids = chain.from_iterable(chain.from_iterable(zip(docs, repeat(self._eos))))
        new = np.fromiter(ids, dtype=self.dtype, count=int(ends[-1]))
        lead = len(self.tokens)
        tokens = np.concatenate((self.tokens, new)) if lead else new
        starts = offsets + lead
        if len(self.starts):
            starts = np.concatenate((self.starts, starts))
        length = self.chunk_len
        count = len(tokens) // length
        if count:
            # Attributed bytes up to and including each chunk's last token: a document of B
            # bytes and T tokens has given floor((j+1)B/T) of them after its j-th token, all B
            # after its EOS. A chunk end always lies in this batch (less than a chunk was left).
            at = np.arange(length - 1 - lead, count * length - lead, length, dtype=np.int64)
            doc = np.searchsorted(ends, at, side="right")
            j, b = at - offsets[doc], sizes[doc]
            before = self.total_bytes + np.cumsum(sizes) - sizes
            cum = before[doc] + np.minimum((j + 1) * b // np.maximum(lengths[doc], 1), b)
            nb = np.diff(cum, prepend=self.base).tolist()
            cut = count * length
            bounds = np.searchsorted(starts, np.arange(0, cut + 1, length)).tolist()
            rel = (starts[: bounds[-1]] % length).tolist()
            self._write_chunks(tokens[:cut].tobytes(), nb, rel, bounds)
            self.base = int(cum[-1])
            tokens, starts = tokens[cut:].copy(), starts[bounds[-1] :] - cut
        self.total_bytes += int(sizes.sum())
        self.tokens, self.starts = tokens, starts

    def _write_chunks(
        self, rows: bytes, nbytes: list[int], rel_starts: list[int], bounds: list[int]
    ) -> None:
        """Samples for consecutive chunks: chunk c is ``rows[c*row:(c+1)*row]``, has
        ``nbytes[c]`` attributed bytes and document starts ``rel_starts[bounds[c]:bounds[c+1]]``.
        The tar members are what `PlainTarWriter.write_members` writes for
        ``({key}.meta.json, meta), ({key}.tokens.npy, npy)``, built here from its templates
        with one list extend per sample."""
        row = len(rows) // len(nbytes)
        npy_size = len(self._npy_header) + row
        npy_pad = _ZEROS[: -npy_size % _BLOCK]
        header = self._npy_header
        unit, chunk_len, cut_after = self.unit, self.chunk_len, self._cut_after
        for c, utf8 in enumerate(nbytes):
            if self._tar is None:
                self._open_shard()
            tar, parts, shard = self._tar, self._buf, self._shard
            assert tar is not None and parts is not None
            key = SAMPLE_KEY_BYTES % (unit, self.samples)
            doc_starts = rel_starts[bounds[c] : bounds[c + 1]]
            meta = meta_json(doc_starts, utf8)
            npy = (header, rows[c * row : (c + 1) * row])
            if len(key) + len(_NPY_SUFFIX) <= _NAME_FIELD:  # names fit: header from templates
                key_sum = sum(key)
                m_before, m_middle, m_after, m_base = tar._template(len(meta))
                t_before, t_middle, t_after, t_base = tar._template(npy_size)
                parts += (
                    m_before,
                    key,
                    _META_SUFFIX,
                    _ZEROS[: _NAME_FIELD - len(key) - len(_META_SUFFIX)],
                    m_middle,
                    b"%06o\0 " % (m_base + key_sum + _META_SUM),
                    m_after,
                    meta,
                    _ZEROS[: -len(meta) % _BLOCK],
                    t_before,
                    key,
                    _NPY_SUFFIX,
                    _ZEROS[: _NAME_FIELD - len(key) - len(_NPY_SUFFIX)],
                    t_middle,
                    b"%06o\0 " % (t_base + key_sum + _NPY_SUM),
                    t_after,
                    *npy,
                    npy_pad,
                )
                tar.offset += len(m_before) + len(t_before) + 2 * _BLOCK + npy_size + len(npy_pad)
                tar.offset += len(meta) + (-len(meta) % _BLOCK)
            else:  # pragma: no cover - a unit or sample number too large for the name field
                name = key.decode()
                tar.write_members(
                    ((f"{name}.{META_MEMBER}", meta), (f"{name}.{TOKENS_MEMBER}", b"".join(npy)))
                )
            self.samples += 1
            shard["samples"] += 1
            shard["tokens"] += chunk_len
            shard["utf8_bytes"] += utf8
            shard["documents"] += len(doc_starts)
            if tar.offset > cut_after:
                self._close_shard()

    def _open_shard(self) -> None:
        self._buf = _Parts()
        self._tar = tar_writer(self._buf)
        self._shard = {"samples": 0, "tokens": 0, "utf8_bytes": 0, "documents": 0}

    def _close_shard(self) -> None:
        assert self._buf is not None and self._tar is not None
        self._tar.close()
        data = b"".join(self._buf)
        self._buf.clear()
        name = shard_name(self.split, self.unit, len(self.shards))
        entry: dict[str, Any] = {"name": name, "bytes": len(data), "sha256": None, **self._shard}
        self.shards.append(entry)
        self._tar, self._buf = None, None

        def hashed() -> bytes:  # on the committer's thread, in parallel with tokenizing
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            return data

        if self.committer is not None:
            self.committer.submit(name, hashed, size=len(data))
        else:
            self.out.commit(name, hashed())

    def finish(self) -> int:
        """Commit (or hand to the committer) the last shard; return how many tail tokens
        were dropped."""
        if self._tar is not None:
            self._close_shard()
        dropped = len(self.tokens)
        self.tokens = np.zeros(0, dtype=self.dtype)
        return dropped
