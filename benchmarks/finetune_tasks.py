"""What pretraining buys on downstream tasks: each task is fine-tuned from a pretrained
checkpoint and, with the same architecture, steps, data order and seeds, from random
initialisation (``weights=random``); both are scored by `pretrain evaluate --task` beside the
task's baseline (majority class; copying the input). Several seeds (``train.seed``: the head's
initialisation, or the whole model's from scratch, and the example order).

Tasks, built from the bundled corpora by `pretrain make-task` (train/validation share no
document), with their configs in configs/finetune/:

  speakers   who speaks a tinyshakespeare speech (4 speakers; classification)
  headings   a WikiText section's heading from its first sentence (seq2seq)
  sources    which corpus a passage comes from (tinyshakespeare or WikiText; classification)

    python benchmarks/finetune_tasks.py --init speakers=runs/shakespeare_xl/checkpoints
    python benchmarks/finetune_tasks.py --init sources=CKPT --init speakers=CKPT --steps 100 \\
        --seeds 0,1,2 train.micro_batch_size=8

Finished runs are kept (``OUT/<task>/<weights>-seed<s>/score.json``) and not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import REPO, mean_std
from pretrain.finetune.tasks import build

CORPORA = REPO / "corpora"


@dataclass(frozen=True)
class Task:
    config: Path
    inputs: tuple[str, ...]
    build_args: dict[str, int]
    overrides: tuple[str, ...] = ()


TASKS = {
    "speakers": Task(
        REPO / "configs" / "finetune" / "shakespeare_speakers.yaml",
        (str(CORPORA / "tinyshakespeare" / "input.txt"),),
        {"speakers": 4},
    ),
    "headings": Task(
        REPO / "configs" / "finetune" / "wikitext_headings.yaml",
        (str(CORPORA / "wikitext-2" / "valid.txt"), str(CORPORA / "wikitext-2" / "test.txt")),
        {},
    ),
    "sources": Task(
        REPO / "configs" / "finetune" / "shakespeare_speakers.yaml",
        (str(CORPORA / "tinyshakespeare" / "input.txt"), str(CORPORA / "wikitext-2" / "valid.txt")),
        {"per_source": 400},
    ),
}


def run(cmd: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "PYTHONUNBUFFERED": "1",
    }
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")
    return result


def finetune_and_score(
    name: str,
    task: Task,
    data: Path,
    init: str,
    weights: str,
    seed: int,
    out: Path,
    steps: int,
    overrides: list[str],
) -> dict[str, Any]:
    score = out / "score.json"
    if score.is_file():
        report: dict[str, Any] = json.loads(score.read_text())
        return report
    out.mkdir(parents=True, exist_ok=True)
    settings = [
        f"name={name}_{weights}_{seed}",
        f"init={init}",
        f"weights={weights}",
        f"task.train={data / 'train.jsonl'}",
        f"task.validation={data / 'validation.jsonl'}",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        f"train.warmup_steps={max(1, steps // 10)}",
        "train.resume=never",
        f"checkpoint.dir={out / 'checkpoints'}",
        f"checkpoint.every_steps={steps}",
        f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
        f"tracking.artifact_location={out / 'mlartifacts'}",
        *task.overrides,
        *overrides,
    ]
    python = [sys.executable, "-m", "pretrain.cli"]
    run([*python, "finetune", str(task.config), *settings], out / "finetune.log")
    result = run(
        [*python, "evaluate", str(out / "checkpoints"), "--task", "--json", "--no-mlflow"],
        out / "evaluate.log",
    )
    report = json.loads(result.stdout)
    score.write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--init",
        action="append",
        default=[],
        metavar="TASK=CHECKPOINT",
        help="the pretrained checkpoint or export per task; the tasks run",
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_finetune_tasks")
    parser.add_argument("overrides", nargs="*", help="overrides of every fine-tuning config")
    args = parser.parse_args()
    inits = dict(item.split("=", 1) for item in args.init)
    if not inits or set(inits) - set(TASKS):
        parser.error(f"--init TASK=CHECKPOINT for one or more of {', '.join(TASKS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name, init in inits.items():
        task = TASKS[name]
        data = args.out / "tasks" / name
        if not (data / "validation.jsonl").is_file():
            build(name, list(task.inputs), data, **task.build_args)
        reports = {
            weights: [
                finetune_and_score(
                    name,
                    task,
                    data,
                    init,
                    weights,
                    seed,
                    args.out / name / f"{weights}-seed{seed}",
                    args.steps,
                    args.overrides,
                )
                for seed in seeds
            ]
            for weights in ("pretrained", "random")
        }
        metrics = list(reports["pretrained"][0]["metrics"])
        baseline = reports["pretrained"][0]
        rows.append(
            f"| {name} | baseline ({baseline['baseline']}) | "
            + " | ".join(f"{baseline['baseline_metrics'][m]:.4f}" for m in metrics)
            + " |"
        )
        for weights, runs in reports.items():
            rows.append(
                f"| {name} | {weights} | "
                + " | ".join(mean_std([r["metrics"][m] for r in runs]) for m in metrics)
                + " |"
            )
        print(
            f"\n{name}: {baseline['examples']} validation "
            f"examples, {args.steps} steps, seeds {seeds}"
        )
        print(f"| task | weights | {' | '.join(metrics)} |")
        print("|---|---|" + "---|" * len(metrics))
        print("\n".join(rows[-3:]))


if __name__ == "__main__":
    main()
