"""`pretrain export`: a checkpoint as a standalone model directory.

Recipe: verify the step → consolidate the ZeRO shards (fp32 master weights) → find the
tokenizer and check its hash against the dataset's → write the native format
(`pretrain.pretrained`) or, for decoders Hugging Face can express, the HF format
(`pretrain.export.hf`) → optionally register the directory in MLflow's model registry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pretrain.checkpoint.reading import (
    Checkpoint,
    consolidated_state_dict,
    model_from_state,
    open_checkpoint,
)
from pretrain.checkpoint.tokenizer import manifest_tokenizer, training_manifest
from pretrain.export.hf import architecture, save_hf
from pretrain.model.build import DTYPES
from pretrain.pretrained import INFO_FILE, TOKENIZER_DIR, save_pretrained


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
) -> dict[str, Any]:
    """Write ``checkpoint`` under ``out``; returns what export.json records."""
    config = checkpoint.config
    if fmt == "hf":
        architecture(config.model)  # refuse before the (slow) consolidation
    check_output(Path(out))
    manifest = training_manifest(checkpoint.saved_config.data.manifest)
    tokenizer = manifest_tokenizer(manifest, tokenizer_path)
    state = consolidated_state_dict(checkpoint)
    info = provenance(checkpoint, tokenizer.hash)
    out = Path(out)
    if fmt == "native":
        model = model_from_state(config, state, DTYPES[dtype])
        save_pretrained(model, out, tokenizer_dir=tokenizer.path, info=info)
        return {"format": "mnemos", **info}
    arch = save_hf(config.model, state, out, special_ids=manifest.special_ids, dtype=DTYPES[dtype])
    # The native tokenizer artifact travels along (our `Tokenizer` loads it); HF tokenizers'
    # own file also serves transformers directly.
    shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
    shutil.copytree(tokenizer.path, out / TOKENIZER_DIR)
    if tokenizer.kind.startswith("hf_"):
        _write_hf_tokenizer(out, Path(tokenizer.path), tokenizer.meta)
    notes = []
    if config.model.mem_len:
        notes.append(
            f"trained with a {config.model.mem_len}-token memory; the HF model attends within "
            "its context window only"
        )
    record = {"format": "hf", "architecture": arch, "notes": notes, **info}
    (out / INFO_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def _write_hf_tokenizer(out: Path, artifact: Path, meta: dict[str, Any]) -> None:
    """tokenizer.json + tokenizer_config.json, what transformers' AutoTokenizer reads."""
    shutil.copyfile(artifact / meta["model_file"], out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}, indent=1) + "\n"
    )


def main(args: argparse.Namespace) -> int:
    checkpoint = open_checkpoint(args.checkpoint, args.step, list(args.overrides))
    record = export(
        checkpoint, args.out, fmt=args.format, dtype=args.dtype, tokenizer_path=args.tokenizer
    )
    print(f"exported step {checkpoint.step} ({record['format']}) to {args.out}", flush=True)
    if args.register:
        from pretrain.tracking import register_model

        run_id, version = register_model(
            checkpoint.config,
            name=args.register,
            directory=args.out,
            training_run_id=checkpoint.run_id,
            step=checkpoint.step,
        )
        print(f"registered as {args.register} version {version} (MLflow run {run_id})")
    return 0
