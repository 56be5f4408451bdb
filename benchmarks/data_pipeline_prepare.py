"""Prepare throughput against the bare tokenizer, and peak memory against corpus size.

For sentencepiece (unigram, BPE) and HF (byte-level BPE) tokenizers, on the same text in the same
run:
  * bare: `Tokenizer.encode_batch` over the corpus's paragraphs, batches of 256, in this process
    on one thread (sentencepiece ``num_threads=1``; HF with TOKENIZERS_PARALLELISM=false and
    RAYON_NUM_THREADS=1, set before `tokenizers` is imported). Its CPU time / wall time is printed
    too: above 1.0 would mean more than one thread was busy;
  * prepare with 1 and 2 workers, end to end (plan, spawn workers, read, tokenize, pack, write
    and fsync shards, markers, manifest), each worker on one thread;
  * the CPU time of each (this process + finished children, getrusage), which unlike MB/s does
    not depend on how busy the machine is: prepare's overhead over the bare tokenizer;
  * bare on UTF-8 bytes: the same through `Tokenizer.encode_utf8_batch`, which prepare calls
    with the bytes it read (sentencepiece encodes them as they are; HF gets them decoded);
measured ``--repeats`` times, interleaved (bare, 1 worker, 2 workers, bare, ...), reporting the
median and the 1-minute load average around each measurement. Then peak RSS of `prepare
--workers 2` on the corpus at 1x and 10x: the parent's VmHWM (read in the process itself) and the
largest worker VmHWM (polled every 0.1 s from /proc). Not ``ru_maxrss``: a child started by
vfork/exec inherits its parent's high-water mark, so it would report this script's own memory.

    PYTHONPATH=. python benchmarks/data_pipeline_prepare.py --copies 100 --repeats 3  # throughput
    PYTHONPATH=. python benchmarks/data_pipeline_prepare.py --copies 40 --memory       # + memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def bare(tok: Tokenizer, corpus: Path, utf8: bool = False) -> tuple[float, float]:
    """(MB/s, CPU seconds / wall seconds) of encoding the corpus on one thread: the texts as
    str (`encode_batch`), or with ``utf8`` as UTF-8 bytes (`encode_utf8_batch`, what prepare
    calls: sentencepiece then skips its own str -> UTF-8 conversion)."""
    text = corpus.read_text(encoding="utf-8")
    docs: list[Any] = [p for p in text.split("\n \n") if p.strip()]
    encode: Any = tok.encode_batch
    if utf8 and hasattr(tok, "encode_utf8_batch"):  # (absent before it was added: str)
        docs, encode = [d.encode() for d in docs], tok.encode_utf8_batch
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(docs), 256):
        encode(docs[i : i + 256], num_threads=1)
    wall = time.perf_counter() - start
    return len(text.encode()) / 1e6 / wall, (time.process_time() - cpu) / wall


# Run in a fresh interpreter: the parent's own peak (VmHWM) and the workers' peaks.
MEMORY_PROBE = """
import io, json, os, sys, threading, time
from pathlib import Path
from benchmarks.data_pipeline_prepare import recipe
from data_pipeline.prepare import prepare

def hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0

peaks, done = {}, threading.Event()
def poll():
    me = str(os.getpid())
    while not done.is_set():
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] != me:
                        continue
            except (OSError, IndexError):
                continue
            peaks[pid] = max(peaks.get(pid, 0), hwm(pid))
        time.sleep(0.1)
