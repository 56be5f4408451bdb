"""What per-row memory masking (``memory_reset``, docs/models.md) costs a Transformer-XL step.

    python benchmarks/memory_reset_cost.py [--repeats 12] [--threads 1]

One forward+backward of a decoder with memory (4 layers, d_model 256, 4 heads, segment 128 =
mem_len, batch 8), for each memory scheme (relative, rotary), three ways: no flags (as before
`memory_reset` existed), flags that are all False (what every loader batch carries: the host
decides nothing needs masking, no mask is built), and one row of eight reset (a per-row mask).
The three run in turn (A, B, C, A, B, C, ...) ``--repeats`` times on the same tokens and memory;
the table gives each one's median process CPU time as a ratio to "no flags" (CPU time, one
thread by default: on a shared machine it tracks the work rather than the scheduling).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.model import build_model

WAYS = ("no flags", "all False", "one row reset")


def step_cpu_seconds(
    model: torch.nn.Module, tokens: Tensor, mems: list[Tensor], flags: Tensor | None
) -> float:
    start = time.process_time()
    logits, _ = model(tokens, mems, memory_reset=flags)
    logits.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12, help="rounds of the three ways")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, segment = 8, 128
    print(f"decoder 4 x 256, segment {segment} = mem_len, batch {batch}, fp32, CPU time")
    print("\n| scheme | no flags, ms | all False | one row reset |\n|---|---:|---:|---:|")
    for position in ("relative", "rotary"):
        config = ModelConfig(
            family="decoder", vocab_size=256, d_model=256, n_layers=4, n_heads=4,
            position=position, mem_len=segment,
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(config)
        tokens = torch.randint(config.vocab_size, (batch, segment))
        with torch.no_grad():
            _, mems = model(tokens, None)
        none = torch.zeros(batch, dtype=torch.bool)
        one = none.clone()
        one[batch // 2] = True
        flags = dict(zip(WAYS, (None, none, one), strict=True))
        for way in WAYS:  # warm-up
            step_cpu_seconds(model, tokens, mems, flags[way])
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.repeats):
            for way in WAYS:
                times[way].append(step_cpu_seconds(model, tokens, mems, flags[way]))
        base = statistics.median(times["no flags"])
        ratios = [statistics.median(times[way]) / base for way in WAYS[1:]]
        cells = " | ".join(f"{r:.3f}x" for r in ratios)
        print(f"| {position} | {base * 1e3:.0f} | {cells} |")


if __name__ == "__main__":
    main()
