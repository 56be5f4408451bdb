"""Stream the samples of one WebDataset shard through fsspec, validating each before use.

A sample is yielded only when it is complete and well formed (both members present, tokens of
the manifest's dtype and exactly ``chunk_len`` long, meta JSON with in-range document starts),
so a truncated or corrupt shard can never produce a partial sample. What happens at the first
bad byte depends on ``on_bad_shard``: ``"fail"`` raises `ShardError` naming the shard, ``"skip"``
abandons the rest of the shard, counts what was lost in `BadShardStats` and warns.

Shards are read sequentially (tar is a sequential format); resuming at sample ``k`` reads past
the first ``k`` samples without decoding them.

Two cheap checks come first, so a manifest that does not describe its shards (one written for
another tokenizer, copied over them) stops the run at the first shard instead of after training
on it: the shard's size is compared with the manifest's ``bytes`` when it is opened, and every
token id must be below the manifest's vocabulary size (an id past it would otherwise index past
the embedding table).

Every byte read goes through a sha256 (`_HashingReader`). When a reader gets to the end of a
shard, the rest of the file (tar padding) is hashed too and the digest and size are compared
with the manifest's ``sha256`` and ``bytes``: a flipped byte that still decodes is caught there.
Samples are yielded as they are read, so a mismatch is detected only at the end of the shard,
after its samples have gone into batches: ``"fail"`` then raises `ShardError` (training stops at
that step), ``"skip"`` counts it in `BadShardStats.hash_mismatches` and warns. A reader that
stops before the end of the shard (a stream whose range ends mid-shard) does not check it; the
stream whose range holds the shard's last sample reads the whole file (from byte 0, decoding
only its own samples) and does. See docs/loader.md.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
import numpy as np
from webdataset.tariterators import tar_file_iterator

from data_pipeline.sample_format import SampleFormatError, decode_sample
from pretrain.faults import Faults
from pretrain.loader.manifest import ShardInfo

logger = logging.getLogger(__name__)

# The first retry of a failed read waits this long, each next one twice as long, up to the cap.
_RETRY_DELAY_S = 0.5
_MAX_RETRY_DELAY_S = 8.0

OnBadShard = Literal["fail", "skip"]


class ShardError(RuntimeError):
    """A shard is missing, truncated or corrupt; the message names it."""


@dataclass
class BadShardStats:
    """What lenient mode has met so far in this process (thread-safe counters): shards cut
    short and the samples lost with them, and shards read to the end whose bytes did not match
    the manifest's sha256 (their samples were used; nothing was skipped)."""

    shards: int = 0
    samples: int = 0
    hash_mismatches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, samples: int) -> None:
        with self._lock:
            self.shards += 1
            self.samples += samples

    def add_hash_mismatch(self) -> None:
        with self._lock:
            self.hash_mismatches += 1


class _HashingReader:
    """A read-only file wrapper that feeds every byte read through sha256."""

    def __init__(self, raw: Any, url: str = "") -> None:
        self._raw = raw
        self._url = url
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __repr__(self) -> str:
        # tar errors name their file object: show the shard, not an object address.
        return self._url or object.__repr__(self)

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self, block: int = 1 << 20) -> None:
        """Hash whatever the tar reader left unread (end-of-archive blocks, padding)."""
        while self.read(block):
            pass


class _TransientReadError(OSError):
    """A read of the shard's file failed with an I/O error: worth opening it again."""


class _ReadErrors:
    """Marks the I/O errors of the file's own reads (as opposed to what the tar reader or the
    decoder find in the bytes), the ones `iter_shard` retries."""

    def __init__(self, raw: Any, faults: Faults) -> None:
        self._raw = raw
        self._faults = faults

    def read(self, n: int = -1) -> bytes:
        try:
            self._faults.fail_read()
            data: bytes = self._raw.read(n)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise  # the shard is gone or closed to us: opening it again changes nothing
        except OSError as err:
            raise _TransientReadError(str(err)) from err
        return data


class _HashMismatchError(ValueError):
    pass


def _check_digest(shard: ShardInfo, reader: _HashingReader) -> None:
    if shard.size is not None and reader.size != shard.size:
        raise _HashMismatchError(f"{reader.size} bytes, the manifest says {shard.size}")
    if shard.sha256 is not None and reader.sha256.hexdigest() != shard.sha256:
        raise _HashMismatchError(
            f"sha256 {reader.sha256.hexdigest()} does not match the manifest's {shard.sha256} "
            "(its samples were already used)"
        )


@dataclass(frozen=True)
class Sample:
    index: int  # position of the sample within its shard
    tokens: np.ndarray  # (chunk_len,) uint16 or uint32, as stored
    doc_starts: tuple[int, ...]  # offsets in the chunk where a document begins
    utf8_bytes: int


class _BadSampleError(ValueError):
    pass


def _decode(
    key: str, members: dict[str, bytes], *, dtype: str, chunk_len: int, vocab_size: int | None
) -> Sample:
    try:
        tokens, doc_starts, utf8_bytes = decode_sample(members, dtype=dtype, chunk_len=chunk_len)
    except SampleFormatError as exc:
        raise _BadSampleError(f"sample {key!r} {exc}") from exc
    if vocab_size is not None and tokens.size and int(tokens.max()) >= vocab_size:
        where = int(np.argmax(tokens >= vocab_size))
        raise _BadSampleError(
            f"sample {key!r} holds token id {int(tokens[where])} (position {where}), outside the "
            f"manifest's vocabulary of {vocab_size}: the shard was not tokenized with the "
            "manifest's tokenizer"
        )
    return Sample(index=-1, tokens=tokens, doc_starts=doc_starts, utf8_bytes=utf8_bytes)


