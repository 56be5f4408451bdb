"""`pretrain evaluate`: score a checkpoint written by any world size, in any number of processes
(one, on CPU, is the common case).

Recipe: verify the step and read its config (+ overrides) → consolidate the ZeRO shards into
one ordinary model in the checkpoint's precision → check the data's tokenizer is the model's →
run the evaluation loop (`pretrain.evaluate.loop`) once, or once per memory length of
``--mem-len-sweep`` → print a table (or JSON) → log the metrics to MLflow as a run linked to the
training run by tag.

Defaults reproduce the training run's own validation: the checkpoint's seq_len, mem_len,
eval_batches and precision, and as many streams as the training run had (world size x
micro-batch size).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from pretrain.checkpoint.reading import Checkpoint, load_model, open_checkpoint
from pretrain.checkpoint.tokenizer import check_same_tokenizer, model_tokenizer_hash
from pretrain.config import EngineConfig, ExperimentConfig
from pretrain.evaluate.loop import (
    LOSS_NAMES,
    EvalSettings,
    evaluate_model,
    validation_loader,
    weighted_metrics,
)
from pretrain.loader import load_manifest


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    for flag, key in (
        ("seq_len", "train.seq_len"),
        ("mem_len", "model.mem_len"),
        ("batches", "train.eval_batches"),
        ("precision", "engine.precision"),
        ("split", "data.validation_split"),
    ):
        if getattr(args, flag) is not None:
            extra.append(f"{key}={getattr(args, flag)}")
    return extra


def sweep_lengths(spec: str, config: ExperimentConfig) -> list[int]:
    if spec != "auto":
        try:
            return sorted({int(x) for x in spec.split(",") if x.strip()})
        except ValueError:
            raise ValueError(
                f"--mem-len-sweep takes comma-separated integers, got {spec!r}"
            ) from None
    base = config.model.mem_len or config.train.seq_len
    return sorted({0, base // 2, base, 2 * base, 4 * base})


def _process_group(engine: EngineConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device): a group only when a launcher started several processes,
    joined as training joins it (its timeout, restarts and teardown)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL works on the current device: one GPU per rank
    if world > 1 and not dist.is_initialized():
        from pretrain.distributed.engine import init_distributed  # DeepSpeed: only when needed

        init_distributed(engine)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def run_evaluation(
    checkpoint: Checkpoint,
    *,
    data: str | None = None,
    streams: int | None = None,
    sweep: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (config already overridden); returns the report."""
    config = checkpoint.config
    rank, world_size, device = _process_group(config.engine)
    if config.model.mem_len and config.model.position == "learned":
        raise ValueError("learned absolute positions cannot be evaluated with memory")
    # A mixture run is evaluated on each source's validation split (unless --data names one).
    sources = (
        {s.name: (s.manifest, s.weight) for s in config.data.mixture}
        if config.data.mixture and not data
        else {"": (data or config.data.manifest, 1.0)}
    )
    expected_hash = model_tokenizer_hash(checkpoint) if data else None
    for manifest_url, _ in sources.values():
        data_manifest = load_manifest(manifest_url, config.data.storage_options)
        check_same_tokenizer(data_manifest, expected_hash, f"the model of {checkpoint.directory}")
    settings = EvalSettings(
        split=config.data.validation_split,
        seq_len=config.train.seq_len,
        mem_len=config.model.mem_len,
        streams=streams or checkpoint.world_size * config.train.micro_batch_size,
        batches=config.train.eval_batches,
    )
    loaders = {  # the data is checked before the (slow) consolidation
        name: validation_loader(
            config,
            manifest_url,
            settings,
            rank=rank,
            world_size=world_size,
            expected_tokenizer_hash=expected_hash,
        )
        for name, (manifest_url, _) in sources.items()
    }
    model = load_model(checkpoint).to(device)
    lengths = (
        sorted({*sweep_lengths(sweep, config), settings.mem_len}) if sweep else [settings.mem_len]
    )
    if config.model.position == "learned" and any(lengths):
        raise ValueError("learned absolute positions cannot use memory: no sweep possible")
    rows = []
    per_source: dict[str, dict[str, float]] = {}
    for mem_len in lengths:
        current = EvalSettings(**{**asdict(settings), "mem_len": mem_len})
        results = {
            name: evaluate_model(
                model,
                loader,
                current,
                family=config.model.family,
                device=device,
                show_progress=True,
            )
            for name, loader in loaders.items()
        }
        if mem_len == settings.mem_len:
            per_source = results
        weights = {name: weight for name, (_, weight) in sources.items()}
        rows.append({"mem_len": mem_len, **weighted_metrics(results, weights)})
    loader = next(iter(loaders.values()))
    manifest_url = ", ".join(url for url, _ in sources.values())
    main = next(r for r in rows if r["mem_len"] == settings.mem_len)
    return {
        "checkpoint": str(checkpoint.directory),
        "step": checkpoint.step,
        "training_run_id": checkpoint.run_id,
        "family": config.model.family,
        "objective": LOSS_NAMES[config.model.family],
        "data": manifest_url,
        "precision": config.engine.precision,
        "processes": world_size,
        "settings": {
            **asdict(settings),
            "num_batches": min(len(loader), settings.batches or len(loader)),
        },
        "metrics": {k: v for k, v in main.items() if k != "mem_len"},
        "sweep": rows if sweep else [],
        # A mixture: each source's own figures (the metrics above are their weighted mean).
        "sources": {
            name: {"weight": sources[name][1], "data": sources[name][0], **metrics}
            for name, metrics in per_source.items()
        }
        if "" not in sources
        else {},
    }


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (
        f"{report['checkpoint']} (step {report['step']}, {report['family']}, "
        f"{report['precision']}) on {s['split']}: seq_len {s['seq_len']}, "
        f"{s['streams']} streams x {s['num_batches']} segments"
    )
    cols = ["loss", "perplexity", "accuracy", "tokens"]
    if report["family"] == "decoder":
        cols.insert(2, "bits_per_byte")
    rows = report["sweep"] or [{"mem_len": s["mem_len"], **report["metrics"]}]
    names = ["mem_len", *cols]
    lines = [head, f"loss = {report['objective']}, nats per target token", ""]
    lines.append("  ".join(f"{n:>13}" for n in names))
    for row in rows:
        cells = [f"{row['mem_len']:>13d}"]
        for n in cols:
            value = row[n]
            cells.append(f"{int(value):>13d}" if n == "tokens" else f"{value:>13.4f}")
        lines.append("  ".join(cells))
    if report.get("sources"):
        lines += ["", "per source (the table above is their weighted mean):"]
        lines.append("  ".join(f"{n:>13}" for n in ["source", "weight", *cols]))
        for name, row in report["sources"].items():
            cells = [f"{name:>13}", f"{row['weight']:>13.4g}"]
            for n in cols:
                value = row[n]
                cells.append(f"{int(value):>13d}" if n == "tokens" else f"{value:>13.4f}")
            lines.append("  ".join(cells))
    return "\n".join(lines)


