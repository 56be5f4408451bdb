"""A small real dataset for trainer tests, prepared once per session through the real CLIs:
a character-level sentencepiece tokenizer and WebDataset shards of the first 60 kB of
tinyshakespeare (90/10 split by position, like nanoGPT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA

SLICE_CHARS = 60_000


def _run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, f"data-pipeline {' '.join(args)} failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def char_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("char_data")
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    corpus = root / "shakespeare_slice.txt"
    corpus.write_text(text[:SLICE_CHARS], encoding="utf-8")
    source = f"source:\n  paths: [{corpus}]\n  format: text\n  text_mode: file\n"
    (root / "tokenizer.yaml").write_text(
        f"name: slice_char\noutput: {root / 'tokenizer'}\nkind: sp_char\nbyte_fallback: false\n"
        f"{source}special_tokens:\n  num_sentinels: 16\n"
    )
    (root / "data.yaml").write_text(
        f"name: slice\noutput: {root / 'data'}\ntokenizer: {root / 'tokenizer'}\n{source}"
        "split:\n  mode: position\n  validation_fraction: 0.1\n"
        "chunk_len: 64\nunit_bytes: 16384\nshard_bytes: 65536\n"
    )
    _run("train-tokenizer", str(root / "tokenizer.yaml"))
    _run("prepare", str(root / "data.yaml"), "--workers", "1")
    manifest = root / "data" / "manifest.json"
    assert manifest.is_file()
    return manifest


def experiment_file(tmp_path: Path, manifest: Path, family: str = "decoder") -> Path:
    """A tiny experiment over ``manifest``: 2 ranks x micro-batch 2 x grad_accum 2 streams."""
    model = {
        "decoder": "position: relative\n  mem_len: 16",
        "encoder": "family: encoder\n  position: relative\n  mem_len: 16",
        "encoder_decoder": "family: encoder_decoder\n  position: relative\n  mem_len: 16",
    }[family]
    path = tmp_path / f"{family}.yaml"
    path.write_text(
        f"""name: tiny_{family}
model:
  _base_: {REPO_ROOT / "configs" / "model" / "tiny.yaml"}
  {model}
data:
  manifest: {manifest}
  prefetch_batches: 2
train:
  micro_batch_size: 2
  grad_accum: 2
  seq_len: 16
  max_steps: 8
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 2
  log_every: 1
  eval_every: 4
  eval_batches: 4
engine:
  zero_stage: 3
  precision: bf16
checkpoint:
  dir: {tmp_path / "checkpoints"}
  every_steps: 4
  keep_last: 3
tracking:
  uri: sqlite:///{tmp_path / "mlflow.db"}
  artifact_location: {tmp_path / "mlartifacts"}
  experiment: tests
"""
    )
    return path
