"""What a person sees while a run trains: the project's own lines through logging, on stderr,
and none of the dependencies' noise (issue: 1,800 FutureWarning lines around 30 useful ones)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.trained_runs import experiment_file
from tests.train.runs import dump, train

pytestmark = pytest.mark.distributed

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[rank \d\] "
)
NOISE = ("FutureWarning", "untested optimizer", "built successfully", "mlflow.store", "[INFO]")


def _rank_file(workdir: Path, rank: int, name: str) -> str:
    files = sorted((workdir / "jobs").glob(f"torchrun-logs*/**/attempt_*/{rank}/{name}"))
    assert files, f"no {name} for rank {rank}"
    return "".join(f.read_text() for f in files)


def test_a_training_run_prints_its_own_lines_only(char_manifest: Path, tmp_path: Path) -> None:
    config = experiment_file(tmp_path, char_manifest)
    run = train(tmp_path, config, "train.max_steps=4", "train.log_every=2")
    for rank in (0, 1):
        stdout = _rank_file(tmp_path, rank, "stdout.log")
        stderr = _rank_file(tmp_path, rank, "stderr.log")
        assert stdout == "", f"rank {rank} wrote to stdout, which is for results:\n{stdout}"
        for noise in NOISE:
            assert noise not in stderr, f"rank {rank}: {noise!r} in\n{stderr}\n{dump(run)}"
        for line in stderr.splitlines():
            assert LINE.match(line), f"rank {rank}: a line not in the log format: {line!r}"
    lines = _rank_file(tmp_path, 0, "stderr.log").splitlines()
    steps = [line for line in lines if "step      2/4" in line or "step      4/4" in line]
    assert len(steps) == 2 and all(" | ETA " in line for line in steps), lines
    assert any("checkpoint step 4 committed" in line for line in lines), lines
    assert len(lines) < 12, lines  # 2 step lines, 1 validation, 1 checkpoint: nothing else


def test_verbose_shows_the_libraries_lines(char_manifest: Path, tmp_path: Path) -> None:
    """-v is how a user gets DeepSpeed's INFO lines back; they arrive in the same format."""
    config = experiment_file(tmp_path, char_manifest)
    train(tmp_path, config, "train.max_steps=2", "-v")
    stderr = _rank_file(tmp_path, 0, "stderr.log")
    assert "untested optimizer" in stderr
    assert _rank_file(tmp_path, 0, "stdout.log") == ""
