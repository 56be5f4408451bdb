"""The checkpoint layout's single answers: root or step directory, and which config keys may
change at resume and when a step is read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.config import ExperimentConfig
from tests.conftest import REPO_ROOT, tiny_experiment


def test_split_path_tells_a_root_from_a_step_directory(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    step = ckpt.step_dir(root, 8)
    step.mkdir(parents=True)
    assert ckpt.split_path(root) == (root, None)
    assert ckpt.split_path(step) == (root, 8)
    with pytest.raises(ckpt.CheckpointError, match="is not a checkpoint directory"):
        ckpt.split_path(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.split_path(tmp_path / "nowhere")


def test_config_changes_at_resume_and_when_reading(tmp_path: Path) -> None:
    saved: ExperimentConfig = tiny_experiment(tmp_path)
    new = tiny_experiment(tmp_path, "model.dropout=0.2", "train.max_steps=99", "data.seed=7")
    refused, allowed = ckpt.config_changes(saved, new, at="resume")
    assert [line.split(":")[0] for line in refused] == ["data.seed", "model.dropout"]
    assert [line.split(":")[0] for line in allowed] == ["train.max_steps"]
    refused, allowed = ckpt.config_changes(saved, new, at="read")
    assert refused == []  # dropout is tunable when reading, data and train keys are free
    wider = tiny_experiment(tmp_path, "model.n_layers=3")
    refused, _ = ckpt.config_changes(saved, wider, at="read")
    assert [line.split(":")[0] for line in refused] == ["model.n_layers"]


def test_reading_a_checkpoint_module_does_not_import_deepspeed() -> None:
    """DeepSpeed is imported when weights are read (`consolidated_state_dict`), not before."""
    code = (
        "import sys, pretrain.checkpoint.reading, pretrain.evaluate.command, "
        "pretrain.export.command, pretrain.generate.command; "
        "assert 'deepspeed' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
