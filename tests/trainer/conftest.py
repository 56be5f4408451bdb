"""A small real dataset for trainer tests, prepared once per session through the real CLIs:
a character-level sentencepiece tokenizer and WebDataset shards of the first 60 kB of
tinyshakespeare (90/10 split by position, like nanoGPT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CORPORA, REPO_ROOT
from tests.helpers.prepared_data import prepare_char_dataset

SLICE_CHARS = 60_000


@pytest.fixture(scope="session")
def char_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (CORPORA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return prepare_char_dataset(tmp_path_factory.mktemp("char_data"), text[:SLICE_CHARS])


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
