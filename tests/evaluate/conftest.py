"""Shared trained checkpoints for the evaluate / export / generate tests.

Each is a real 2-process ZeRO-3 bf16 run of `pretrain train` on the session's small
character-level dataset (`char_manifest`), trained once per session and only read afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.trainer.conftest import char_manifest, experiment_file
from tests.trainer.runs import rank0, run_id, train

__all__ = ["char_manifest"]  # the session fixture, re-exported for this directory's tests

XL_STEPS = 150
XL_HALF = 75


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


@pytest.fixture(scope="session")
def xl_run(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
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


@pytest.fixture(scope="session")
def gpt2_run(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
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


@pytest.fixture(scope="session")
def xl_export(xl_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pretrain export`` of the Transformer-XL run's newest step (native format)."""
    from pretrain.cli import main

    out = tmp_path_factory.mktemp("exports") / "xl"
    assert main(["export", str(xl_run.checkpoints), str(out)]) == 0
    return out
