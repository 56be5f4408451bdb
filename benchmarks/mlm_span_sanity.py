"""Check that the two non-causal families learn: a small encoder trained with masked-language
modelling (15% of characters) and a small encoder-decoder trained with T5 span corruption, both on
tinyshakespeare as characters, each against the unigram baseline of its own targets.

The unigram baseline ignores its input and predicts every target by its frequency among the
targets of the batches the model was trained on (add-one smoothed over the model's vocabulary);
its accuracy is that of always guessing the most frequent target. It is scored on exactly the
targets `pretrain evaluate` scores (the same masking draw; for span corruption the decoder
targets, sentinels and EOS included). A model that does not beat it has learned nothing from the
context; the script then exits with status 1.

Each run: train through `pretrain train` (one process), evaluate the last checkpoint on the
whole validation split with `pretrain evaluate --batches 0`, count and score the baseline.

    python benchmarks/mlm_span_sanity.py                  # both families, one seed: ~8 min, 2 cores
    python benchmarks/mlm_span_sanity.py --seeds 0,1,2    # mean ± std over three seeds
    python benchmarks/mlm_span_sanity.py --out /tmp/sanity
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import (
    REPO,
    TrainResult,
    UnigramBaseline,
    checkpoint_baseline,
    ensure_prepared,
    evaluate,
    mean_std,
    train,
)
from data_pipeline.configuration import load_config
from pretrain.config import ExperimentConfig

EXPERIMENTS = {  # family -> its experiment under configs/experiments/
    "encoder": "shakespeare_mlm.yaml",
    "encoder_decoder": "shakespeare_span.yaml",
}
MANIFEST = REPO / "runs" / "data" / "shakespeare_char" / "manifest.json"


@dataclass(frozen=True)
class Run:
    family: str
    seed: int
    result: TrainResult
    steps: int
    loss: float  # whole validation split, `pretrain evaluate`
    accuracy: float
    baseline: UnigramBaseline


def objective(family: str) -> str:
    """The experiment's objective in words, from its config."""
    path = REPO / "configs" / "experiments" / EXPERIMENTS[family]
    data = load_config(ExperimentConfig, path).data
    if family == "encoder":
        return f"MLM, {data.mlm_probability:.0%} masked"
    return f"span corruption, {data.noise_density:.0%} noise, mean span {data.mean_span_length:g}"


def run(family: str, seed: int, out: Path) -> Run:
    experiment = REPO / "configs" / "experiments" / EXPERIMENTS[family]
    result = train(experiment, out, [f"train.seed={seed}"])
    # Evaluating these small models is fastest in one thread; a second one only fights other
    # jobs for the cores (3-5x slower on a loaded 2-core machine).
    report = evaluate(result.checkpoints, "--batches", "0", threads=1)
    baseline = checkpoint_baseline(Path(report["checkpoint"]), report["settings"])
    metrics = report["metrics"]
    if baseline.targets != int(metrics["tokens"]):  # the two must score the same tokens
        raise SystemExit(
            f"{family}: the baseline scored {baseline.targets} targets, the evaluation "
            f"{int(metrics['tokens'])}"
        )
    return Run(family, seed, result, report["step"], metrics["loss"], metrics["accuracy"], baseline)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds",
        default="1234",
        help="comma-separated train.seed values (initialisation; the masking draw and stream "
        "plan stay those of data.seed)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "mlm_span_sanity",
        help="one directory per run under it (checkpoints, MLflow store, train.log)",
    )
    args = parser.parse_args()
    ensure_prepared(
        "configs/tokenizer/shakespeare_char.yaml", "configs/data/shakespeare_char.yaml", MANIFEST
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[Run] = []
    for family in EXPERIMENTS:
        for seed in seeds:
            done = run(family, seed, args.out / f"{family}-seed{seed}")
            runs.append(done)
            print(
                f"{family}, seed {done.seed}: val loss {done.loss:.4f} (unigram "
                f"{done.baseline.loss:.4f}), accuracy {done.accuracy:.4f} (unigram "
                f"{done.baseline.accuracy:.4f}), {done.result.wall_s:.0f} s",
                flush=True,
            )
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"seeds: {', '.join(map(str, seeds))}; validation: the whole split\n")
    print(
        "| family | objective | steps | val loss | unigram-baseline loss "
        "| accuracy (masked tokens / span targets) | baseline accuracy | ms/step | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for family in EXPERIMENTS:
        mine = [r for r in runs if r.family == family]
        cells = [
            family,
            objective(family),
            str(mine[0].steps),
            mean_std([r.loss for r in mine]),
            mean_std([r.baseline.loss for r in mine]),
            mean_std([r.accuracy for r in mine]),
            mean_std([r.baseline.accuracy for r in mine]),
            mean_std([r.result.ms_per_step for r in mine], digits=0),
            mean_std([r.result.wall_s for r in mine], digits=0),
        ]
        print("| " + " | ".join(cells) + " |")
    failed = [r for r in runs if r.loss >= r.baseline.loss]
    for r in failed:
        print(
            f"FAILED: {r.family} (seed {r.seed}) did not beat its unigram baseline: val loss "
            f"{r.loss:.4f} >= {r.baseline.loss:.4f}",
            file=sys.stderr,
        )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
