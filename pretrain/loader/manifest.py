"""Read a dataset manifest through fsspec and check it against what the model expects.

The manifest is the contract with `data_pipeline prepare` (see docs/loader.md). Its fingerprint
is the sha256 of the file's bytes, so any change to the shard list, counts or tokenizer gives a new
fingerprint and a resumed run cannot silently continue on different data.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from data_pipeline.sample_format import (
    MANIFEST_FORMAT_VERSION,
    SampleFormatError,
    parse_shard_name,
)

DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32}  # dtype -> number of representable token ids


class ManifestError(ValueError):
    """The manifest is unreadable, malformed, or does not fit the model / run."""


@dataclass(frozen=True)
class ShardInfo:
    name: str  # path relative to the manifest's directory
    url: str  # full URL/path handed to fsspec
    samples: int
    tokens: int
    utf8_bytes: int
    unit: int  # from the file name; consecutive seq within a unit are consecutive text
    seq: int
    sha256: str | None = None  # of the shard file's bytes; checked while streaming if present
    size: int | None = None  # the file's length in bytes ("bytes" in the manifest)


@dataclass(frozen=True)
class SplitInfo:
    name: str
    shards: tuple[ShardInfo, ...]
    samples: int
    tokens: int
    utf8_bytes: int
    documents: int


@dataclass(frozen=True)
class Manifest:
    url: str
    fingerprint: str  # sha256 of the manifest file's bytes
    dtype: str
    chunk_len: int
    tokenizer: dict[str, Any]
    splits: dict[str, SplitInfo]

    @property
    def tokenizer_hash(self) -> str:
        return str(self.tokenizer.get("hash", ""))

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def special_ids(self) -> dict[str, Any]:
        return dict(self.tokenizer.get("special_ids", {}))

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ManifestError(
                f"{self.url}: split {name!r} not in manifest (has {sorted(self.splits)})"
            )
        return self.splits[name]


def _parse_shard_name(name: str) -> tuple[int, int]:
    """(unit, seq) of a shard name; anything else is a malformed manifest."""
    try:
        return parse_shard_name(name)
    except SampleFormatError as err:
        raise ManifestError(str(err)) from None


def _join_url(base_dir: str, name: str) -> str:
    if "://" in name or name.startswith("/"):
        return name
    return posixpath.join(base_dir, name) if base_dir else name


def parse_manifest(raw: bytes, url: str) -> Manifest:
    """Build a `Manifest` from the file's bytes; `url` locates the shards (its directory)."""
    try:
        doc = json.loads(raw)
        if doc.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise ManifestError(
                f"{url}: format_version {doc.get('format_version')!r} unsupported "
                f"(need {MANIFEST_FORMAT_VERSION})"
            )
        dtype = doc["dtype"]
        if dtype not in DTYPES:
            raise ManifestError(f"{url}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        base_dir = posixpath.dirname(url)
        splits = {}
        for split_name, split in doc["splits"].items():
            shards = []
            for s in split["shards"]:
                unit, seq = _parse_shard_name(s["name"])
                shards.append(
                    ShardInfo(
                        name=s["name"],
                        url=_join_url(base_dir, s["name"]),
                        samples=int(s["samples"]),
                        tokens=int(s["tokens"]),
                        utf8_bytes=int(s.get("utf8_bytes", 0)),
                        unit=unit,
                        seq=seq,
                        sha256=str(s["sha256"]).lower() if s.get("sha256") else None,
                        size=int(s["bytes"]) if s.get("bytes") is not None else None,
                    )
                )
            splits[split_name] = SplitInfo(
                name=split_name,
                shards=tuple(shards),
                samples=int(split["samples"]),
                tokens=int(split["tokens"]),
                utf8_bytes=int(split["utf8_bytes"]),
                documents=int(split.get("documents", 0)),
            )
        return Manifest(
            url=url,
            fingerprint=hashlib.sha256(raw).hexdigest(),
            dtype=dtype,
            chunk_len=int(doc["chunk_len"]),
            tokenizer=dict(doc["tokenizer"]),
            splits=splits,
        )
    except ManifestError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSON, UTF-8, numbers
        raise ManifestError(f"{url}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def load_manifest(url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Read ``manifest.json`` from any fsspec URL (local path, s3://, ...)."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest not found: {url}") from exc
    except IsADirectoryError as exc:
        raise ManifestError(f"manifest {url} is a directory: name its manifest.json") from exc
    except OSError as exc:
        raise ManifestError(f"manifest {url} is not readable: {exc}") from exc
    return parse_manifest(raw, url)


def check_compatible(
    manifest: Manifest,
    *,
    expected_tokenizer_hash: str | None = None,
    expected_vocab_size: int | None = None,
    expected_dtype: str | None = None,
) -> None:
    """Fail early, before any training step, when the data does not fit the model.

    The model's vocabulary may be larger than the tokenizer's (embedding tables are often padded
    to a multiple of 64 or 128) but never smaller: an id beyond the table would crash mid-run or,
    worse, index the wrong row on some backends.
    """
    where = f"dataset {manifest.url}"
    if expected_tokenizer_hash is not None and manifest.tokenizer_hash != expected_tokenizer_hash:
        raise ManifestError(
            f"{where}: tokenizer hash {manifest.tokenizer_hash!r} does not match the model's "
            f"tokenizer {expected_tokenizer_hash!r}; the shards were tokenized with another "
            "tokenizer"
        )
    if expected_vocab_size is not None and manifest.vocab_size > expected_vocab_size:
        raise ManifestError(
            f"{where}: tokenizer vocab_size {manifest.vocab_size} exceeds the model's "
            f"vocab_size {expected_vocab_size}"
        )
    if expected_dtype is not None and manifest.dtype != expected_dtype:
        raise ManifestError(
            f"{where}: token dtype {manifest.dtype!r} does not match the expected "
            f"{expected_dtype!r}"
        )
    if manifest.vocab_size > DTYPES[manifest.dtype]:
        raise ManifestError(
            f"{where}: dtype {manifest.dtype} cannot hold vocab_size {manifest.vocab_size}"
        )
