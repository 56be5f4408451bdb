"""Training throughput of our step on a GPU: tokens/s/GPU, MFU, HFU and peak memory.

What is measured: `pretrain.train.trainer.Trainer.train_step`, the step `pretrain train` runs,
on a model built by `pretrain.distributed.engine.initialize` (DeepSpeed ZeRO-3, bf16, activation
checkpointing through `train.activation_checkpointing`). Each configuration runs in a fresh
process: it builds the trainer, runs ``--warmup`` steps untimed, then ``--steps`` timed steps with
the device synchronised at both ends of the window. The tokens are synthetic (uniformly random ids):
the trainer is given a loader that serves ready-made batches through the real causal-LM
collator, so the time is the step's alone, as with a loader whose prefetch keeps up. Random
tokens change the loss, not the arithmetic. Everything else is the trainer's code: the
target-count all-reduce, the learning-rate update, forward and backward through the DeepSpeed
engine, the verdict all-reduce, the optimizer step and the gradient norm.

Conventions:

* tokens/s/GPU: tokens each rank trains on per second of the timed window (the slowest rank's
  window, so a straggler counts).
* MFU (model FLOPs utilisation) = tokens/s/GPU x model FLOPs per token / peak FLOPs per GPU.
  Model FLOPs per token are `pretrain.model.flops_per_token`, the figure the trainer logs as
  ``train/mfu``: 3 x the forward (forward + backward), 2 per multiply-accumulate of every matmul
  weight including the LM head, plus attention scores and values over the whole segment
  (counted in full although the causal mask skips half, as PaLM's MFU and llm-foundry count it).
* HFU (hardware FLOPs utilisation) also counts the forward that activation checkpointing runs
  again in the backward: the forward FLOPs of the checkpointed blocks. The LM head and the
  embedding are not checkpointed, so with every block checkpointed HFU is a little under the
  common "4 x forward" convention (4/3 of MFU): about 1.31 x MFU for the 1.3B preset. With
  checkpointing off HFU equals MFU.
* Peak FLOPs: dense bf16/fp16 from the table ``PEAK_FLOPS`` keyed by the device name, or
  ``--peak-tflops``. Unknown without an override: MFU and HFU are n/a, and the reason is printed.
* Peak memory: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the training
  steps (reset after the engine is built; the maximum over ranks). On CPU, the process's peak
  resident set instead (VmHWM), labelled as such.

Default micro-batch ("auto"): the largest power of two at or under what `pretrain.plan` says fits
with activation checkpointing off at this world size and device memory; every configuration uses
it, so the comparison isolates checkpointing. For the 1.3B preset at 2048 tokens the plan puts
model states at about 24 GiB on one GPU and activations at about 3.2 GiB per sequence, so a
141 GB H200 gets 16 (plan estimate about 75 GiB; its limit is 31) and one 80 GB H100 gets 8.

    python benchmarks/gpu_throughput.py                                 # one GPU
    torchrun --standalone --nproc_per_node=8 benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --micro-batch 8 --checkpointing on --json out.jsonl
    python benchmarks/gpu_throughput.py --smoke           # CI: tiny model on CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
# Measure this checkout's code, also where it is not pip-installed (a fresh GPU machine) and
# under torchrun, which puts only benchmarks/ on the path.
sys.path.insert(0, str(REPO))
DEFAULT_MODEL = REPO / "configs" / "model" / "decoder_1_3b.yaml"
SMOKE_MODEL = REPO / "configs" / "model" / "tiny.yaml"
GIB = 2**30

# Dense (no 2:4 sparsity) bf16 peaks from the vendor datasheets, matched in order against
# torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA
# H200"). NVL parts run at lower clocks and power than the SXM ones and have no figure here.
PEAK_FLOPS: list[tuple[str, float | None]] = [
    ("NVL", None),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # SXM; GH200 too
    ("A100", 312e12),
]

CHECKPOINTING = {"off": "off", "on": "every_layer", "every_n": "every_n"}

EPILOG = """examples:
  python benchmarks/gpu_throughput.py                       # 1.3B, seq 2048, AC off and on
  torchrun --standalone --nproc_per_node=8 benchmarks/gpu_throughput.py --json gpu.jsonl
  python benchmarks/gpu_throughput.py --micro-batch 8 --steps 50 --checkpointing on
  python benchmarks/gpu_throughput.py --peak-tflops 989 engine.overlap_comm=false
  python benchmarks/gpu_throughput.py --smoke --peak-tflops 1 --json out.jsonl   # CPU, CI
