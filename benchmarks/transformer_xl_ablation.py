"""Transformer-XL's ablation at small scale: does segment-level recurrence (memory) with relative
positions beat the same decoder without memory, and relative beat learned absolute positions?

For each dataset, the same decoder is trained for the same steps on the same tokens in the same
contiguous order, three ways:

  (a) relative positions + memory (mem_len = segment length)  - the experiment config as written
  (b) relative positions, no memory                           - model.mem_len=0
  (c) learned absolute positions, no memory                   - model.position=learned mem_len=0
  (d) optional, not in the paper: (c) reading shuffled windows  - ... data.order=shuffled

each with several seeds (``train.seed`` and ``data.seed``: initialisation and stream plan).
Each run ends with a validation on the whole held-out split (loss in nats per token and bits per
byte); (a)'s checkpoint is also scored by `pretrain evaluate` with longer memory than it was
trained with (``--mem-len-sweep``, as the paper evaluates), and the script checks that
`evaluate` with the trained settings gives the run's own figure. Datasets: tinyshakespeare
characters (last 10% held out) and WikiText-2 (train on valid.txt, evaluate on test.txt; 8k
unigram).

    python benchmarks/transformer_xl_ablation.py                       # both datasets, 3 seeds
    python benchmarks/transformer_xl_ablation.py --datasets shakespeare --seeds 0
    python benchmarks/transformer_xl_ablation.py --jobs 2 --variants a,b --sweep 0,256
    python benchmarks/transformer_xl_ablation.py --segment 16 --variants a,b   # short segments
    python benchmarks/transformer_xl_ablation.py --segment 32 --variants a,b

``--segment N`` is the setting where memory should matter most: segments of N tokens and, for
(a), a memory of N (``train.seq_len=N model.mem_len=N``; (b) and (c) keep no memory), so a
model without memory predicts from at most N tokens of context. The steps and the batch stay
the config's (so fewer tokens are read than at the full segment); results go to
``OUT/segmentN/`` beside the full-length ones.

Finished runs are kept (``OUT/<dataset>/<variant>-seed<s>/trained.json``, and each sweep's
evaluations) and not redone, so an interrupted ablation continues where it stopped and another
``--sweep`` only evaluates again; ``--fresh`` redoes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import REPO, ensure_prepared, evaluate, mean_std, train


@dataclass(frozen=True)
class Dataset:
    experiment: Path
    tokenizer_config: str
    data_config: str
    manifest: Path


DATASETS = {
    "shakespeare": Dataset(
        REPO / "configs/experiments/xl_ablation_shakespeare.yaml",
        "configs/tokenizer/shakespeare_char.yaml",
        "configs/data/shakespeare_char.yaml",
        REPO / "runs/data/shakespeare_char/manifest.json",
    ),
    "wikitext2": Dataset(
        REPO / "configs/experiments/xl_ablation_wikitext2.yaml",
        "configs/tokenizer/wikitext2_unigram.yaml",
        "configs/data/wikitext2.yaml",
        REPO / "runs/data/wikitext2/manifest.json",
    ),
}

VARIANTS = {
    "a": ("relative + memory", []),
    "b": ("relative, no memory", ["model.mem_len=0"]),
    "c": ("learned, no memory", ["model.position=learned", "model.mem_len=0"]),
    # Not in the paper's ablation: (c) with the order a model without memory gets by default
    # (data.order auto), to tell the position encoding's share from the reading order's.
    "d": (
        "learned, no memory, shuffled windows",
        ["model.position=learned", "model.mem_len=0", "data.order=shuffled"],
    ),
}


def run_one(
    dataset: Dataset,
    variant: str,
    seed: int,
    out: Path,
    sweep: str,
    extra: list[str],
    threads: int,
    segment: list[str] | None = None,
) -> dict[str, Any]:
    """Train one variant with one seed (+ ``extra`` overrides) and evaluate it, on ``threads``
    CPU threads. The training record (``trained.json``) and each memory sweep
    (``sweep-<lengths>.json``) are kept in ``out``: neither is redone, so another ``--sweep``
    only evaluates the existing checkpoint again."""
    record = out / "trained.json"
    if record.is_file():
        trained: dict[str, Any] = json.loads(record.read_text())
    else:
        if out.exists():  # an interrupted run: start it again from scratch
            shutil.rmtree(out)
        result = train(
            dataset.experiment,
            out,
            # The segment first: a variant's own model.mem_len=0 must win over it.
            [
                *(segment or []),
                *VARIANTS[variant][1],
                f"train.seed={seed}",
                f"data.seed={seed}",
                *extra,
            ],
            threads=threads,
        )
        # Its final validation covers the whole held-out split with the trained settings.
        trained = {
            "variant": variant,
            "seed": seed,
            "loss": result.val_loss,
            "bits_per_byte": result.val_bpb,
            "ms_per_step": result.ms_per_step,
            "wall_s": result.wall_s,
        }
        record.write_text(json.dumps(trained, indent=1))
    return {
        **trained,
        "sweep": memory_sweep(out, sweep, trained["loss"], threads) if variant == "a" else [],
    }


def memory_sweep(out: Path, sweep: str, trained_loss: float, threads: int) -> list[dict[str, Any]]:
    """(a)'s checkpoint evaluated by `pretrain evaluate` with each memory length of ``sweep``
    (and the trained one, which must reproduce the run's own validation)."""
    saved = out / f"sweep-{sweep.replace(',', '_')}.json"
    if saved.is_file():
        rows: list[dict[str, Any]] = json.loads(saved.read_text())
        return rows
    report = evaluate(out / "checkpoints", "--batches", "0", "--mem-len-sweep", sweep,
                      threads=threads)  # fmt: skip
    same = report["metrics"]["loss"]
    if abs(same - trained_loss) > 1e-3:
        raise SystemExit(
            f"{out}: pretrain evaluate gives {same:.4f} with the trained settings, the run "
            f"logged {trained_loss:.4f}"
        )
    rows = [
        {"mem_len": r["mem_len"], "loss": r["loss"], "bits_per_byte": r["bits_per_byte"]}
        for r in report["sweep"]
    ]
    saved.write_text(json.dumps(rows, indent=1))
    return rows


def table(name: str, results: list[dict[str, Any]]) -> str:
    lines = [
        f"#### {name}",
        "",
        "| variant | val loss (nats/token) | bits per byte | per seed (loss) | ms/step |",
        "|---|---|---|---|---|",
    ]
    for variant, (label, _) in VARIANTS.items():
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        losses = [r["loss"] for r in rows]
        bpb = [r["bits_per_byte"] for r in rows]
        per_seed = ", ".join(f"{r['loss']:.4f}" for r in rows)
        ms = statistics.median(r["ms_per_step"] for r in rows)
        lines.append(
            f"| ({variant}) {label} | {mean_std(losses)} | {mean_std(bpb)} | {per_seed} | "
            f"{ms:.0f} |"
        )
    swept = [r for r in results if r["variant"] == "a" and r["sweep"]]
    if swept:
        lines += [
            "",
            "(a) evaluated with other memory lengths (mean over seeds):",
            "",
            "| eval mem_len | val loss | bits per byte |",
            "|---|---|---|",
        ]
        for i, point in enumerate(swept[0]["sweep"]):
            losses = [r["sweep"][i]["loss"] for r in swept]
            bpb = [r["sweep"][i]["bits_per_byte"] for r in swept]
            lines.append(f"| {point['mem_len']} | {mean_std(losses)} | {mean_std(bpb)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", default="shakespeare,wikitext2", help="of: " + ",".join(DATASETS)
    )
    parser.add_argument("--variants", default="a,b,c", help="of: a,b,c,d")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--sweep",
        default="0,128,256",
        help="memory lengths (a) is also evaluated with (0: how much it relies on memory)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "transformer_xl_ablation")
    parser.add_argument("--fresh", action="store_true", help="redo runs that already finished")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each on cores/jobs threads (several single-threaded runs use a "
        "small model's cores better than one, and suffer less from other load)",
    )
    parser.add_argument(
        "--steps", type=int, help="train this many steps instead of the config's (a quick check)"
    )
    parser.add_argument(
        "--segment",
        type=int,
        help="short segments: train.seq_len=N and, with memory, model.mem_len=N (see above)",
    )
    args = parser.parse_args()
    names = args.datasets.split(",")
    variants = args.variants.split(",")
    for name in names:
        if name not in DATASETS:
            parser.error(f"--datasets: unknown dataset {name!r} (of {', '.join(DATASETS)})")
    for name in variants:
        if name not in VARIANTS:
            parser.error(f"--variants: unknown variant {name!r} (of {', '.join(VARIANTS)})")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra, out = [], args.out
    if args.steps:  # kept apart from full-length results
        n = args.steps
        extra = [f"train.max_steps={n}", f"train.eval_every={n}", f"checkpoint.every_steps={n}"]
        extra += [f"train.warmup_steps={min(100, n // 10)}", f"train.log_every={max(1, n // 3)}"]
        out = out / f"steps{n}"
    segment = []
    if args.segment:
        segment = [f"train.seq_len={args.segment}", f"model.mem_len={args.segment}"]
        out = out / f"segment{args.segment}"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    tables = []
    for name in names:
        dataset = DATASETS[name]
        ensure_prepared(dataset.tokenizer_config, dataset.data_config, dataset.manifest)
        plan = [(seed, variant) for seed in seeds for variant in variants]

        def one(
            job: tuple[int, str], dataset: Dataset = dataset, name: str = name
        ) -> dict[str, Any]:
            seed, variant = job
            where = out / name / f"{variant}-seed{seed}"
            result = run_one(dataset, variant, seed, where, args.sweep, extra, threads, segment)
            print(
                f"{name} ({variant}) seed {seed}: loss {result['loss']:.4f}, "
                f"bpb {result['bits_per_byte']:.4f}, {result['ms_per_step']:.0f} ms/step",
                flush=True,
            )
            return result

        with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own subprocesses
            list(pool.map(one, plan))
        # Every trained variant of these seeds, also those of earlier invocations.
        results = [
            run_one(dataset, r["variant"], r["seed"], f.parent, args.sweep, extra, threads, segment)
            for f in sorted((out / name).glob("*-seed*/trained.json"))
            if (r := json.loads(f.read_text()))["seed"] in seeds
        ]
        tables.append(table(name, results))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("\n\n".join(["", *tables]))


if __name__ == "__main__":
    main()
