"""Model speed on this machine: forward+backward tokens/s and Transformer-XL evaluation.

    python benchmarks/model_throughput.py [--repeats 5] [--quick] [--threads N]

Prints three tables:
1. our decoder (learned positions, no memory) against Hugging Face GPT-2 at the same shape with
   SDPA attention (transformers is a benchmark-only dependency);
2. Transformer-XL relative attention with mem_len = segment length against our decoder
   without memory (cost ratio);
3. evaluation with cached memory against recomputing a sliding window of the same context, at
   4x and 8x the segment length (the Transformer-XL paper's evaluation speed claim).
Repeats are interleaved (A, B, A, B, ...) and the median is reported, because the machine is
shared and its load drifts; the 1-minute load average at the start and end is printed with the
figures. On a loaded machine with as many busy processes as cores, every multi-threaded op waits
for a descheduled thread, so wall time follows the number of ops more than the work:
``--threads 1`` gives a figure that tracks the work (default: torch's own thread count).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from pretrain.config import ModelConfig
from pretrain.model import build_model
from pretrain.objectives import causal_lm_loss


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, run in turns after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_step(
    model: torch.nn.Module, x: torch.Tensor, mems: list[torch.Tensor] | None
) -> Callable[[], object]:
    def step() -> None:
        logits, _ = model(x[:, :-1], mems)
        causal_lm_loss(logits, x[:, 1:]).backward()
        model.zero_grad(set_to_none=True)

    return step


def hf_gpt2_step(config: ModelConfig, x: torch.Tensor) -> Callable[[], object]:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_seq_len,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf_config._attn_implementation = "sdpa"  # what from_pretrained(attn_implementation=) sets
    model = GPT2LMHeadModel(hf_config).train()
    print(f"HF GPT-2 attention: {model.config._attn_implementation}")

    def step() -> None:
        logits = model(x[:, :-1]).logits
        causal_lm_loss(logits, x[:, 1:]).backward()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    layers, d, heads, seq, batch = (2, 64, 4, 64, 2) if args.quick else (4, 256, 4, 128, 4)
    vocab = 8192
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shape: {layers} layers, "
        f"d_model {d}, {heads} heads, segment {seq}, batch {batch}, vocab {vocab}"
    )
    base = dict(
        family="decoder",
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        max_seq_len=8 * seq,
        bias=True,
        dropout=0.0,
    )
    ours_cfg = ModelConfig(**base)  # type: ignore[arg-type]
    xl_cfg = ModelConfig(**{**base, "position": "relative", "mem_len": seq})  # type: ignore[arg-type]
    x = torch.randint(vocab, (batch, seq + 1))
    ours = build_model(ours_cfg).train()
    xl = build_model(xl_cfg).train()
    with torch.no_grad():
        _, xl_mems = xl(torch.randint(vocab, (batch, seq)))
    fns = {"ours": train_step(ours, x, None), "xl": train_step(xl, x, xl_mems)}
    try:
        fns["hf_gpt2"] = hf_gpt2_step(ours_cfg, x)
    except ImportError as err:
        print(f"transformers not importable ({err}); GPT-2 comparison left out")
    t = interleaved(fns, args.repeats)
    tokens = batch * seq
    print("\n| forward+backward | tokens/s | ratio |\n|---|---|---|")
    print(f"| our decoder (learned, no memory) | {tokens / t['ours']:,.0f} | 1.00 |")
    if "hf_gpt2" in t:
        print(
            f"| HF GPT-2, SDPA | {tokens / t['hf_gpt2']:,.0f} | "
            f"ours/HF speed {t['hf_gpt2'] / t['ours']:.2f}x |"
        )
    print(
        f"| Transformer-XL relative, mem_len {seq} | {tokens / t['xl']:,.0f} | "
        f"cost {t['xl'] / t['ours']:.2f}x ours |"
    )

    # Evaluation: predict one segment's worth of tokens with `context` tokens of history.
    xl.eval()
    print("\n| context | cached memory, s/token | sliding window, s/token | speed-up |")
    print("|---|---|---|---|")
    for factor in (4, 8):
        cached, sliding = eval_seconds_per_token(xl, seq, factor * seq, vocab, args.repeats)
        print(
            f"| {factor * seq} ({factor}x segment) | {cached:.2e} | {sliding:.2e} | "
            f"{sliding / cached:,.0f}x |"
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


def eval_seconds_per_token(
    model: torch.nn.Module, seq: int, context: int, vocab: int, repeats: int
) -> tuple[float, float]:
    """Seconds per predicted token with `context` tokens of history: Transformer-XL feeds a
    segment of `seq` new tokens after a cached memory of `context` states; a model without
    memory recomputes a window of `context` tokens for every new token."""
    stream = torch.randint(vocab, (1, context + seq))
    with torch.no_grad():
        _, cache = model(stream[:, :context], mem_len=context)
    probes = 4  # sliding windows timed per repeat (one per predicted token)

    @torch.no_grad()
    def cached() -> None:
        model(stream[:, context:], cache, mem_len=context)

    @torch.no_grad()
    def sliding() -> None:
        for i in range(probes):
            model(stream[:, i + 1 : i + 1 + context], mem_len=0)

    t = interleaved({"cached": cached, "sliding": sliding}, repeats)
    return t["cached"] / seq, t["sliding"] / probes


if __name__ == "__main__":
    main()