"""


# -- configuration ---------------------------------------------------------------------------


def experiment(
    model_path: Path,
    *,
    seq_len: int,
    micro_batch: int,
    precision: str,
    checkpointing: str,
    steps: int,
    overrides: Sequence[str],
) -> Any:
    """The `ExperimentConfig` of one configuration: the model preset (strictly loaded, so a bad
    key names the preset file), the benchmark's settings, then the user's dotted overrides."""
    from data_pipeline.config_yaml import apply_override, parse_override
    from data_pipeline.configuration import from_dict, load_config, to_dict
    from pretrain.config import ExperimentConfig, ModelConfig

    model = load_config(ModelConfig, model_path)
    tree: dict[str, Any] = {
        "name": "gpu_throughput",
        "model": to_dict(model),
        "train": {
            "seq_len": seq_len,
            "micro_batch_size": micro_batch,
            "grad_accum": 1,
            "max_steps": steps,
            "warmup_steps": 0,  # the learning rate does not change the arithmetic
            "activation_checkpointing": CHECKPOINTING[checkpointing],
        },
        "engine": {"zero_stage": 3, "precision": precision},
        "tracking": {"enabled": False},
    }
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return from_dict(ExperimentConfig, tree, source=f"{model_path} + benchmark settings")


def auto_micro_batch(config: Any, world_size: int, device_memory: int) -> int:
    """The largest power of two at or under `pretrain.plan`'s micro-batch for checkpointing off.

    Rounding down to a power of two leaves headroom for what the plan's model leaves out
    (allocator fragmentation, DeepSpeed's buffers)."""
    from pretrain import plan

    total, largest = plan.param_counts(config.model)
    engine = config.engine
    states = plan.model_states(
        total,
        largest,
        world_size,
        engine.zero_stage,
        plan.configured_offload(config),
        engine.precision,
    )
    fits = plan.suggest_micro_batch(config, states, device_memory, "off")
    if fits < 1:
        raise SystemExit(
            f"pretrain.plan: {config.model.n_layers} layers x d_model {config.model.d_model} at "
            f"seq {config.train.seq_len} does not fit {device_memory / GIB:.0f} GiB even at "
            "micro-batch 1; pass --micro-batch, more GPUs or engine.offload_optimizer=cpu"
        )
    return 1 << (fits.bit_length() - 1)


def recomputed_forward_flops(config: Any) -> int:
    """Forward FLOPs per token that activation checkpointing runs a second time (the checkpointed
    blocks'), from `flops_per_token` so both figures count the same way."""
    from pretrain.model import flops_per_token

    model, train = config.model, config.train
    mode = train.activation_checkpointing
    if mode == "off":
        return 0
    every = 1 if mode == "every_layer" else train.checkpoint_every_n_layers
    checkpointed = (model.n_layers + every - 1) // every  # engine.apply_activation_checkpointing
    # One block's training FLOPs: the difference made by one more layer (3 x its forward).
    one = dataclasses.replace(model, n_layers=1)
    two = dataclasses.replace(model, n_layers=2)
    per_block = flops_per_token(two, train.seq_len) - flops_per_token(one, train.seq_len)
    return checkpointed * per_block // 3


def peak_flops(
    device_name: str, precision: str, override_tflops: float | None
) -> tuple[float | None, str]:
    """(peak FLOPs/s per device or None, where it came from or why it is unknown)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if precision == "fp32":
        return None, "the table holds bf16/fp16 peaks; pass --peak-tflops for fp32"
    for key, value in PEAK_FLOPS:
        if key in device_name and value is not None:
            return value, f"table: {key!r} dense bf16"
        if key in device_name:
            break
    return None, f"no peak in the table for {device_name!r}; pass --peak-tflops"


# -- synthetic data --------------------------------------------------------------------------


class SyntheticLoader:
    """Stands in for `TrainLoader`: each step's micro-batches of random token ids, made by the
    real causal-LM collator (so keys, shapes and dtypes are the loader's), from a small pool made
    before the timed window."""

    POOL = 4  # distinct steps, cycled

    def __init__(self, config: Any, rank: int) -> None:
        import numpy as np

        from pretrain.loader.collate import CausalLMCollator

        if config.model.family != "decoder":
            raise SystemExit(
                f"the benchmark feeds causal-LM batches; family {config.model.family!r} "
                "(a non-decoder model) is not supported"
            )
        seq_len, vocab = config.train.seq_len, config.model.vocab_size
        rows_per_batch, grad_accum = config.train.micro_batch_size, config.train.grad_accum
        self.pad_id = 0  # there is no padding: every row is seq_len + 1 real tokens
        collate = CausalLMCollator(self.pad_id)
        rng = np.random.default_rng([config.data.seed, rank])  # ranks see different data
        no_starts = np.zeros(seq_len + 1, dtype=bool)

        def batch() -> dict[str, Any]:
            rows = [
                (rng.integers(0, vocab, seq_len + 1, dtype=np.int64), no_starts, 0)
                for _ in range(rows_per_batch)
            ]
            return collate(rows, seq_len)

        self.steps = [[batch() for _ in range(grad_accum)] for _ in range(self.POOL)]
        self.served = 0
        # What the trainer reads from a real loader's manifest.
        self.source = SimpleNamespace(manifest=SimpleNamespace(special_ids={"pad": self.pad_id}))

    def next_step(self) -> list[dict[str, Any]]:
        self.served += 1
        return self.steps[(self.served - 1) % self.POOL]

    def close(self) -> None:
        pass


class NoValidation:
    """Stands in for `ValidationLoader`; validation is not part of the measured step."""

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("gpu_throughput measures training steps only; validation is disabled")


def synthetic_trainer(config: Any) -> Any:
    """A real `Trainer` (real engine, real step) fed by the stand-ins above.

    A real loader opens a prepared dataset's manifest; a throughput run has none for a
    50k-token vocabulary, and token values do not change the step's cost. So the trainer is
    given its loaders instead of building them from the config."""
    import torch.distributed as dist

    from pretrain.distributed import engine as eng
    from pretrain.train.trainer import Trainer

    engine = eng.initialize(config)
    return Trainer(
        config,
        engine=engine,
        loader=cast(Any, SyntheticLoader(config, dist.get_rank())),
        validation=cast(Any, NoValidation()),
    )


# -- one configuration, in its own process ---------------------------------------------------


def reset_peak_memory(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        # Writing 5 resets the kernel's high-water mark of this process's resident set (Linux).
        # Where that fails, peak_rss_gib is the process's peak since it started.
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_gib(device: Any) -> dict[str, float | None]:
    import torch

    if device.type == "cuda":
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
            "peak_rss_gib": None,
        }
    if device.type == "cpu":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None, "peak_rss_gib": _peak_rss()}
    return {"peak_allocated_gib": None, "peak_reserved_gib": None, "peak_rss_gib": None}


def _peak_rss() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Any, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build a trainer for ``config``, run warm-up and timed steps; the JSON row (every rank)."""
    import torch
    import torch.distributed as dist

    from pretrain.distributed.engine import on_cpu
    from pretrain.model import num_params

    trainer = synthetic_trainer(config)
    device = trainer.device
    cuda = device.type == "cuda" and not on_cpu()
    gpu = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak, peak_source = peak_flops(gpu, config.engine.precision, args.peak_tflops)
    reset_peak_memory(device)  # the steps' peak, not the engine build's
    for _ in range(args.warmup):
        trainer.train_step()
        trainer.state.step += 1
    step_s: list[float] = []
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        tick = time.perf_counter()
        result = trainer.train_step()
        trainer.state.step += 1
        step_s.append(time.perf_counter() - tick)  # train_step waits for its grad norm
    synchronize(device)
    elapsed = time.perf_counter() - started
    memory = peak_memory_gib(device)
    # The slowest rank's window and the largest peak: per-GPU figures that hold for every GPU.
    # On the trainer's device, so that NCCL can reduce it.
    keys = sorted(memory)
    worst = torch.tensor(
        [elapsed, *(memory[k] or 0.0 for k in keys)], dtype=torch.float64, device=device
    )
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    elapsed, *peaks = worst.tolist()
    memory = {k: (v if memory[k] is not None else None) for k, v in zip(keys, peaks, strict=True)}
    rate = args.steps * trainer.tokens_per_step / trainer.world_size / elapsed
    model_flops = trainer.flops_per_token  # the figure the trainer's train/mfu uses
    hardware_flops = model_flops + recomputed_forward_flops(config)
    return {
        "benchmark": "gpu_throughput",
        "data": "synthetic random tokens",
        "gpu": gpu,
        "torch": torch.__version__,
        "deepspeed": _version("deepspeed"),
        "cuda": torch.version.cuda if cuda else None,
        "model": str(args.model),
        "params": num_params(config.model),
        "checkpointing": label,
        "activation_checkpointing": config.train.activation_checkpointing,
        "world_size": trainer.world_size,
        "micro_batch": config.train.micro_batch_size,
        "micro_batch_choice": args.micro_batch,
        "grad_accum": config.train.grad_accum,
        "seq_len": config.train.seq_len,
        "precision": config.engine.precision,
        "zero_stage": config.engine.zero_stage,
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_s_per_gpu": rate,
        "ms_per_step": 1000 * elapsed / args.steps,
        "ms_per_step_median": 1000 * statistics.median(step_s),
        "model_flops_per_token": model_flops,
        "hardware_flops_per_token": hardware_flops,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "mfu": rate * model_flops / peak if peak else None,
        "hfu": rate * hardware_flops / peak if peak else None,
        "memory": "cuda" if cuda else "cpu_rss" if device.type == "cpu" else "unmeasured",
        **memory,
        "last_loss": result.loss,
    }


def worker(args: argparse.Namespace) -> None:
    """One configuration (``--worker LABEL``); rank 0 writes its row to ``--row-file``."""
    import torch
    import torch.distributed as dist

    from data_pipeline.config_yaml import ConfigError

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)  # one GPU per rank, before anything is allocated

    def build(micro_batch: int) -> Any:
        try:
            return experiment(
                args.model,
                seq_len=args.seq_len,
                micro_batch=micro_batch,
                precision=args.precision,
                checkpointing=args.worker,
                steps=args.warmup + args.steps,
                overrides=args.overrides,
            )
        except ConfigError as err:
            raise SystemExit(f"error: {err}") from None

    if args.micro_batch != "auto":
        micro_batch = int(args.micro_batch)
    elif cuda:
        memory = torch.cuda.get_device_properties(local_rank).total_memory
        micro_batch = auto_micro_batch(build(1), world_size, memory)
    else:
        micro_batch = 1
    row = measure(build(micro_batch), args.worker, args)
    if dist.get_rank() == 0:
        if args.row_file:
            Path(args.row_file).write_text(json.dumps(row))
        else:  # run by hand: --worker LABEL without the driver
            print(json.dumps(row, sort_keys=True), flush=True)


# -- the driver: one process per configuration -----------------------------------------------


def run_configuration(label: str, index: int, argv: Sequence[str]) -> dict[str, Any] | None:
    """Run one configuration in a child process of this one; its row (rank 0) or None.

    A process per configuration, because a ZeRO-3 engine is not freed within its process
    (deepspeed 0.19.8 keeps the model on its module-level ``FWD_MODULE_STACK``, and more
    references after two steps, even after ``engine.destroy()``): a second engine would start
    with the first one's weights and optimizer state still allocated, and its peak memory would
    be wrong. Under torchrun every rank's driver starts its child for the same configuration
    together; the children form a new process group in torchrun's store under keys of their own,
    the way a restarted attempt does (`pretrain.distributed.process_group.attempt_init_method`)."""
    env = dict(os.environ)
    if "TORCHELASTIC_RESTART_COUNT" in env:
        env["TORCHELASTIC_RESTART_COUNT"] += f"-gpu_throughput{index}"
    with tempfile.TemporaryDirectory() as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, *argv, "--worker", label, "--row-file", str(row_file)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
            raise SystemExit(f"configuration checkpointing={label} failed ({result.returncode})")
        return json.loads(row_file.read_text()) if row_file.is_file() else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table(rows: list[dict[str, Any]]) -> str:
    cuda = rows[0]["memory"] == "cuda"
    memory = "peak alloc / reserved GiB" if cuda else "peak RSS GiB (CPU process)"
    lines = [
        f"| GPU | world size | AC | micro-batch | tokens/s/GPU | MFU | HFU | {memory} | ms/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if cuda:
            mem = f"{r['peak_allocated_gib']:.1f} / {r['peak_reserved_gib']:.1f}"
        else:
            mem = "n/a" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}"
        lines.append(
            f"| {r['gpu']} | {r['world_size']} | {r['checkpointing']} | {r['micro_batch']} | "
            f"{r['tokens_per_s_per_gpu']:,.0f} | {_percent(r['mfu'])} | {_percent(r['hfu'])} | "
            f"{mem} | {r['ms_per_step']:.1f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    peak = first["peak_flops"]
    return (
        f"gpu_throughput: {first['model']} ({_count(first['params'])} parameters), "
        f"seq {first['seq_len']}, {first['precision']}, ZeRO-{first['zero_stage']}, "
        f"{first['data']}; {first['steps']} timed steps after {first['warmup']} warm-up\n"
        f"{first['gpu']}, world size {first['world_size']}, torch {first['torch']}, "
        f"deepspeed {first['deepspeed']}, CUDA {first['cuda'] or 'n/a'}\n"
        f"peak FLOPs: {f'{peak / 1e12:g} TFLOP/s' if peak else 'unknown'} "
        f"({first['peak_flops_source']})\n\n{table(rows)}\n"
    )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


# -- entry point -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help=f"model preset YAML (default {DEFAULT_MODEL.relative_to(REPO)})"
    )
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048)")
    parser.add_argument(
        "--micro-batch",
        help="sequences per GPU per step, or 'auto' (default): the largest power of two within "
        "pretrain.plan's estimate for this GPU's memory with checkpointing off",
    )
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 30)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (default 5)")
    parser.add_argument(
        "--checkpointing",
        default="off,on",
        help="comma-separated activation checkpointing settings, one configuration each: off, "
        "on (every block) or every_n (train.checkpoint_every_n_layers); default off,on",
    )
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="peak dense TFLOP/s of one device for MFU/HFU (default: table by GPU name)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON lines here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: tiny model, seq 64, micro-batch 2, 3 steps + 1 warm-up; on CPU "
        "(DS_ACCELERATOR=cpu) unless DS_ACCELERATOR is set",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted experiment overrides, e.g. train.grad_accum=2 engine.overlap_comm=false",
    )
    parser.add_argument("--worker", choices=sorted(CHECKPOINTING), help=argparse.SUPPRESS)
    parser.add_argument("--row-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (
        {"model": SMOKE_MODEL, "seq_len": 64, "micro_batch": "2", "steps": 3, "warmup": 1}
        if args.smoke
        else {"model": DEFAULT_MODEL, "seq_len": 2048, "micro_batch": "auto", "steps": 30,
              "warmup": 5}
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.labels = [x.strip() for x in args.checkpointing.split(",") if x.strip()]
    if not args.labels or any(x not in CHECKPOINTING for x in args.labels):
        parser.error(f"--checkpointing takes off, on, every_n; got {args.checkpointing!r}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.micro_batch != "auto" and not (args.micro_batch.isdigit() and int(args.micro_batch)):
        parser.error(f"--micro-batch takes a positive integer or 'auto', got {args.micro_batch!r}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        # Inherited by the children before they import DeepSpeed: CI machines have no GPU, and
        # the check must not depend on whether one is present.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.worker:
        worker(args)
        return
    # The driver itself never touches the GPU: each configuration gets a process of its own.
    rank = int(os.environ.get("RANK", "0"))
    rows = []
    for index, label in enumerate(args.labels):
        row = run_configuration(label, index, argv)
        if row is not None:
            rows.append(row)
            print(f"checkpointing {label}: {row['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU")
    if rank != 0:
        return
    lines = [json.dumps(row, sort_keys=True) for row in rows]
    print(f"\n{report(rows)}\n" + "\n".join(lines), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main()
