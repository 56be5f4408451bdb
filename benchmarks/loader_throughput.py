"""Loader throughput against raw shard reading and against a GPT-2-small training step.

    python benchmarks/loader_throughput.py [--seconds 3] [--repeats 3] [--seq-len 1024]
        [--span-seq-len 512] [--micro-batch 8] [--train-steps 1] [--orders contiguous,shuffled]
        [--mixture] [--mixture-blocks 0] [--block-steps 130]

Builds byte-level shards of all of tinyshakespeare (chunk_len 1024, uint16) in a temp dir with
the loader tests' fixture builder (the data pipeline's `prepare` is not used, so the loader is
measured alone), then in the same run measures tokens/s of:

* raw: every shard read with ``tarfile`` + ``np.load``, nothing else (the I/O + decode floor);
* the `TrainLoader` for causal LM, MLM and span corruption, one rank, as the trainer calls it
  (span at ``--span-seq-len``: the fixture's 32 sentinels cover T5's 512, not 1024), in each
  ``--orders`` (``DataConfig.order``: contiguous, shuffled);
* one forward + backward step of `pretrain.model.build_model(configs/model/gpt2_small.yaml)`
  on a (micro_batch, seq_len) batch, fp32 on this CPU: the tokens/s a training step consumes
  (``--train-steps 0`` leaves it out; it takes minutes on a small CPU);
* with ``--mixture``: a `MixtureLoader` for causal LM over 3 sources, weights 0.5/0.3/0.2,
  against the single-source causal LM loader of the first order in the same repeat (target
  >= 0.9x), twice: sources that are copies of the single source's dataset (built apart: the
  cost of mixing itself), and sources that are the corpus's three thirds (each a third of the
  size: every stream starts each epoch inside a shard and reads past its earlier samples, tar
  having no index, so small sources pay that per-epoch cost three times as often).
* with ``--mixture-blocks N`` too: those loaders and the single-source one, plus a control (the
  single source again with another seed) and a `TrainLoader` over the first third alone (what
  small sources cost without any mixing), all open at once and run in turn for N rounds of
  ``--block-steps`` steps each (the order rotating every round), CPU time per block: each
  loader's median per-round ratio to the single-source loader. Loaders that run side by side
  in one process see the same machine; the control's ratio shows how far two runs of the very
  same loader differ, i.e. the noise of the figure.

The raw and loader measurements are interleaved (raw, causal, mlm, span, raw, causal, ...)
``--repeats`` times so that load from other processes hits them alike; the table gives medians,
each loader's ratio is the median of its per-repeat ratios to the raw figure of the same repeat,
and the load average is printed before and after. Beside wall-clock tokens/s it reports tokens
per CPU-second of the process (``time.process_time``, all threads), which other processes'
load disturbs much less. Targets: loader >= 0.5x raw and >= 100x step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.config import DataConfig, MixtureSource, ModelConfig  # noqa: E402
from pretrain.loader import MixtureLoader, TrainLoader  # noqa: E402
from tests.loader.shard_fixture import build_dataset  # noqa: E402

OBJECTIVES = ("causal_lm", "mlm", "span")


Rate = tuple[float, float]  # (tokens per wall second, tokens per CPU second of this process)


def _rates(tokens: int, wall0: float, cpu0: float) -> Rate:
    return tokens / (time.perf_counter() - wall0), tokens / (time.process_time() - cpu0)


def raw_tokens_per_s(shards: list[Path], seconds: float) -> Rate:
    tokens, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for path in shards:
            with tarfile.open(path, "r") as tar:
                for member in tar:
                    if member.name.endswith(".npy"):
                        f = tar.extractfile(member)
                        assert f is not None
                        tokens += np.load(io.BytesIO(f.read())).shape[0]
    return _rates(tokens, start, cpu)


def loader_tokens_per_s(
    manifest: Path, objective: str, seq_len: int, order: str, args: argparse.Namespace
) -> Rate:
    """Tokens of the stream consumed per second (micro_batch x seq_len per micro-batch); the
    CPU figure counts every thread of the process (the prefetch thread does the work)."""
    with TrainLoader(
        str(manifest),
        rank=0,
        world_size=1,
        micro_batch_size=args.micro_batch,
        grad_accum=1,
        seq_len=seq_len,
        objective=objective,  # type: ignore[arg-type]
        seed=0,
        data_config=DataConfig(order=order),  # type: ignore[arg-type]
    ) as loader:
        for _ in range(args.warmup_steps):  # thread start, first shard opens: not steady state
            loader.next_step()
        tokens, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < args.seconds:
            tokens += len(loader.next_step()) * args.micro_batch * seq_len
        return _rates(tokens, start, cpu)


def mixture_tokens_per_s(
    sources: list[MixtureSource], order: str, args: argparse.Namespace
) -> Rate:
    """As `loader_tokens_per_s` for causal LM, through a `MixtureLoader`."""
    with MixtureLoader(
        sources,
        rank=0,
        world_size=1,
        micro_batch_size=args.micro_batch,
        grad_accum=1,
        seq_len=args.seq_len,
        objective="causal_lm",
        seed=0,
        data_config=DataConfig(order=order),  # type: ignore[arg-type]
    ) as loader:
        for _ in range(args.warmup_steps):  # a mixture opens each source's streams lazily
            loader.next_step()
        tokens, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < args.seconds:
            tokens += len(loader.next_step()) * args.micro_batch * args.seq_len
        return _rates(tokens, start, cpu)


def alternating_cpu_ratios(
    single: Path, mixtures: dict[str, list[MixtureSource]], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Per round, each loader's tokens per CPU-second over the single-source loader's (see the
    module's doc, ``--mixture-blocks``)."""
    common: dict[str, Any] = {
        "rank": 0,
        "world_size": 1,
        "micro_batch_size": args.micro_batch,
        "grad_accum": 1,
        "seq_len": args.seq_len,
        "objective": "causal_lm",
        "seed": 0,
        "data_config": DataConfig(order="contiguous"),
    }
    with contextlib.ExitStack() as stack:
        loaders: dict[str, TrainLoader | MixtureLoader] = {
            "single": stack.enter_context(TrainLoader(str(single), **common)),
            "control": stack.enter_context(TrainLoader(str(single), **{**common, "seed": 1})),
        }
        for kind, sources in mixtures.items():
            loaders[kind] = stack.enter_context(MixtureLoader(sources, **common))
        if "thirds" in mixtures:  # one third alone: what small sources cost without mixing
            third = mixtures["thirds"][0].manifest
            loaders["one third"] = stack.enter_context(TrainLoader(third, **common))
        for loader in loaders.values():
            for _ in range(args.warmup_steps):
                loader.next_step()
        names = list(loaders)
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.mixture_blocks):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                start = time.process_time()
                for _ in range(args.block_steps):
                    loaders[name].next_step()
                cpu[name].append(time.process_time() - start)
    return {
        name: [s / t for s, t in zip(cpu["single"], times, strict=True)]
        for name, times in cpu.items()
        if name != "single"
    }


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


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--span-seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=1)
    parser.add_argument("--orders", default="contiguous,shuffled", help="DataConfig.order list")
    parser.add_argument("--mixture", action="store_true", help="add a 3-source mixture row")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps before timing")
    parser.add_argument("--shard-samples", type=int, default=128, help="samples per shard")
    parser.add_argument(
        "--mixture-blocks", type=int, default=0, help="rounds of the alternating CPU comparison"
    )
    parser.add_argument("--block-steps", type=int, default=130, help="steps per loader per round")
    args = parser.parse_args()
    orders = args.orders.split(",")
    variants = [(objective, order) for order in orders for objective in OBJECTIVES]
    torch.manual_seed(0)
    load_before = _load()
    runs: dict[str, list[Rate]] = {"raw": [], **{f"{o} {order}": [] for o, order in variants}}
    with tempfile.TemporaryDirectory() as tmp:
        built = build_dataset(
            Path(tmp),
            text_bytes=10**9,
            chunk_len=1024,
            shard_samples=args.shard_samples,
            train_units=4,
        )
        shards = built.shard_paths["train"]
        mixtures: dict[str, list[MixtureSource]] = {}
        if args.mixture:
            third = len(built.samples["train"]) * 1024 // 3  # ~ bytes (byte-level tokens)
            for kind in ("copies", "thirds"):
                mixtures[kind] = []
                for i, (name, weight) in enumerate((("a", 0.5), ("b", 0.3), ("c", 0.2))):
                    part = build_dataset(
                        Path(tmp) / kind / name,
                        text_bytes=10**9 if kind == "copies" else third,
                        text_start=0 if kind == "copies" else i * third,
                        chunk_len=1024,
                        shard_samples=args.shard_samples,
                        train_units=4 if kind == "copies" else 1,
                    )
                    mixtures[kind].append(MixtureSource(name, str(part.manifest), weight))
                runs[f"mixture {kind}"] = []
        for _ in range(args.repeats):
            runs["raw"].append(raw_tokens_per_s(shards, args.seconds))
            for objective, order in variants:
                seq_len = args.span_seq_len if objective == "span" else args.seq_len
                runs[f"{objective} {order}"].append(
                    loader_tokens_per_s(built.manifest, objective, seq_len, order, args)
                )
            for kind, sources in mixtures.items():
                runs[f"mixture {kind}"].append(mixture_tokens_per_s(sources, orders[0], args))
        alternating = (
            alternating_cpu_ratios(built.manifest, mixtures, args)
            if mixtures and args.mixture_blocks > 0
            else {}
        )
    load_after = _load()
    step = train_step_tokens_per_s(args) if args.train_steps > 0 else float("nan")
    print(f"shards: {len(shards)} train shards, chunk_len 1024, uint16; torch {torch.__version__}")
    print(
        f"batch: micro_batch {args.micro_batch} x seq_len {args.seq_len} (span {args.span_seq_len})"
        f", one rank; {args.repeats} interleaved repeats of {args.seconds:g} s, medians"
    )
    print(f"load average (1/5/15 min): before {load_before}, after {load_after}\n")
    print(
        "| what | tokens/s (median) | per repeat | vs raw (median) | vs GPT-2-small step "
        "| tokens per CPU-s (median) | vs raw, CPU |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    rows = [("raw tarfile + numpy", "raw")]
    for objective, order in variants:
        span = f", seq_len {args.span_seq_len}" if objective == "span" else ""
        rows.append((f"TrainLoader {objective} ({order}{span})", f"{objective} {order}"))
    for kind in mixtures:
        what = f"MixtureLoader causal_lm, 3 sources ({kind}) 0.5/0.3/0.2 ({orders[0]})"
        rows.append((what, f"mixture {kind}"))
    for name, key in rows:
        wall = [w for w, _ in runs[key]]
        cpu = [c for _, c in runs[key]]
        pairs = zip(runs[key], runs["raw"], strict=True)
        ratios = [(w / rw, c / rc) for (w, c), (rw, rc) in pairs]
        each = ", ".join(f"{v / 1e6:.2f}M" for v in wall)
        print(
            f"| {name} | {np.median(wall):,.0f} | {each} "
            f"| {np.median([r for r, _ in ratios]):.2f}x | {np.median(wall) / step:,.0f}x "
            f"| {np.median(cpu):,.0f} | {np.median([r for _, r in ratios]):.2f}x |"
        )
    print(f"| GPT-2-small fwd+bwd step (fp32, CPU) | {step:,.0f} | | | 1x | | |")
    for kind in mixtures:
        single = runs[f"causal_lm {orders[0]}"]
        ratios_of = list(zip(runs[f"mixture {kind}"], single, strict=True))
        wall = np.median([m[0] / s[0] for m, s in ratios_of])
        cpu = np.median([m[1] / s[1] for m, s in ratios_of])
        print(
            f"mixture ({kind}) vs single-source causal_lm ({orders[0]}), median of per-repeat "
            f"ratios: {wall:.2f}x wall, {cpu:.2f}x per CPU-s (target >= 0.9x)"
        )
    if alternating:
        print(
            f"\nalternating in one process ({args.mixture_blocks} rounds of {args.block_steps} "
            "steps, contiguous), tokens per CPU-s / the single-source loader's:"
        )
        for name, per_round in alternating.items():
            what = {
                "control": "single source, seed 1 (control)",
                "one third": "single source over the first third (TrainLoader)",
            }.get(name, f"mixture ({name})")
            each = ", ".join(f"{r:.2f}" for r in per_round)
            print(f"  {what}: median {np.median(per_round):.2f}x  [{each}]")


if __name__ == "__main__":
    main()
