"""Quality stages: precision and recall of exact and near-duplicate removal against inserted
ground truth, and their CPU cost per MB against prepare alone, on the same input in the same run.

The corpus: WikiText-2 (valid + test) paragraphs of at least ``--min-words`` words, made unique
(normalised text), shuffled with a seed and cut into 4 files. Then ``--exact`` paragraphs get an
exact copy and ``--near`` others a perturbed copy with 1 to 10% of its words changed (each change
replaces, deletes or inserts a word, drawn from the corpus's own words), every copy inserted at a
random place in a random file. Each original and its copy form a group; a group of two needs one
removal. A removed document is a true positive while its group has removals left to make;
anything else removed (a document of no group, or a second one of a group) is a false positive.
Recall = true positives / removals needed; precision = true positives / removed.

CPU: ``time.process_time`` (one process, ``--workers 1``) of `prepare` alone (no quality) and
of the quality stages (scan: filters, normalised hash, MinHash; buckets; clusters), run one
after the other on the same files, ``--repeats`` times interleaved; medians. The stages'
split (scan / buckets / clusters) is printed too.

    PYTHONPATH=. python benchmarks/data_pipeline_quality.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from data_pipeline.configuration import from_dict
from data_pipeline.prepare import prepare
from data_pipeline.quality import buckets, clusters, normalise, scan
from data_pipeline.schemas import PrepareConfig, TokenizerTrainingConfig
from data_pipeline.tokenizer_training import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEDUP: dict[str, Any] = {
    "exact_dedup": True,
    "minhash": {"enabled": True, "shingle_size": 3, "threshold": 0.4, "bands": 40, "rows": 3},
}
FILTERS: list[dict[str, Any]] = [
    {"name": "length", "params": {"min_words": 5}},
    {"name": "gopher_quality", "params": {"min_words": 20}},
    {"name": "gopher_repetition"},
]
# py3langid walks each byte through its DFA in Python: the language filter reads a prefix.
LANGUAGE: dict[str, Any] = {"name": "language", "params": {"max_chars": 1000}}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "prepare alone": None,
    "exact + MinHash dedup": DEDUP,
    "Gopher filters + exact + MinHash dedup": {**DEDUP, "filters": FILTERS},
    "Gopher filters + language id (first 1,000 chars) + exact + MinHash dedup": {
        **DEDUP,
        "filters": [*FILTERS, LANGUAGE],
    },
}


def build_corpus(
    d: Path, min_words: int, exact: int, near: int, seed: int
) -> tuple[list[Path], dict[str, int], dict[int, int]]:
    """Files, text -> group id, group id -> size."""
    rng = random.Random(seed)
    text = "".join(
        (ROOT / "corpora" / "wikitext-2" / f).read_text(encoding="utf-8")
        for f in ("valid.txt", "test.txt")
    )
    seen: set[str] = set()
    base: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        key = normalise(para)
        if len(para.split()) >= min_words and key not in seen:
            seen.add(key)
            base.append(para)
    rng.shuffle(base)
    vocab = sorted({w for p in base[:200] for w in p.split()})
    picks = rng.sample(range(len(base)), exact + near)
    group: dict[str, int] = {}
    copies: list[str] = []
    for n, i in enumerate(picks):
        group[base[i]] = i
        if n < exact:
            copy = base[i]
        else:
            words = base[i].split()
            for _ in range(max(1, round(len(words) * rng.uniform(0.01, 0.10)))):
                at = rng.randrange(len(words))
                change = rng.choice(("replace", "delete", "insert"))
                if change == "replace":
                    words[at] = rng.choice(vocab)
                elif change == "delete" and len(words) > 1:
                    del words[at]
                else:
                    words.insert(at, rng.choice(vocab))
            copy = " ".join(words)
        copies.append(copy)
        group[copy] = i
    docs = list(base)
    for copy in copies:
        docs.insert(rng.randrange(len(docs) + 1), copy)
    paths = []
    per_file = -(-len(docs) // 4)
    for f in range(4):
        path = d / f"part{f}.txt"
        path.write_text("\n\n".join(docs[f * per_file : (f + 1) * per_file]) + "\n")
        paths.append(path)
    sizes: dict[int, int] = {}
    for g in group.values():
        sizes[g] = sizes.get(g, 0) + 1
    return paths, group, {g: 2 for g in sizes}


def recipe(paths: list[Path], tok: str, out: Path, quality: dict[str, Any] | None) -> PrepareConfig:
    return from_dict(
        PrepareConfig,
        {
            "name": "bench",
            "output": str(out),
            "tokenizer": tok,
            "source": {"paths": [str(p) for p in paths], "text_mode": "paragraphs"},
            "split": {"validation_fraction": 0.05},
            "chunk_len": 512,
            "unit_bytes": 256 << 10,
            "shard_bytes": 4 << 20,
            **({"quality": quality} if quality else {}),
        },
    )


def score(rejected_dir: Path, group: dict[str, int]) -> dict[str, Any]:
    needed = len(set(group.values()))
    left: dict[int, int] = dict.fromkeys(group.values(), 1)
    tp = removed = 0
    by_reason: dict[str, int] = {}
    for path in sorted(rejected_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            stage = r["reason"].split(":")[0]
            by_reason[stage] = by_reason.get(stage, 0) + 1
            if stage not in ("exact_duplicate", "near_duplicate"):
                continue
            removed += 1
            g = group.get(r["text"])
            if g is not None and left[g] > 0:
                left[g] -= 1
                tp += 1
    return {
        "needed": needed,
        "removed": removed,
        "true_positives": tp,
        "recall": tp / needed if needed else 1.0,
        "precision": tp / removed if removed else 1.0,
        "by_reason": by_reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--min-words", type=int, default=40)
    ap.add_argument("--exact", type=int, default=200)
    ap.add_argument("--near", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="quality-bench-"))
    try:
        paths, group, _ = build_corpus(d, args.min_words, args.exact, args.near, args.seed)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        tok = d / "tok"
        train_tokenizer(
            from_dict(
                TokenizerTrainingConfig,
                {
                    "name": "bench",
                    "output": str(tok),
                    "kind": "sp_unigram",
                    "vocab_size": 8000,
                    "source": {"paths": [str(p) for p in paths], "text_mode": "paragraphs"},
                    "num_threads": 2,
                },
            )
        )
        stages_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
        parts_s: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
        total_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
        result: dict[str, Any] = {}
        for rep in range(args.repeats):
            for name, quality in VARIANTS.items():
                out = d / f"out{rep}"
                cfg = recipe(paths, str(tok), out, quality)
                t = time.process_time()
                if quality is not None:
                    scan(cfg, workers=1)
                    t_scan = time.process_time()
                    buckets(cfg)
                    t_buckets = time.process_time()
                    clusters(cfg)
                    now = time.process_time()
                    parts_s[name].append((t_scan - t, t_buckets - t_scan, now - t_buckets))
                stages_s[name].append(time.process_time() - t)
                rejected = d / f"rejected{rep}"
                prepare(cfg, workers=1, keep_rejected=str(rejected) if quality else None)
                total_s[name].append(time.process_time() - t)
                if quality is DEDUP:
                    result = score(rejected, group)
                shutil.rmtree(out)
                shutil.rmtree(rejected, ignore_errors=True)
        plain = statistics.median(total_s["prepare alone"])
        print(f"corpus: {mb:.2f} MB, {args.exact} exact + {args.near} near copies (1-10% words)")
        print(
            f"dedup (exact + MinHash, no filters): removed {result['removed']}, "
            f"{result['needed']} needed; recall {result['recall']:.4f}, precision "
            f"{result['precision']:.4f}; by stage {result['by_reason']}"
        )
        print(
            "| run (workers 1) | stages CPU s/MB | stages x prepare | total CPU s/MB "
            "| total x prepare |"
        )
        print("|---|---|---|---|---|")
        for name in VARIANTS:
            stages, total = statistics.median(stages_s[name]), statistics.median(total_s[name])
            print(
                f"| {name} | {stages / mb:.3f} | {stages / plain:.2f} | {total / mb:.3f} | "
                f"{total / plain:.2f} |"
            )
        print("\nstages CPU s/MB (medians): scan / buckets / clusters")
        for name, parts in parts_s.items():
            if parts:
                split = [statistics.median(p[i] for p in parts) / mb for i in range(3)]
                print(f"  {name}: " + " / ".join(f"{v:.3f}" for v in split))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
