"""The shard and sample format, defined once: what `prepare` writes, `verify` checks and the
trainer's loader (`pretrain.loader`) reads. Imports no torch, like all of `data_pipeline`.

A dataset is a ``manifest.json`` (format version `MANIFEST_FORMAT_VERSION`) beside WebDataset tar
shards named ``{split}-{unit:05d}-{seq:05d}.tar``. Each sample is two members under one key
``{unit:05d}-{index:08d}``: ``tokens.npy``, a 1-D array of ``chunk_len`` ids (uint16, or uint32
when the vocabulary needs it) in `np.save`'s format, and ``meta.json``,
``{"doc_starts": [...], "utf8_bytes": N}`` (offsets in the chunk where a document begins, and
the UTF-8 bytes the chunk came from).
"""

from __future__ import annotations

import functools
import io
import json
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
TOKENS_MEMBER = "tokens.npy"
META_MEMBER = "meta.json"
SAMPLE_KEY_BYTES = b"%05d-%08d"  # % (unit, index within the unit's stream)
SHARD_SUFFIX = ".tar"


class SampleFormatError(ValueError):
    """A shard name or a sample that is not in this format; the message says how."""


def shard_name(split: str, unit: int, seq: int) -> str:
    return f"{split}-{unit:05d}-{seq:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[int, int]:
    """``{split}-{unit:05d}-{seq:05d}.tar`` (any directory) -> (unit, seq)."""
    stem = posixpath.basename(name)
    parts = stem.removesuffix(SHARD_SUFFIX).rsplit("-", 2)
    bad = SampleFormatError(f"shard name {name!r} is not '{{split}}-{{unit}}-{{seq}}.tar'")
    if len(parts) != 3 or not stem.endswith(SHARD_SUFFIX):
        raise bad
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        raise bad from None


def sample_key(unit: int, index: int) -> str:
    return (SAMPLE_KEY_BYTES % (unit, index)).decode()


@functools.lru_cache(maxsize=8)
def npy_header(dtype: np.dtype[Any] | str, length: int) -> bytes:
    """The ``.npy`` header that ``np.save`` writes for a 1-D array of ``length`` ``dtype``
    values: the same for every sample of a dataset, so it is made once."""
    arr = np.zeros(length, dtype=dtype)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    header = data[: len(data) - arr.nbytes]
    assert data[len(header) :] == arr.tobytes()
    return header


def meta_json(doc_starts: Sequence[int], utf8_bytes: int) -> bytes:
    """``json.dumps({"doc_starts": ..., "utf8_bytes": ...}, sort_keys=True)``, UTF-8, without
    going through the JSON encoder (ints only; a test checks the two agree)."""
    starts = ", ".join(map(str, doc_starts))
    return f'{{"doc_starts": [{starts}], "utf8_bytes": {int(utf8_bytes)}}}'.encode()


def encode_sample(tokens: np.ndarray, doc_starts: list[int], utf8_bytes: int) -> dict[str, bytes]:
    """One sample's members, the plain way (the writer builds the same bytes from templates)."""
    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    meta = json.dumps({"doc_starts": doc_starts, "utf8_bytes": utf8_bytes}, sort_keys=True)
    return {TOKENS_MEMBER: buf.getvalue(), META_MEMBER: meta.encode("utf-8")}


def _load_tokens(data: bytes, dtype: str, chunk_len: int) -> np.ndarray:
    # np.load parses the header with ast.literal_eval, a third of the decode time; when the
    # header is byte-for-byte the one np.save writes for the expected shape, skip it.
    header = npy_header(dtype, chunk_len)
    if data.startswith(header) and len(data) == len(header) + chunk_len * np.dtype(dtype).itemsize:
        return np.frombuffer(data, dtype=dtype, offset=len(header))
    return np.load(io.BytesIO(data), allow_pickle=False)  # any other header: checked below


def decode_sample(
    members: dict[str, bytes], *, dtype: str, chunk_len: int
) -> tuple[np.ndarray, tuple[int, ...], int]:
    """(tokens, doc_starts, utf8_bytes) of one sample's members ({member name: bytes}), checked
    against the dataset's dtype and chunk length; `SampleFormatError` says what is wrong."""
    if set(members) != {TOKENS_MEMBER, META_MEMBER}:
        raise SampleFormatError(f"has members {sorted(members)}")
    try:
        tokens = _load_tokens(members[TOKENS_MEMBER], dtype, chunk_len)
        meta = json.loads(members[META_MEMBER])
        doc_starts = tuple(int(x) for x in meta["doc_starts"])
        utf8_bytes = int(meta["utf8_bytes"])
    except (ValueError, KeyError, TypeError, EOFError, OSError) as exc:
        raise SampleFormatError(f"does not decode: {type(exc).__name__}: {exc}") from exc
    if tokens.ndim != 1 or tokens.dtype != np.dtype(dtype) or tokens.shape[0] != chunk_len:
        raise SampleFormatError(
            f"has tokens {tokens.dtype}{list(tokens.shape)}, expected {dtype}[{chunk_len}]"
        )
    if any(not 0 <= d < chunk_len for d in doc_starts):
        raise SampleFormatError(f"has doc_starts outside [0, {chunk_len})")
    return tokens, doc_starts, utf8_bytes
