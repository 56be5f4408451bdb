"""Real data and real trained checkpoints shared by the train / evaluate / export / generate tests.

`char_dataset` prepares a small real dataset through the real CLIs: a character-level
sentencepiece tokenizer and WebDataset shards of the first 60 kB of tinyshakespeare (90/10 split
by position, like nanoGPT). `train_xl` and `train_gpt2` are real 2-process ZeRO-3 bf16 runs of
`pretrain train` on it. The session fixtures of `tests/conftest.py` call these once per session;
everything afterwards only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CORPORA, REPO_ROOT
from tests.helpers.prepared_data import prepare_char_dataset
from tests.train.runs import rank0, run_id, train

SLICE_CHARS = 60_000
XL_STEPS = 150
XL_HALF = 75


def char_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


@dataclass
class TrainedRun:
    workdir: Path
    config: Path
    checkpoints: Path
    step: int
    run_id: str
    log: str  # rank 0's output

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.workdir / 'mlflow.db'}"


def train_xl(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A Transformer-XL decoder (relative positions, mem_len 16, seq_len 16, 64 wide), trained
    long enough (about one epoch, high learning rate) to use its memory: validation and
    checkpoints at steps 75 and 150. 2 ranks x 4 rows: the validation has 8 streams."""
    workdir = tmp_path_factory.mktemp("xl_run")
    config = experiment_file(workdir, char_manifest)
    run = train(
        workdir,
        config,
        "model.d_model=64",
        "train.micro_batch_size=4",
        "train.lr=1e-2",
        "train.min_lr=1e-3",
        f"train.max_steps={XL_STEPS}",
        "train.warmup_steps=10",
        f"train.eval_every={XL_HALF}",
        "train.log_every=25",
        f"checkpoint.every_steps={XL_HALF}",
    )
    checkpoints = workdir / "checkpoints"
    return TrainedRun(workdir, config, checkpoints, XL_STEPS, run_id(checkpoints), rank0(run))


def train_gpt2(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The tiny preset as is (learned positions + LayerNorm + GELU: GPT-2's architecture), a
    few steps: enough for weights that differ from their initialisation."""
    workdir = tmp_path_factory.mktemp("gpt2_run")
    config = experiment_file(workdir, char_manifest)
    run = train(
        workdir,
        config,
        "model.position=learned",
        "model.mem_len=0",
        "train.max_steps=3",
        "train.eval_every=3",
        "checkpoint.every_steps=3",
    )
    checkpoints = workdir / "checkpoints"
    return TrainedRun(workdir, config, checkpoints, 3, run_id(checkpoints), rank0(run))


def export_native(run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pretrain export`` of the run's newest step (native format)."""
    from pretrain.cli import main

    out = tmp_path_factory.mktemp("exports") / "xl"
    assert main(["export", str(run.checkpoints), str(out)]) == 0
    return out
