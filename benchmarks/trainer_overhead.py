"""Trainer overhead and activation checkpointing, measured on this machine in one run.

1. Overhead: tokens/s of `pretrain train` (real shards, loader, memory bookkeeping, the per-step
   all-reduces, MLflow logging) against a minimal DeepSpeed loop written here — the same model,
   the same DeepSpeed ZeRO-3 config dict, the same batch, random tokens already in memory — over
   2 processes, interleaved. Target: trainer >= 0.95x minimal. No checkpoint or validation steps
   fall inside the measured window.
2. Activation checkpointing: the trainer with it off and on every layer, at 4x the tokens per
   step so that activations dominate memory: tokens/s and the peak resident memory of rank 0.

    python benchmarks/trainer_overhead.py                 # needs runs/data/shakespeare_char
    python benchmarks/trainer_overhead.py --repeats 3 --steps 40

The corpus is the quickstart's (`data-pipeline prepare configs/data/shakespeare_char.yaml`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "configs" / "experiments" / "shakespeare_xl.yaml"
MANIFEST = REPO / "runs" / "data" / "shakespeare_char" / "manifest.json"

# A model big enough that the step, not Python, dominates: 4 layers of 256 dims, segments of 128.
SHAPE = [
    "model.d_model=256",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.max_seq_len=128",
    "model.position=learned",
    "model.mem_len=0",
    "train.seq_len=128",
    "train.micro_batch_size=8",
    "train.grad_accum=1",
    "train.warmup_steps=0",
    "engine.zero_stage=3",
    "engine.precision=bf16",
]


# Activation checkpointing is compared where activations, not the runtime, fill the memory:
# segments of 512 and micro-batches of 16 (about 4x the tokens of SHAPE per step).
LONG = ["train.seq_len=512", "model.max_seq_len=512", "train.micro_batch_size=16"]
VARIANTS: list[tuple[str, list[str]]] = [
    ("trainer", []),
    ("ac_off", LONG),
    ("ac_every_layer", [*LONG, "train.activation_checkpointing=every_layer"]),
]


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run([*cmd, *args], cwd=REPO, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return result


def minimal_worker(steps: int, warmup: int) -> None:
    """The reference: a bare DeepSpeed loop. Prints tokens/s of the timed steps (rank 0)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from data_pipeline.configuration import load_config
    from pretrain.config import ExperimentConfig
    from pretrain.distributed.engine import build_partitioned_model, deepspeed_config, param_groups
    from pretrain.objectives import causal_lm_loss

    config = load_config(ExperimentConfig, EXPERIMENT, SHAPE)
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = deepspeed_config(config, dist.get_world_size())
    model = build_partitioned_model(config, ds_config)
    optimizer = torch.optim.AdamW(param_groups(model, config.train), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    b, t = config.train.micro_batch_size, config.train.seq_len
    tokens = torch.randint(0, config.model.vocab_size, (steps + warmup, b, t + 1))
    for step in range(steps + warmup):
        if step == warmup:
            started = time.perf_counter()
        logits, _ = engine(tokens[step, :, :-1])
        engine.backward(causal_lm_loss(logits, tokens[step, :, 1:]))
        engine.step()
    elapsed = time.perf_counter() - started
    if dist.get_rank() == 0:
        rate = steps * b * t * dist.get_world_size() / elapsed
        print(json.dumps({"tokens_per_s": rate}), flush=True)


def minimal(steps: int, warmup: int) -> float:
    result = _torchrun(__file__, "--worker", str(steps), str(warmup))
    line = next(x for x in result.stdout.splitlines() if x.startswith('{"tokens_per_s"'))
    rate: float = json.loads(line)["tokens_per_s"]
    return rate


def trainer(steps: int, warmup: int, workdir: Path, extra: list[str]) -> dict[str, float]:
    """`pretrain train` with one log window of ``warmup`` steps, then one of ``steps``."""
    total = steps + warmup
    overrides = [
        *SHAPE,
        f"train.max_steps={total}",
        f"train.log_every={math.gcd(warmup, steps)}",
        f"train.eval_every={10 * total}",
        f"checkpoint.every_steps={10 * total}",
        f"checkpoint.dir={workdir / 'checkpoints'}",
        "train.resume=never",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        f"tracking.artifact_location={workdir / 'artifacts'}",
        *extra,
    ]
    result = _torchrun("-m", "pretrain.cli", "train", str(EXPERIMENT), *overrides)
    windows = [
        (int(step), float(rate.replace(",", "")))
        for step, rate in re.findall(r"step\s+(\d+)/\d+ .*?\| ([\d,]+) tok/s", result.stdout)
    ]
    timed = [rate for step, rate in windows if step > warmup]
    peak = re.findall(r"peak mem ([0-9.]+) GiB", result.stdout)
    return {
        "tokens_per_s": statistics.mean(timed),
        "peak_rss_gib": float(peak[-1]) if peak else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        minimal_worker(*args.worker)
        return
    if not MANIFEST.is_file():
        raise SystemExit(f"{MANIFEST} is missing: run the quickstart's data-pipeline commands")
    runs: dict[str, list[dict[str, float]]] = {"minimal": [], **{name: [] for name, _ in VARIANTS}}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            runs["minimal"].append({"tokens_per_s": minimal(args.steps, args.warmup)})
            for name, extra in VARIANTS:
                workdir = Path(tmp) / f"{name}{repeat}"
                runs[name].append(trainer(args.steps, args.warmup, workdir, extra))
            print(f"repeat {repeat + 1}: {json.dumps(runs)}", flush=True)
    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    peak = {k: statistics.median(r.get("peak_rss_gib", 0.0) for r in v) for k, v in runs.items()}
    load = os.getloadavg()[0]
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores (driver peak {self_peak:.2f} GiB)")
    print("| run | tokens/s (median) | ratio | rank-0 peak RSS GiB |")
    print("|---|---|---|---|")
    for name, reference in (("minimal", "minimal"), ("trainer", "minimal"), ("ac_off", "ac_off"),
                            ("ac_every_layer", "ac_off")):  # fmt: skip
        ratio = f"{median[name] / median[reference]:.3f}x vs {reference}"
        rss = f"{peak[name]:.3f}" if name != "minimal" else "-"
        print(f"| {name} | {median[name]:,.0f} | {ratio} | {rss} |")
    pairs = zip(runs["trainer"], runs["minimal"], strict=True)
    per_repeat = [t["tokens_per_s"] / m["tokens_per_s"] for t, m in pairs]
    print(f"trainer / minimal per repeat: {', '.join(f'{r:.3f}' for r in per_repeat)}")


if __name__ == "__main__":
    main()
