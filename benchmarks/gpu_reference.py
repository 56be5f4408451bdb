"""The same-machine reference for our step's throughput: the 1.3B decoder in a minimal PyTorch loop.

No DeepSpeed, no trainer: the model, bf16 autocast, `F.cross_entropy`, backward, gradient
clipping and a fused AdamW step, the way nanoGPT's train.py runs a model on one GPU.

The model is built by `pretrain.model.build_model` from the same preset, not by a separate
minimal GPT. So the two runs do the same arithmetic (rotary positions, RMSNorm, SwiGLU, untied
LM head, and attention through `F.scaled_dot_product_attention` with ``is_causal``, which our
`SelfAttention` already calls) and the ratio of their tokens/s measures what ZeRO-3, the
trainer's collectives and its bookkeeping cost, not a difference of model code. A hand-written
GPT would add a second variable: a faster or slower block would move the ratio for reasons that
have nothing to do with the engine.

What differs on purpose, as in a minimal loop: fp32 weights with bf16 autocast (DeepSpeed keeps
bf16 weights and fp32 master copies in the optimizer), the whole unpartitioned model on one
device, `torch.optim.AdamW(fused=True)` where torch has it for the device (our engine runs
torch's default AdamW through ZeRO-3), no loss normalisation across ranks, no gradient-norm
read-back. Same tokens (uniformly random ids), micro-batch, sequence length, FLOPs count
(`pretrain.model.flops_per_token`) and peak FLOPs table as `benchmarks/gpu_throughput.py`.

    python benchmarks/gpu_reference.py --micro-batch 16                 # 1.3B, seq 2048, GPU
    python benchmarks/gpu_reference.py --smoke                          # tiny model, CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code, installed or not

from benchmarks.gpu_throughput import (  # noqa: E402  (after the path is set)
    DEFAULT_MODEL,
    GIB,
    SMOKE_MODEL,
    experiment,
    peak_flops,
)


def fused_adamw(params: Any, device: Any, lr: float) -> tuple[Any, bool]:
    """torch's AdamW with ``fused=True``; on a device whose torch has no fused kernel, the
    default implementation (and False, so the row says so)."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), fused=True), True
    except (RuntimeError, ValueError):
        if device.type == "cuda":
            raise
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95)), False


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from pretrain.model import build_model, num_params

    config = experiment(
        args.model,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        precision=args.precision,
        checkpointing="off",
        steps=args.warmup + args.steps,
        overrides=args.overrides,
    )
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(config.model).to(device)
    model.train()
    optimizer, fused = fused_adamw(model.parameters(), device, config.train.lr)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if args.precision == "fp16":
        raise SystemExit("the reference runs bf16 or fp32; fp16 would need a GradScaler")
    vocab, b, t = config.model.vocab_size, args.micro_batch, args.seq_len
    generator = torch.Generator(device="cpu").manual_seed(0)
    pool = [torch.randint(0, vocab, (b, t + 1), generator=generator) for _ in range(4)]
    pool = [x.to(device) for x in pool]

    def step(tokens: Any) -> float:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = model(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.float().view(-1, vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()) if not cuda else 0.0  # no host sync per step on a GPU

    for i in range(args.warmup):
        step(pool[i % len(pool)])
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step_s: list[float] = []
    started = time.perf_counter()
    for i in range(args.steps):
        tick = time.perf_counter()
        step(pool[i % len(pool)])
        step_s.append(time.perf_counter() - tick)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    from pretrain.model import flops_per_token

    gpu = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak, source = peak_flops(gpu, args.precision, args.peak_tflops)
    rate = args.steps * b * t / elapsed
    flops = flops_per_token(config.model, t)
    return {
        "benchmark": "gpu_reference",
        "model_builder": "pretrain.model.build_model",
        "model": str(args.model),
        "params": num_params(config.model),
        "gpu": gpu,
        "torch": torch.__version__,
        "precision": args.precision,
        "autocast": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else None,
        "fused_adamw": fused,
        "micro_batch": b,
        "seq_len": t,
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_s_per_gpu": rate,
        "ms_per_step": 1000 * elapsed / args.steps,
        "ms_per_step_median": 1000 * statistics.median(step_s),
        "model_flops_per_token": flops,
        "peak_flops": peak,
        "peak_flops_source": source,
        "mfu": rate * flops / peak if peak else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if cuda else None,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model preset (default: the 1.3B decoder)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048)")
    parser.add_argument("--micro-batch", type=int, help="sequences per step (default 8)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s for MFU")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the JSON row here too")
    parser.add_argument("--smoke", action="store_true", help="tiny model, seq 64, on the CPU")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = (
        {"model": SMOKE_MODEL, "seq_len": 64, "micro_batch": 2, "steps": 3, "warmup": 1}
        if args.smoke
        else {"model": DEFAULT_MODEL, "seq_len": 2048, "micro_batch": 8, "steps": 20, "warmup": 5}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.cpu = args.cpu or args.smoke
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1:
        parser.error("--steps and --micro-batch must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    row = measure(args)
    line = json.dumps(row, sort_keys=True)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
