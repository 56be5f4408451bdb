"""The uninterrupted run that resumed runs are compared with, trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers.trained_runs import experiment_file
from tests.train.runs import losses, train, weights

STEPS = 8  # experiment_file's train.max_steps


@dataclass
class Reference:
    losses: dict[int, float]
    weights: dict[str, torch.Tensor]


@pytest.fixture(scope="session")
def reference(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """STEPS uninterrupted steps of tests.helpers.trained_runs.experiment_file (2 ranks)."""
    workdir = tmp_path_factory.mktemp("reference")
    train(workdir, experiment_file(workdir, char_manifest))
    ref = Reference(losses(workdir), weights(workdir / "checkpoints", STEPS))
    assert sorted(ref.losses) == list(range(1, STEPS + 1))
    return ref
