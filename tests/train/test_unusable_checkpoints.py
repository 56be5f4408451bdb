"""A run never destroys a checkpoint it did not write: with every committed step failing
verification it refuses to start afresh over them (one error line, nothing changed), unless
told ``train.resume=never``; and pruning removes only the run's own steps, never one newer
than its first save. Real single-process `pretrain train` runs (DeepSpeed ZeRO-3 on CPU)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from tests.conftest import REPO_ROOT
from tests.helpers.distributed import distributed_env
from tests.helpers.trained_runs import experiment_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _train(config: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "train", str(config), *overrides],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=distributed_env(),
        timeout=600,
    )


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Steps 4 and 8 of an 8-step run (checkpoint every 4, keep_last 3)."""
    workdir = tmp_path_factory.mktemp("unusable")
    result = _train(experiment_file(workdir, char_manifest))
    assert result.returncode == 0, result.stderr
    assert ckpt.committed_steps(workdir / "checkpoints") == [4, 8]
    return workdir


def _copy(trained: Path, tmp_path: Path, char_manifest: Path) -> tuple[Path, Path]:
    shutil.copytree(trained / "checkpoints", tmp_path / "checkpoints")
    return experiment_file(tmp_path, char_manifest), tmp_path / "checkpoints"


def test_every_step_unusable_is_refused_and_left_as_it_is(
    trained: Path, tmp_path: Path, char_manifest: Path
) -> None:
    config, checkpoints = _copy(trained, tmp_path, char_manifest)
    for step in (4, 8):
        state = ckpt.trainer_state_path(ckpt.step_dir(checkpoints, step), 0)
        state.write_bytes(state.read_bytes()[:100])
    before = _tree(checkpoints)

    refused = _train(config)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert "none of its committed steps (4, 8) passes verification" in lines[0]
    assert "step_0000008/trainer_state_rank0.pt: 100 bytes" in lines[0]
    assert "train.resume=never" in lines[0]
    assert _tree(checkpoints) == before  # nothing pruned, nothing overwritten

    # Told to start afresh, the run trains beside them: its steps 4 and 8 take their places,
    # theirs are moved aside whole, and keep_last=1 prunes only this run's step 4.
    fresh = _train(config, "train.resume=never", "checkpoint.keep_last=1")
    assert fresh.returncode == 0, fresh.stderr
    assert "moved aside to step_0000004.superseded" in fresh.stderr
    assert ckpt.committed_steps(checkpoints) == [8]
    assert ckpt.verify(ckpt.step_dir(checkpoints, 8)) == []
    after = _tree(checkpoints)
    for name, digest in before.items():
        if name.startswith("step_"):
            step_name, rest = name.split("/", 1)
            assert after[f"{step_name}.superseded/{rest}"] == digest, name


def test_pruning_never_removes_a_step_newer_than_the_runs_first_save(
    trained: Path, tmp_path: Path, char_manifest: Path
) -> None:
    """Step 8 fails verification, so the run resumes at 4 and saves at 6. keep_last=1 used to
    keep the newest step number, 8, and delete 4 and the run's own new 6."""
    config, checkpoints = _copy(trained, tmp_path, char_manifest)
    state = ckpt.trainer_state_path(ckpt.step_dir(checkpoints, 8), 0)
    state.write_bytes(state.read_bytes()[:100])
    step8 = _tree(ckpt.step_dir(checkpoints, 8))

    result = _train(
        config, "train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=1"
    )
    assert result.returncode == 0, result.stderr
    assert "checkpoint step 8 failed verification and is skipped" in result.stderr
    assert "resumed from step 4" in result.stderr
    assert ckpt.committed_steps(checkpoints) == [6, 8]  # its own 4 pruned; 8 kept as it was
    assert _tree(ckpt.step_dir(checkpoints, 8)) == step8
