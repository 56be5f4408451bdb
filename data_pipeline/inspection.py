"""`data-pipeline inspect`: a readable summary of a prepared dataset, with decoded sample text."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from fsspec.core import url_to_fs

from data_pipeline.manifest import SPLITS, manifest_fingerprint, read_manifest_bytes
from data_pipeline.sample_format import TOKENS_MEMBER
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.verify import read_samples


def summarize(
    location: str, sample_chars: int = 300, storage_options: dict[str, Any] | None = None
) -> str:
    raw, base = read_manifest_bytes(location, storage_options)
    m = json.loads(raw)
    tok_meta = m["tokenizer"]
    lines = [
        f"manifest     {base}/manifest.json",
        f"fingerprint  {manifest_fingerprint(raw)}",
        f"tokenizer    {tok_meta['kind']} vocab {tok_meta['vocab_size']} hash "
        f"{tok_meta['hash'][:16]} ({tok_meta['path']})",
        f"samples      {m['chunk_len']} tokens of {m['dtype']}",
        f"sources      {len(m['sources'])} files, {sum(s['size'] for s in m['sources']):,} bytes",
    ]
    for split in SPLITS:
        s = m["splits"][split]
        per_token = s["utf8_bytes"] / s["tokens"] if s["tokens"] else 0.0
        lines.append(
            f"{split:<12} {len(s['shards'])} shards, {s['samples']:,} samples, {s['tokens']:,} "
            f"tokens, {s['documents']:,} documents, {s['utf8_bytes']:,} UTF-8 bytes "
            f"({per_token:.2f} bytes/token)"
        )
    c = m["counters"]
    skipped = ", ".join(f"{k} {v}" for k, v in c["skipped"].items()) or "none"
    lines += [
        f"read         {c['documents_read']:,} documents, {c['bytes_read']:,} bytes",
        f"skipped      {skipped}",
        f"dropped      {c['duplicates_dropped']:,} duplicate documents, "
        f"{c['tail_tokens_dropped']:,} tail tokens",
    ]
    if "removed" in c:  # recipes with quality stages
        removed = ", ".join(
            f"{k} {v:,} ({c['removed_bytes'].get(k, 0):,} B)" for k, v in c["removed"].items()
        )
        lines.append(f"removed      {removed or 'nothing'} (quality filters and dedup)")
    q = m.get("quality")
    if q:
        sizes = ", ".join(f"{n} x{size}" for size, n in q["cluster_sizes"].items())
        lines.append(
            f"quality      {q['documents']:,} documents scanned; "
            f"{q['near_duplicate_clusters']:,} near-duplicate clusters"
            + (f" (sizes: {sizes})" if sizes else "")
        )
        for heuristic, n in q["filter_heuristics"].items():
            lines.append(f"  filtered   {heuristic} {n:,}")
    lines.append(_sample_text(m, base, sample_chars, storage_options))
    return "\n".join(lines)


def _sample_text(m: dict[str, Any], base: str, chars: int, options: dict[str, Any] | None) -> str:
    shards = m["splits"]["train"]["shards"] or m["splits"]["validation"]["shards"]
    if not shards:
        return "sample       (no shards)"
    try:
        tok = Tokenizer.load(m["tokenizer"]["path"])
    except (OSError, ValueError) as err:
        return f"sample       (tokenizer not loadable: {err})"
    fs, root = url_to_fs(base, **(options or {}))
    key, parts = read_samples(bytes(fs.cat_file(f"{root}/{shards[0]['name']}")))[0]
    ids = np.load(io.BytesIO(parts[TOKENS_MEMBER])).tolist()
    return f"sample       {shards[0]['name']} {key}:\n{tok.decode(ids)[:chars]!r}"
