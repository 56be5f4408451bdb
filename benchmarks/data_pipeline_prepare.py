"""Prepare throughput against the bare tokenizer, and peak memory against corpus size.

For one sentencepiece and one HF tokenizer, on the same text in the same run:
  * bare: `Tokenizer.encode_batch` over the corpus in one process, one thread;
  * prepare with 1 and 2 workers, end to end (read, tokenize, pack, write shards, manifest);
then peak RSS of `prepare` (parent + workers, from getrusage) on the corpus at 1x and 10x.

    python benchmarks/data_pipeline_prepare.py --corpus ../shared/data/wikitext-2/valid.txt
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_pipeline.configuration import from_dict
from data_pipeline.prepare import prepare
from data_pipeline.schemas import PrepareConfig, TokenizerTrainingConfig
from data_pipeline.tokenizer import Tokenizer, single_threaded_env
from data_pipeline.tokenizer_training import train_tokenizer


def recipe(corpus: Path, tok: str, out: Path) -> PrepareConfig:
    return from_dict(
        PrepareConfig,
        {
            "name": "bench",
            "output": str(out),
            "tokenizer": tok,
            "source": {"paths": [str(corpus)], "text_mode": "paragraphs"},
            "split": {"validation_fraction": 0.01},
            "chunk_len": 512,
            "unit_bytes": 1 << 20,
            "shard_bytes": 16 << 20,
        },
    )


def bare(tok: Tokenizer, corpus: Path) -> float:
    text = corpus.read_text(encoding="utf-8")
    docs = [p for p in text.split("\n \n") if p.strip()]
    start = time.perf_counter()
    for i in range(0, len(docs), 256):
        tok.encode_batch(docs[i : i + 256])
    return len(text.encode()) / 1e6 / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument(
        "--copies", type=int, default=4, help="corpus = this many copies (MB/s needs size)"
    )
    ap.add_argument("--memory", action="store_true", help="run the 1x/10x peak-memory measurement")
    args = ap.parse_args()
    single_threaded_env()
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    corpus = work / "corpus.txt"
    raw = Path(args.corpus).read_bytes()
    corpus.write_bytes(raw * args.copies)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus {size_mb:.1f} MB ({args.copies} x {args.corpus})")
    print(
        "| tokenizer | bare encode_batch, 1 process (MB/s) | prepare 1 worker (MB/s) "
        "| prepare 2 workers (MB/s) | ratio 2w / bare |"
    )
    print("|---|---|---|---|---|")
    for kind in ("sp_unigram", "hf_bpe"):
        tok_dir = work / kind
        cfg = from_dict(
            TokenizerTrainingConfig,
            {
                "name": kind,
                "output": str(tok_dir),
                "kind": kind,
                "vocab_size": 8000,
                "source": {"paths": [args.corpus], "text_mode": "paragraphs"},
            },
        )
        tok = train_tokenizer(cfg, log=io.StringIO())
        b = bare(tok, corpus)
        rates = []
        for workers in (1, 2):
            out = work / f"out-{kind}-{workers}"
            start = time.perf_counter()
            prepare(recipe(corpus, str(tok_dir), out), workers=workers, log=io.StringIO())
            rates.append(size_mb / (time.perf_counter() - start))
            shutil.rmtree(out)
        print(f"| {kind} | {b:.2f} | {rates[0]:.2f} | {rates[1]:.2f} | {rates[1] / b:.2f} |")
    if args.memory:
        for copies in (1, 10):
            big = work / f"mem-{copies}.txt"
            big.write_bytes(raw * args.copies * copies)
            code = (
                "import io,resource,sys;from benchmarks.data_pipeline_prepare import recipe;"
                "from data_pipeline.prepare import prepare;from pathlib import Path;"
                f"prepare(recipe(Path({str(big)!r}), {str(work / 'hf_bpe')!r}, "
                f"Path({str(work / f'm{copies}')!r})),"
                " workers=2, log=io.StringIO());"
                "s=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
                "c=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;print(s, c)"
            )
            run = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            parent, child = (int(x) / 1024 for x in run.stdout.split())
            print(
                f"memory {copies:>2}x ({big.stat().st_size / 1e6:.0f} MB): peak RSS parent "
                f"{parent:.0f} MiB, largest worker {child:.0f} MiB"
            )
    shutil.rmtree(work)
    _ = resource


if __name__ == "__main__":
    main()
