"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from data_pipeline.configuration import load_config
from pretrain.config import ExperimentConfig

if TYPE_CHECKING:
    from tests.helpers.trained_runs import TrainedRun

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPORA = REPO_ROOT / "corpora"  # the real corpora the repository ships


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def tiny_experiment(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    """A complete experiment on the tiny decoder preset, writing everything under ``tmp_path``.

    Small enough that a ZeRO-3 step over 2 CPU processes takes well under a second. Built the way
    users build theirs: a YAML file composed on a model preset, plus dotted overrides.
    """
    experiment = tmp_path / "tiny_experiment.yaml"
    experiment.write_text(
        f"""name: tiny
model:
  _base_: {REPO_ROOT / "configs" / "model" / "tiny.yaml"}
train:
  micro_batch_size: 2
  seq_len: 16
  max_steps: 4
  warmup_steps: 1
  log_every: 1
  eval_every: 2
  eval_batches: 2
checkpoint:
  dir: {tmp_path / "checkpoints"}
  every_steps: 2
tracking:
  uri: sqlite:///{tmp_path / "mlflow.db"}
  artifact_location: {tmp_path / "mlartifacts"}
"""
    )
    return load_config(ExperimentConfig, experiment, overrides)


@pytest.fixture
def tiny_config(tmp_path: Path) -> ExperimentConfig:
    return tiny_experiment(tmp_path)


# -- real data and trained checkpoints, built once per session (tests/helpers/trained_runs.py) --
# Defined here, once, so every directory shares one instance of each session fixture.


@pytest.fixture(scope="session")
def char_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.trained_runs import char_dataset

    return char_dataset(tmp_path_factory)


@pytest.fixture(scope="session")
def xl_run(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    from tests.helpers.trained_runs import train_xl

    return train_xl(char_manifest, tmp_path_factory)


@pytest.fixture(scope="session")
def gpt2_run(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    from tests.helpers.trained_runs import train_gpt2

    return train_gpt2(char_manifest, tmp_path_factory)


@pytest.fixture(scope="session")
def xl_export(xl_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.trained_runs import export_native

    return export_native(xl_run, tmp_path_factory)
