"""Loader throughput against raw shard reading and against a GPT-2-small training step.

    python benchmarks/loader_throughput.py [--seconds 5] [--seq-len 1024] [--micro-batch 8]

Builds byte-level shards of all of tinyshakespeare (chunk_len 1024, uint16) in a temp dir with
the loader tests' fixture builder (the data pipeline's `prepare` is not used, so the loader is
measured alone), then in the same run measures tokens/s of:

* raw: every shard read with ``tarfile`` + ``np.load``, nothing else (the I/O + decode floor);
* the `TrainLoader` for causal LM and for MLM, one rank, as the trainer calls it;
* one forward + backward step of `pretrain.model.build_model(configs/model/gpt2_small.yaml)`
  on a (micro_batch, seq_len) batch, fp32 on this CPU: the tokens/s a training step consumes.

Prints a markdown table (for docs/benchmarks.md). Targets: loader >= 0.5x raw and >= 100x step.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.config import ModelConfig  # noqa: E402
from pretrain.loader import TrainLoader  # noqa: E402
from tests.loader.shard_fixture import build_dataset  # noqa: E402


def raw_tokens_per_s(shards: list[Path], seconds: float) -> float:
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for path in shards:
            with tarfile.open(path, "r") as tar:
                for member in tar:
                    if member.name.endswith(".npy"):
                        f = tar.extractfile(member)
                        assert f is not None
                        tokens += np.load(io.BytesIO(f.read())).shape[0]
    return tokens / (time.perf_counter() - start)


def loader_tokens_per_s(manifest: Path, objective: str, args: argparse.Namespace) -> float:
    with TrainLoader(
        str(manifest),
        rank=0,
        world_size=1,
        micro_batch_size=args.micro_batch,
        grad_accum=1,
        seq_len=args.seq_len,
        objective=objective,  # type: ignore[arg-type]
        seed=0,
    ) as loader:
        loader.next_step()  # thread start and first shard opens are not steady state
        tokens, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for batch in loader.next_step():
                tokens += batch["input_ids"].numel()
        return tokens / (time.perf_counter() - start)


def train_step_tokens_per_s(args: argparse.Namespace) -> float:
    from pretrain.model.build import build_model
    from pretrain.objectives import causal_lm_loss

    cfg = ModelConfig(**yaml.safe_load((REPO / "configs/model/gpt2_small.yaml").read_text()))
    model = build_model(cfg)
    tokens = torch.randint(cfg.vocab_size, (args.micro_batch, args.seq_len + 1))
    times = []
    for _ in range(args.train_steps + 1):  # the first step warms allocators up
        start = time.perf_counter()
        logits, _ = model(tokens[:, :-1])
        causal_lm_loss(logits, tokens[:, 1:]).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return tokens[:, :-1].numel() / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_dataset(
            Path(tmp), text_bytes=10**9, chunk_len=1024, shard_samples=128, train_units=4
        )
        shards = built.shard_paths["train"]
        raw = raw_tokens_per_s(shards, args.seconds)
        causal = loader_tokens_per_s(built.manifest, "causal_lm", args)
        mlm = loader_tokens_per_s(built.manifest, "mlm", args)
    step = train_step_tokens_per_s(args)
    print(f"shards: {len(shards)} train shards, chunk_len 1024, uint16; torch {torch.__version__}")
    print(f"batch: micro_batch {args.micro_batch} x seq_len {args.seq_len}, one rank\n")
    print("| what | tokens/s | vs raw | vs GPT-2-small step |")
    print("|---|---:|---:|---:|")
    for name, value in (
        ("raw tarfile + numpy", raw),
        ("TrainLoader causal_lm", causal),
        ("TrainLoader mlm", mlm),
        ("GPT-2-small fwd+bwd step (fp32, CPU)", step),
    ):
        print(f"| {name} | {value:,.0f} | {value / raw:.2f}x | {value / step:,.0f}x |")


if __name__ == "__main__":
    main()