def _log(checkpoint: Checkpoint, report: dict[str, Any]) -> str | None:
    from pretrain.tracking import log_evaluation

    split = report["settings"]["split"]
    metrics = {f"eval/{split}/{k}": v for k, v in report["metrics"].items()}
    for name, row in report.get("sources", {}).items():
        for k, v in row.items():
            if isinstance(v, float):
                metrics[f"eval/{split}/{name}/{k}"] = v
    for row in report["sweep"]:
        for k, v in row.items():
            if k != "mem_len":
                metrics[f"eval/{split}/mem{row['mem_len']}/{k}"] = v
    params = {f"eval.{k}": v for k, v in report["settings"].items()}
    params.update(
        {
            "eval.checkpoint": report["checkpoint"],
            "eval.data": report["data"],
            "eval.precision": report["precision"],
            "eval.processes": report["processes"],
        }
    )
    return log_evaluation(
        checkpoint.config,
        training_run_id=checkpoint.run_id,
        step=checkpoint.step,
        metrics=metrics,
        params=params,
        report=json.dumps(report, indent=1),
    )


def main(args: argparse.Namespace) -> int:
    checkpoint = open_checkpoint(args.checkpoint, args.step, _overrides(args), args.storage_options)
    report = run_evaluation(
        checkpoint, data=args.data, streams=args.streams, sweep=args.mem_len_sweep
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    if not args.no_mlflow and checkpoint.config.tracking.enabled:
        report["mlflow_run_id"] = _log(checkpoint, report)
    print(json.dumps(report, indent=1) if args.json else format_table(report), flush=True)
    return 0
