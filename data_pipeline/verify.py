"""`data-pipeline verify`: check every shard the manifest lists (present, size, sha256) and that
every sample in it decodes (tokens.npy of chunk_len ids of the manifest dtype, meta.json with
doc_starts and utf8_bytes that add up to the manifest's figures). Every bad shard is named."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import numpy as np
from fsspec.core import url_to_fs

from data_pipeline.manifest import SPLITS, read_manifest_bytes


def check_shard_bytes(data: bytes, entry: dict[str, Any], chunk_len: int, dtype: str) -> list[str]:
    """Problems with one shard's bytes (empty list: good)."""
    if len(data) != entry["bytes"]:
        return [f"size {len(data)} != manifest {entry['bytes']}"]
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        return [f"sha256 {digest[:16]}... != manifest {entry['sha256'][:16]}..."]
    return check_samples(data, entry, chunk_len, dtype)


def read_samples(data: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) in tar order."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            f = tar.extractfile(member)
            if f is None:
                raise ValueError(f"{member.name} is not a file")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = f.read()
    return samples


def check_samples(data: bytes, entry: dict[str, Any], chunk_len: int, dtype: str) -> list[str]:
    try:
        samples = read_samples(data)
    except (tarfile.TarError, ValueError, OSError) as err:
        return [f"not a readable tar: {err}"]
    tokens = utf8 = docs = 0
    keys = [k for k, _ in samples]
    if keys != sorted(keys):
        return ["sample keys are not in stream order"]
    for key, parts in samples:
        try:
            arr = np.load(io.BytesIO(parts["tokens.npy"]), allow_pickle=False)
            meta = json.loads(parts["meta.json"])
            starts = meta["doc_starts"]
            nbytes = int(meta["utf8_bytes"])
        except (KeyError, ValueError, TypeError) as err:
            return [f"sample {key} does not decode: {type(err).__name__}: {err}"]
        if arr.ndim != 1 or len(arr) != chunk_len or str(arr.dtype) != dtype:
            return [f"sample {key}: tokens {arr.dtype}{list(arr.shape)}, want {dtype}[{chunk_len}]"]
        if any(not 0 <= s < chunk_len for s in starts):
            return [f"sample {key}: doc_starts out of range"]
        tokens += len(arr)
        utf8 += nbytes
        docs += len(starts)
    got = {"samples": len(samples), "tokens": tokens, "utf8_bytes": utf8, "documents": docs}
    wrong = [f"{k} {v} != manifest {entry[k]}" for k, v in got.items() if entry.get(k) != v]
    return wrong


def verify(location: str, storage_options: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """{shard name: problems} for every bad shard (empty: the dataset is intact)."""
    raw, base = read_manifest_bytes(location, storage_options)
    manifest = json.loads(raw)
    fs, root = url_to_fs(base, **(storage_options or {}))
    bad: dict[str, list[str]] = {}
    for split in SPLITS:
        for entry in manifest["splits"][split]["shards"]:
            try:
                data = bytes(fs.cat_file(f"{root}/{entry['name']}"))
            except FileNotFoundError:
                bad[entry["name"]] = ["missing"]
                continue
            problems = check_shard_bytes(data, entry, manifest["chunk_len"], manifest["dtype"])
            if problems:
                bad[entry["name"]] = problems
    return bad
