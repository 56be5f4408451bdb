"""`data-pipeline verify`: check every shard the manifest lists (present, size, sha256) and that
every sample in it decodes (`data_pipeline.sample_format.decode_sample`: chunk_len ids of the
manifest dtype, document starts and UTF-8 bytes that add up to the manifest's figures). Every bad
shard is named."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

from fsspec.core import url_to_fs

from data_pipeline.manifest import SPLITS, read_manifest_bytes
from data_pipeline.sample_format import SampleFormatError, decode_sample


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
            arr, starts, nbytes = decode_sample(parts, dtype=dtype, chunk_len=chunk_len)
        except SampleFormatError as err:
            return [f"sample {key} {err}"]
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