threading.Thread(target=poll, daemon=True).start()
corpus, tok, out = sys.argv[1:4]
prepare(recipe(Path(corpus), tok, Path(out)), workers=2)
done.set()
print(json.dumps({"parent": hwm("self"), "workers": sorted(peaks.values())}))
"""


def load() -> float:
    return os.getloadavg()[0]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the prepare workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", default="corpora/wikitext-2/valid.txt")
    ap.add_argument(
        "--copies", type=int, default=4, help="corpus = this many copies (MB/s needs size)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median shown)")
    ap.add_argument("--kinds", default="sp_unigram,sp_bpe,hf_bpe", help="tokenizer kinds to train")
    ap.add_argument("--memory", action="store_true", help="run the 1x/10x peak-memory measurement")
    ap.add_argument("--memory-kind", default="sp_unigram", help="tokenizer of the memory runs")
    ap.add_argument(
        "--memory-copies", type=int, default=10, help="copies of --corpus in the 1x memory corpus"
    )
    args = ap.parse_args()
    single_threaded_env()
    os.environ["RAYON_NUM_THREADS"] = "1"
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    corpus = work / "corpus.txt"
    raw = Path(args.corpus).read_bytes()
    corpus.write_bytes(raw * args.copies)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus {size_mb:.1f} MB ({args.copies} x {args.corpus}); {os.cpu_count()} CPUs")
    rows: list[str] = []
    cpu_rows: list[str] = []
    for kind in args.kinds.split(","):
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
        tok = train_tokenizer(cfg)
        runs: dict[str, list[float]] = {
            k: []
            for k in (
                *("bare", "bare_utf8", "cpu", "w1", "w2", "ratio", "ratio_utf8"),
                *("cpu_bare", "cpu_w1", "cpu_w2"),
            )
        }
        loads: list[float] = []
        for rep in range(args.repeats):
            loads.append(load())
            used = cpu_seconds()
            rate, cpu = bare(tok, corpus)
            runs["cpu_bare"].append((cpu_seconds() - used) * 1000 / size_mb)
            runs["bare"].append(rate)
            runs["cpu"].append(cpu)
            runs["bare_utf8"].append(bare(tok, corpus, utf8=True)[0])
            for workers in (1, 2):
                out = work / f"out-{kind}-{workers}"
                start, used = time.perf_counter(), cpu_seconds()
                prepare(recipe(corpus, str(tok_dir), out), workers=workers)
                runs[f"w{workers}"].append(size_mb / (time.perf_counter() - start))
                runs[f"cpu_w{workers}"].append((cpu_seconds() - used) * 1000 / size_mb)
                shutil.rmtree(out)
            loads.append(load())
            runs["ratio"].append(runs["w2"][-1] / rate)
            runs["ratio_utf8"].append(runs["w2"][-1] / runs["bare_utf8"][-1])
            print(
                f"  {kind} repeat {rep}: bare {rate:.2f} MB/s (cpu/wall {cpu:.2f}), "
                f"bare on UTF-8 bytes {runs['bare_utf8'][-1]:.2f}, "
                f"1 worker {runs['w1'][-1]:.2f}, 2 workers {runs['w2'][-1]:.2f}, "
                f"ratio {runs['ratio'][-1]:.2f}, load {loads[-2]:.1f}-{loads[-1]:.1f}",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append(
            f"| {kind} | {med['bare']:.2f} | {med['cpu']:.2f} | {med['bare_utf8']:.2f} | "
            f"{med['w1']:.2f} | {med['w2']:.2f} | {med['ratio']:.2f} ({min(runs['ratio']):.2f}-"
            f"{max(runs['ratio']):.2f}) | {med['ratio_utf8']:.2f} | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )
        cpu_rows.append(
            f"| {kind} | {med['cpu_bare']:.1f} | {med['cpu_w1']:.1f} | {med['cpu_w2']:.1f} | "
            f"{med['cpu_bare'] / med['cpu_w2']:.2f} | {2 * med['cpu_bare'] / med['cpu_w2']:.2f} |"
        )
    print(
        f"\nmedians of {args.repeats} interleaved repeats; ratio = prepare 2 workers / bare of "
        "the same repeat (median, range)"
    )
    print(
        "| tokenizer | bare encode_batch, 1 thread (MB/s) | bare cpu/wall "
        "| bare on UTF-8 bytes (MB/s) | prepare 1 worker (MB/s) | prepare 2 workers (MB/s) "
        "| ratio 2w / bare | ratio 2w / bare on bytes | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        "\nCPU time per MB (this process + prepare workers, getrusage; medians): what prepare "
        "costs over the bare tokenizer whatever the load. 'ideal 2w ratio' = the 2-worker ratio "
        "on two otherwise idle cores = 2 x bare / prepare(2 workers)."
    )
    print(
        "| tokenizer | bare (CPU ms/MB) | prepare 1 worker (CPU ms/MB) "
        "| prepare 2 workers (CPU ms/MB) | bare / prepare 2w | ideal 2w ratio |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(cpu_rows))
    if args.memory:
        kind = args.memory_kind
        if not (work / kind).exists():
            sys.exit(f"--memory-kind {kind} is not among --kinds")
        for copies in (1, 10):
            big = work / f"mem-{copies}.txt"
            with open(big, "wb") as f:  # never the whole corpus in this process's memory
                for _ in range(args.memory_copies * copies):
                    f.write(raw)
            run = subprocess.run(
                [sys.executable, "-c", MEMORY_PROBE, str(big), str(work / kind), str(work / "m")],
                capture_output=True,
                text=True,
                check=True,
            )
            shutil.rmtree(work / "m")
            got = json.loads(run.stdout)
            print(
                f"memory {kind} {copies:>2}x ({big.stat().st_size / 1e6:.0f} MB): peak RSS "
                f"parent {got['parent'] / 1024:.0f} MiB, workers "
                f"{', '.join(f'{w / 1024:.0f}' for w in got['workers'])} MiB"
            )
            big.unlink()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
