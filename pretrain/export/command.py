"""`pretrain export`: a checkpoint as a standalone model directory.

Recipe: verify the step → consolidate the ZeRO shards (fp32 master weights) → find the
tokenizer and check its hash against the dataset's → write the native format
(`pretrain.pretrained`) or the HF format (`pretrain.export.hf`: GPT-2 / Llama where exact, else
our generated modelling code; the tokenizer for AutoTokenizer by `pretrain.export.hf_tokenizer`)
→ optionally log it as an MLflow model (`pretrain.export.mlflow_model`) and register it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint.reading import (
    Checkpoint,
    consolidated_state_dict,
    model_from_state,
    open_checkpoint,
)
from pretrain.checkpoint.tokenizer import (
    data_manifest_url,
    manifest_tokenizer,
    training_manifest,
)
from pretrain.export.hf import save_hf
from pretrain.export.hf_tokenizer import write_hf_tokenizer
from pretrain.model.build import DTYPES
from pretrain.pretrained import INFO_FILE, TOKENIZER_DIR, save_pretrained

logger = logging.getLogger(__name__)


def provenance(checkpoint: Checkpoint, tokenizer_hash: str) -> dict[str, Any]:
    return {
        "name": checkpoint.saved_config.name,
        "checkpoint": str(checkpoint.directory),
        "step": checkpoint.step,
        "training_world_size": checkpoint.world_size,
        "training_run_id": checkpoint.run_id,
        "dataset_fingerprint": checkpoint.marker.get("fingerprint"),
        "tokenizer_hash": tokenizer_hash,
    }


def check_output(out: Path) -> None:
    """``out`` is a directory, or can become one: refused before the slow consolidation."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"the export folder {out} is a file")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"the export folder {out} cannot be written ({parent} is not writable)")


def export(
    checkpoint: Checkpoint,
    out: str | Path,
    *,
    fmt: str = "native",
    dtype: str = "fp32",
    tokenizer_path: str | None = None,
    max_shard_size: str = "5GB",
) -> dict[str, Any]:
    """Write ``checkpoint`` under ``out``; returns what export.json records."""
    config = checkpoint.config
    check_output(Path(out))
    options = checkpoint.config.data.storage_options  # given again: never saved with a step
    manifest = training_manifest(data_manifest_url(checkpoint.saved_config.data), options)
    tokenizer = manifest_tokenizer(manifest, tokenizer_path, options)
    # Consolidation reads every rank's ZeRO shards and is the slow part of a large export: say
    # what is happening and how long it took (one call, so there is no finer progress to show).
    started = time.monotonic()
    logger.info("consolidating step %d from its DeepSpeed shards ...", checkpoint.step)
    state = consolidated_state_dict(checkpoint)
    logger.info(
        "consolidated %s parameters in %.1f s; writing the %s export to %s",
        f"{sum(t.numel() for t in state.values()):,}",
        time.monotonic() - started,
        fmt,
        out,
    )
    info = provenance(checkpoint, tokenizer.hash)
    out = Path(out)
    if fmt == "native":
        model = model_from_state(config, state, DTYPES[dtype])
        save_pretrained(model, out, tokenizer_dir=tokenizer.path, info=info)
        return {"format": "mnemos", **info}
    arch = save_hf(
        config.model,
        state,
        out,
        special_ids=manifest.special_ids,
        dtype=DTYPES[dtype],
        max_shard_size=max_shard_size,
    )
    # The native tokenizer artifact travels along (our `Tokenizer` loads it); HF tokenizers'
    # own file also serves transformers directly.
    shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
    shutil.copytree(tokenizer.path, out / TOKENIZER_DIR)
    write_hf_tokenizer(
        out, Tokenizer.load(str(tokenizer.path)), model_max_length=config.model.max_seq_len
    )
    notes = []
    if arch == "mnemos":
        notes.append("load with trust_remote_code=True (modelling code in this folder)")
    record = {"format": "hf", "architecture": arch, "notes": notes, **info}
    (out / INFO_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def main(args: argparse.Namespace) -> int:
    checkpoint = open_checkpoint(
        args.checkpoint, args.step, list(args.overrides), args.storage_options
    )
    record = export(
        checkpoint,
        args.out,
        fmt=args.format,
        dtype=args.dtype,
        tokenizer_path=args.tokenizer,
        max_shard_size=args.max_shard_size,
    )
    print(f"exported step {checkpoint.step} ({record['format']}) to {args.out}", flush=True)
    if args.register:
        register(checkpoint, args.out, args.register)
    return 0


def register(checkpoint: Checkpoint, out: str | Path, name: str) -> None:
    """Log the export as an MLflow model (`pretrain.export.mlflow_model`) and register it."""
    from pretrain.export.mlflow_model import save_mlflow_model
    from pretrain.tracking import register_model

    with tempfile.TemporaryDirectory(prefix="mnemos-mlflow-") as scratch:
        model_dir = Path(scratch) / "model"
        flavor = save_mlflow_model(out, model_dir, family=checkpoint.config.model.family)
        run_id, version = register_model(
            checkpoint.config,
            name=name,
            model_dir=model_dir,
            training_run_id=checkpoint.run_id,
            step=checkpoint.step,
        )
    print(f"registered as {name} version {version} ({flavor} model, MLflow run {run_id})")
