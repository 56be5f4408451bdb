"""`manifest.json`: built from the committed unit markers, written last and atomically, with
deterministic bytes (sorted keys, no timestamps), so its sha256 is the dataset fingerprint."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from data_pipeline.sample_format import MANIFEST_FILE, MANIFEST_FORMAT_VERSION
from data_pipeline.storage import Output, json_bytes

MANIFEST = MANIFEST_FILE
SPLITS = ("train", "validation")
UNIT_DIR = "_units"


def unit_marker_name(unit: int) -> str:
    return f"{UNIT_DIR}/{unit:05d}.json"


def manifest_fingerprint(manifest: str | bytes) -> str:
    """The dataset fingerprint: sha256 of the manifest file's bytes. ``manifest`` is the bytes
    themselves or a path/URL of manifest.json (or of the directory holding it)."""
    if isinstance(manifest, bytes):
        return hashlib.sha256(manifest).hexdigest()
    return hashlib.sha256(read_manifest_bytes(manifest)[0]).hexdigest()


def read_manifest_bytes(
    location: str, storage_options: dict[str, Any] | None = None
) -> tuple[bytes, str]:
    """(manifest bytes, URL of its directory). ``location`` names the file or its directory."""
    url = location.rstrip("/")
    if not url.endswith(".json"):
        url = f"{url}/{MANIFEST}"
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **(storage_options or {}))
    data = bytes(fs.cat_file(path))
    return data, url.rsplit("/", 1)[0]


def _source_entries(markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per source file: size and sha256. A file read as several byte ranges gets the sha256 of
    its ranges' hex digests joined in order: no worker reads the whole file to hash it."""
    order: list[str] = []
    by_path: dict[str, list[dict[str, Any]]] = {}
    for m in markers:
        src = m["source"]
        if src["path"] not in by_path:
            order.append(src["path"])
            by_path[src["path"]] = []
        by_path[src["path"]].append(src)
    entries = []
    for path in order:
        parts = by_path[path]
        digests = [p["sha256"] for p in parts]
        if any(d is None for d in digests):
            sha = None  # unreadable
        elif len(parts) == 1:
            sha = digests[0]
        else:
            sha = hashlib.sha256("".join(digests).encode()).hexdigest()
        entries.append({"path": path, "size": parts[0]["size"], "sha256": sha})
    return entries


def build_manifest(
    config: dict[str, Any],
    tokenizer: dict[str, Any],
    dtype: str,
    chunk_len: int,
    markers: list[dict[str, Any]],
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a finished dataset from every unit's marker (in unit order), with the
    quality stages' summary when the recipe has any (otherwise no key: manifests of recipes
    without them stay byte for byte what they were)."""
    markers = sorted(markers, key=lambda m: m["unit"])
    splits: dict[str, Any] = {}
    for split in SPLITS:
        shards = [s for m in markers for s in m["splits"].get(split, {}).get("shards", [])]
        splits[split] = {
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "utf8_bytes": sum(s["utf8_bytes"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
        }
    skipped: Counter[str] = Counter()
    skipped_bytes: Counter[str] = Counter()
    for m in markers:
        skipped.update(m["counters"]["skipped"])
        skipped_bytes.update(m["counters"].get("skipped_bytes", {}))  # older markers: none
    counters = {
        "documents_read": sum(m["counters"]["documents_read"] for m in markers),
        "skipped": dict(sorted(skipped.items())),
        "skipped_bytes": dict(sorted(skipped_bytes.items())),
        "input_bytes": sum(m["counters"].get("input_bytes", 0) for m in markers),
        "duplicates_dropped": sum(m["counters"]["duplicates_dropped"] for m in markers),
        "bytes_read": sum(m["counters"]["bytes_read"] for m in markers),
        "tail_tokens_dropped": sum(m["counters"]["tail_tokens_dropped"] for m in markers),
    }
    if any("removed" in m["counters"] for m in markers):
        removed: Counter[str] = Counter()
        removed_bytes: Counter[str] = Counter()
        for m in markers:
            removed.update(m["counters"].get("removed", {}))
            removed_bytes.update(m["counters"].get("removed_bytes", {}))
        counters["removed"] = dict(sorted(removed.items()))
        counters["removed_bytes"] = dict(sorted(removed_bytes.items()))
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "dtype": dtype,
        "chunk_len": chunk_len,
        "tokenizer": tokenizer,
        "splits": splits,
        "sources": _source_entries(markers),
        "counters": counters,
        "config": config,
    }
    if quality is not None:
        manifest["quality"] = quality
    return manifest


def write_manifest(out: Output, manifest: dict[str, Any]) -> str:
    """Commit manifest.json; returns the fingerprint."""
    data = json_bytes(manifest)
    out.commit(MANIFEST, data)
    return manifest_fingerprint(data)