def _check_size(shard: ShardInfo, f: Any, storage_options: dict[str, Any] | None) -> None:
    """The file's size against the manifest's ``bytes``, before a byte is read."""
    if shard.size is None:
        return
    size = getattr(f, "size", None)
    if not isinstance(size, int):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(shard.url, **(storage_options or {}))
        size = int(fs.size(path))
    if size != shard.size:
        raise _BadSampleError(
            f"{size} bytes, the manifest says {shard.size}: the manifest does not describe "
            "this shard (written for other shards, or the shard was cut or replaced)"
        )


def _split_name(fname: str) -> tuple[str, str]:
    # The key is everything before the first dot of the last path component (WebDataset's rule).
    head, _, tail = fname.rpartition("/")
    base, dot, ext = tail.partition(".")
    if not dot:
        raise _BadSampleError(f"member {fname!r} has no extension")
    return (f"{head}/{base}" if head else base), ext


def _grouped(fileobj: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) per sample, in tar order; the grouping WebDataset does."""
    key: str | None = None
    members: dict[str, bytes] = {}
    for item in tar_file_iterator(fileobj):
        k, ext = _split_name(item["fname"])
        if k != key:
            if key is not None:
                yield key, members
            key, members = k, {}
        if ext in members:
            raise _BadSampleError(f"sample {k!r} has {ext} twice")
        members[ext] = item["data"]
    if key is not None:
        yield key, members


def iter_shard(
    shard: ShardInfo,
    *,
    start: int,
    dtype: str,
    chunk_len: int,
    on_bad_shard: OnBadShard,
    stats: BadShardStats,
    storage_options: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    read_retries: int = 3,
    faults: Faults | None = None,
) -> Generator[Sample, None, None]:
    """Yield the valid samples of ``shard`` from sample ``start`` on (``Sample.index`` set).

    The file's size is checked against the manifest's when it is opened, and each sample's
    token ids against ``vocab_size`` (when given). Once the last sample is read, the file's
    sha256 is checked against the manifest's (when it has one); that check only happens if the
    caller reads the generator to its end.

    A read that fails with an I/O error (a dropped connection to object storage) is retried up
    to ``read_retries`` times in a row: the shard is opened again and read past the samples
    already yielded, so none is lost or repeated; each retry is logged. Past that, the shard is
    bad (``on_bad_shard``), and the error says how often it failed and where.
    """
    good = 0
    failures = 0  # read errors in a row, since the last sample yielded
    resume_at = start
    try:
        while True:
            good = 0
            try:
                with fsspec.open(shard.url, "rb", **(storage_options or {})) as f:
                    _check_size(shard, f, storage_options)
                    reader = _HashingReader(_ReadErrors(f, faults or Faults()), shard.url)
                    for index, (key, members) in enumerate(_grouped(reader)):
                        if index >= shard.samples:
                            raise _BadSampleError(
                                f"more samples than the manifest's {shard.samples}"
                            )
                        if index < resume_at:
                            good += 1  # counted but not decoded: resuming mid-shard stays cheap
                            continue
                        sample = _decode(
                            key, members, dtype=dtype, chunk_len=chunk_len, vocab_size=vocab_size
                        )
                        good += 1
                        yield Sample(index, sample.tokens, sample.doc_starts, sample.utf8_bytes)
                        resume_at, failures = index + 1, 0
                    if good != shard.samples:
                        raise _BadSampleError(
                            f"{good} samples, the manifest says {shard.samples} (truncated?)"
                        )
                    reader.drain()
                    _check_digest(shard, reader)
                    return
            except _TransientReadError as exc:
                failures += 1
                cause = exc.__cause__ or exc
                if failures > read_retries:
                    raise _BadSampleError(
                        f"reading failed {failures} times in a row at sample {resume_at} "
                        f"(data.read_retries={read_retries}), the last with "
                        f"{type(cause).__name__}: {cause}"
                    ) from exc
                delay = min(_RETRY_DELAY_S * 2 ** (failures - 1), _MAX_RETRY_DELAY_S)
                logger.warning(
                    "reading shard %s failed (%s: %s); retry %d of %d in %.1f s, resuming at "
                    "sample %d",
                    shard.url,
                    type(cause).__name__,
                    cause,
                    failures,
                    read_retries,
                    delay,
                    resume_at,
                )
                time.sleep(delay)
    except _HashMismatchError as exc:
        if on_bad_shard == "fail":
            raise ShardError(f"bad shard {shard.url}: {exc}") from exc
        stats.add_hash_mismatch()
        warnings.warn(
            f"shard {shard.url} does not match the manifest: {exc}; "
            f"{stats.hash_mismatches} such shards so far",
            RuntimeWarning,
            stacklevel=2,
        )
    except (_BadSampleError, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        # Our own findings say what is wrong in words; a library's error keeps its type's name.
        reason = str(exc) if isinstance(exc, _BadSampleError) else f"{type(exc).__name__}: {exc}"
        if on_bad_shard == "fail":
            raise ShardError(f"bad shard {shard.url}: {reason}") from exc
        lost = shard.samples - good
        stats.add(lost)
        warnings.warn(
            f"skipping the rest of bad shard {shard.url} ({lost} of {shard.samples} samples "
            f"lost; {stats.shards} bad shards so far): {reason}",
            RuntimeWarning,
            stacklevel=2,
        )
