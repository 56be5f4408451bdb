"""Reproduce nanoGPT's shakespeare-char CPU run end to end: prepare, train, validate.

nanoGPT's README trains a 4-layer, 4-head, 128-dim character model (block 64, batch 12, 2000
iterations) on the first 90% of tinyshakespeare and reports validation loss 1.88 on the last 10%,
in about 40 ms per iteration on one CPU process. This script runs the same recipe through our
pipeline (character-level sentencepiece) and trainer (DeepSpeed ZeRO-3), once in one process and
once in two processes with the same global batch, and prints a table. With --reference it also
trains nanoGPT's recipe in plain PyTorch (benchmarks/nanogpt_reference.py) for each seed, in this
process, and compares both on the whole validation split.

    python benchmarks/nanogpt_shakespeare_char.py                 # both runs, ~10 min on 2 cores
    python benchmarks/nanogpt_shakespeare_char.py --runs 1        # the single-process run only
    python benchmarks/nanogpt_shakespeare_char.py --runs 1 --seeds 0,1,2   # seed-to-seed spread
    python benchmarks/nanogpt_shakespeare_char.py --runs 1 --seeds 0,1,2 --threads 1 --reference
    python benchmarks/nanogpt_shakespeare_char.py --runs 1 --override data.window_shift=epoch
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import REPO, TrainResult, ensure_prepared, mean_std, train

EXPERIMENT = REPO / "configs" / "experiments" / "nanogpt_shakespeare_char.yaml"
MANIFEST = REPO / "runs" / "data" / "shakespeare_char" / "manifest.json"
TARGET = 1.89  # nanoGPT's 1.88, with the allowance


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, choices=(1, 2), default=2, help="1: one process only")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds (train.seed and data.seed)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "nanogpt_shakespeare_char")
    parser.add_argument(
        "--threads", type=int, help="CPU threads per process (default: the cores shared out)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra experiment setting for our runs, e.g. data.window_shift=epoch (repeatable)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also train nanoGPT's recipe in plain PyTorch for each seed and compare",
    )
    args = parser.parse_args()
    ensure_prepared(
        "configs/tokenizer/shakespeare_char.yaml", "configs/data/shakespeare_char.yaml", MANIFEST
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[tuple[int, int, TrainResult]] = []
    for processes in (1, 2)[: args.runs]:
        for seed in seeds:
            result = train(
                EXPERIMENT,
                args.out / f"{processes}proc-seed{seed}",
                # The same global batch of 12 whatever the process count.
                [
                    f"train.micro_batch_size={12 // processes}",
                    f"train.seed={seed}",
                    f"data.seed={seed}",
                    *args.override,
                ],
                processes=processes,
                threads=args.threads,
            )
            rows.append((processes, seed, result))
            print(f"{processes} process(es), seed {seed}: {result}", flush=True)
    print(
        f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print(
        "| processes | seed | val loss (nanoGPT 1.88) | <= 1.89 | ms/iteration (median) | wall s |"
    )
    print("|---|---|---|---|---|---|")
    for processes, seed, r in rows:
        ok = "yes" if r.val_loss <= TARGET else "no"
        print(
            f"| {processes} | {seed} | {r.val_loss:.4f} | {ok} | {r.ms_per_step:.0f} | "
            f"{r.wall_s:.0f} |"
        )
    for processes in (1, 2)[: args.runs]:
        losses = [r.val_loss for p, _, r in rows if p == processes]
        if len(losses) > 1:
            mean = statistics.mean(losses)
            print(
                f"{processes} process(es) over {len(losses)} seeds: {mean_std(losses)}"
                f" ({'meets' if mean <= TARGET else 'misses'} <= {TARGET} on the mean)"
            )
    if args.reference:
        ours = {seed: r.val_loss for p, seed, r in rows if p == 1}
        compare_with_reference(ours, args.threads)


def compare_with_reference(ours: dict[int, float], threads: int | None) -> None:
    """Train the plain-PyTorch reference for each seed of ``ours`` (1-process whole-split val
    losses) and print both side by side."""
    # Imported here: torch is only needed in this process for the reference.
    from benchmarks.nanogpt_reference import ReferenceResult, run_reference

    references: dict[int, ReferenceResult] = {}
    for seed in ours:
        references[seed] = run_reference(seed, threads=threads)
        print(f"reference, seed {seed}: {references[seed]}", flush=True)
    print(
        "\n| seed | ours (1 process) | reference, whole split | ours - reference "
        "| reference, nanoGPT estimator |"
    )
    print("|---|---|---|---|---|")
    for seed, loss in ours.items():
        ref = references[seed]
        print(
            f"| {seed} | {loss:.4f} | {ref.val_loss:.4f} | {loss - ref.val_loss:+.4f} | "
            f"{ref.estimated_val_loss:.4f} |"
        )
    if len(ours) > 1:
        diffs = [loss - references[seed].val_loss for seed, loss in ours.items()]
        print(
            f"| mean of {len(ours)} | {mean_std(list(ours.values()))} | "
            f"{mean_std([r.val_loss for r in references.values()])} | {mean_std(diffs)} | "
            f"{mean_std([r.estimated_val_loss for r in references.values()])} |"
        )


if __name__ == "__main__":
    main()
