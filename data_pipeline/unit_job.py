"""One work unit: read its documents, tokenize them in batches, split, deduplicate, pack and
write its shards, then commit its marker. The marker is written after every shard is in place,
so a unit with a marker is complete and a unit without one is redone from scratch (its shard
names are rewritten with the same bytes)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from data_pipeline.manifest import unit_marker_name
from data_pipeline.readers import Document, UnitReader
from data_pipeline.schemas import PrepareConfig
from data_pipeline.shard_writer import SplitStream
from data_pipeline.storage import Committer, Output, json_bytes
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.units import WorkUnit

BATCH_BYTES = 4 << 20  # also flush a batch at this much text: bounds memory on long documents

Report = Callable[[int, int, int], None]  # (documents, tokens, bytes_in) increments


def validation_by_hash(data: bytes, salt: bytes, fraction: float) -> bool:
    """A document's split from its content alone: stable under reordering, reruns, and unit
    boundaries."""
    h = hashlib.blake2b(data, digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(h, "big") < fraction * 2**64


def _hash_splitter(salt: bytes, fraction: float) -> Callable[[bytes], bool]:
    """`validation_by_hash` with the key and threshold worked out once."""
    key, threshold, blake2b = salt[:64], fraction * 2**64, hashlib.blake2b

    def is_validation(data: bytes) -> bool:
        return int.from_bytes(blake2b(data, digest_size=8, key=key).digest(), "big") < threshold

    return is_validation


def run_unit(
    unit: WorkUnit,
    cfg: PrepareConfig,
    tok: Tokenizer,
    out: Output,
    config_hash: str,
    report: Report | None = None,
    committer: Committer | None = None,
    on_committed: Callable[[], None] | None = None,
    keep_rejected: str | None = None,
) -> dict[str, Any]:
    """Run one unit. Its shards and then its marker go through ``committer`` (on its thread,
    in order); ``on_committed`` is called there once the marker is in place. Without a
    committer, one is made and waited for: the unit is committed when this returns.

    With ``quality`` in the recipe, the documents the quality stages removed (filters, global
    dedup: `data_pipeline.quality`) are dropped before the split and counted per stage; with
    ``keep_rejected`` (a directory or URL) they are written there with their reason."""
    own = committer is None
    commits = Committer(out, cfg.shard_bytes) if committer is None else committer
    reader = UnitReader(unit, cfg.source)
    streams = {
        split: SplitStream(
            out,
            split,
            unit.index,
            cfg.chunk_len,
            tok.dtype,
            cfg.shard_bytes,
            tok.special_ids.eos,
            commits,
        )
        for split in ("train", "validation")
    }
    batches: dict[str, list[Document]] = {"train": [], "validation": []}
    batch_bytes = {"train": 0, "validation": 0}
    seen: set[bytes] = set()
    documents_read = duplicates = 0
    is_validation = _hash_splitter(cfg.split.salt.encode("utf-8"), cfg.split.validation_fraction)
    max_docs, dedup, fixed, utf8 = (
        cfg.encode_batch_documents,
        cfg.dedup,
        unit.split,
        tok.encodes_utf8,
    )
    blake2b = hashlib.blake2b
    removals: dict[int, tuple[str, list[int] | None]] = {}
    scanned = -1
    if cfg.quality.enabled:
        from data_pipeline.quality import load_removals

        scanned, removals = load_removals(out, unit.index)
    removed: Counter[str] = Counter()
    removed_bytes: Counter[str] = Counter()
    rejected: list[bytes] = []

    def flush(split: str) -> None:
        docs = batches[split]
        if not docs:
            return
        if utf8:  # the reader's bytes as they are: no str round trip for sentencepiece
            ids = tok.encode_utf8_batch([d.utf8 for d in docs])
        else:
            ids = tok.encode_batch([d.text for d in docs])
        streams[split].add(ids, [d.nbytes for d in docs])
        if report is not None:
            report(len(docs), sum(map(len, ids)), 0)
        batches[split], batch_bytes[split] = [], 0

    for doc in reader.documents():
        index = documents_read
        documents_read += 1
        if removals and index in removals:
            reason, kept = removals[index]
            stage = reason.split(":", 1)[0]
            removed[stage] += 1
            removed_bytes[stage] += doc.nbytes
            if keep_rejected is not None:
                entry = {"unit": unit.index, "document": index, "reason": reason}
                entry.update({"kept": kept} if kept is not None else {})
                rejected.append(
                    json.dumps({**entry, "text": doc.text}, ensure_ascii=False).encode()
                )
            continue
        data = doc.utf8
        if dedup:
            digest = blake2b(data, digest_size=16).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
        split = fixed if fixed is not None else "validation" if is_validation(data) else "train"
        batch = batches[split]
        batch.append(doc)
        batch_bytes[split] += doc.nbytes
        if len(batch) >= max_docs or batch_bytes[split] >= BATCH_BYTES:
            flush(split)
    if scanned >= 0 and documents_read != scanned:
        # The removals name documents by index: they hold only for the text that was scanned.
        raise RuntimeError(
            f"{unit.source.path}: unit {unit.index} has {documents_read} documents, the quality "
            f"scan read {scanned}: the input changed since; delete {cfg.output}/_quality and "
            "rerun the stages"
        )
    for split in streams:
        flush(split)
    dropped = {split: s.finish() for split, s in streams.items()}
    if report is not None:
        report(0, 0, reader.bytes_read)
    marker: dict[str, Any] = {
        "unit": unit.index,
        "config_hash": config_hash,
        "source": {
            "path": unit.source.path,
            "size": unit.source.size,
            "range": [unit.start, unit.end],
            "sha256": reader.sha256,
        },
        # The shards' sha256 are filled in on the committer's thread, before this is written.
        "splits": {split: {"shards": s.shards} for split, s in streams.items()},
        "counters": {
            "documents_read": documents_read,
            "skipped": dict(sorted(reader.skipped.items())),
            "skipped_bytes": dict(sorted(reader.skipped_bytes.items())),
            "input_bytes": reader.input_bytes,
            "duplicates_dropped": duplicates,
            "bytes_read": reader.bytes_read,
            "tail_tokens_dropped": sum(dropped.values()),
        },
    }
    if cfg.quality.enabled:  # only then: markers (and manifests) of other recipes stay as they were
        marker["counters"]["removed"] = dict(sorted(removed.items()))
        marker["counters"]["removed_bytes"] = dict(sorted(removed_bytes.items()))
    if keep_rejected is not None and rejected:
        Output(keep_rejected).commit(f"{unit.index:05d}.jsonl", b"\n".join(rejected) + b"\n")
    commits.submit(unit_marker_name(unit.index), lambda: json_bytes(marker), on_committed)
    if own:
        commits.wait()
    return marker
