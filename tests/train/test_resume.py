"""Exact resume under real faults: kill -9, a kill while saving, a corrupt file, SIGTERM.

Every scenario is 2 processes over gloo, real DeepSpeed ZeRO-3 in bf16, real shards, a
Transformer-XL decoder with memory and gradient accumulation 2, and is compared step by step
(exact float equality) and weight by weight with one uninterrupted run of the same config.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.train.preemption import PREEMPTED_EXIT_CODE
from tests.helpers.trained_runs import experiment_file
from tests.train.conftest import STEPS, Reference
from tests.train.runs import (
    assert_same_weights,
    dump,
    losses,
    rank0,
    start_train,
    train,
    wait_for,
    weights,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def assert_matches(workdir: Path, reference: Reference) -> None:
    assert losses(workdir) == reference.losses
    assert_same_weights(weights(workdir / "checkpoints", STEPS), reference.weights)


def test_kill_9_then_resume_is_exact(
    char_manifest: Path, tmp_path: Path, reference: Reference
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    job = start_train(tmp_path, config)
    wait_for(ckpt.step_dir(tmp_path / "checkpoints", 4) / ckpt.MARKER, job)
    job.kill(signal.SIGKILL)  # torchrun and both ranks, mid-step
    assert job.wait(60).returncode != 0
    resumed = train(tmp_path, config)
    assert "resumed from step 4" in rank0(resumed)
    assert_matches(tmp_path, reference)


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(
    char_manifest: Path, tmp_path: Path, reference: Reference
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    crashed = train(tmp_path, config, env={"MNEMOS_FAULTS": "die_in_save@8:1"}, check=False)
    assert crashed.returncode != 0, dump(crashed)
    partial = ckpt.step_dir(tmp_path / "checkpoints", 8)
    assert partial.is_dir() and not (partial / ckpt.MARKER).exists()
    assert ckpt.committed_steps(tmp_path / "checkpoints") == [4]
    resumed = train(tmp_path, config)
    assert "resumed from step 4" in rank0(resumed)
    assert_matches(tmp_path, reference)


def test_flipped_byte_is_detected_and_previous_checkpoint_used(
    char_manifest: Path, tmp_path: Path, reference: Reference
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    train(tmp_path, config)
    newest = ckpt.step_dir(tmp_path / "checkpoints", 8)
    victim = next(p for p in sorted(newest.rglob("*optim_states.pt")))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    again = train(tmp_path, config, "train.max_steps=8")
    out = rank0(again)
    assert "checkpoint step 8 failed verification" in out
    assert victim.name in out and "xxh3_128 does not match" in out
    assert "resumed from step 4" in out
    assert_matches(tmp_path, reference)


def test_sigterm_checkpoints_exits_distinctly_and_resumes_exactly(
    char_manifest: Path, tmp_path: Path, reference: Reference
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    # The notice reaches rank 1 only, as step 6 begins; both ranks must stop together.
    preempted = train(tmp_path, config, env={"MNEMOS_FAULTS": "sigterm@6:1"}, check=False)
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in preempted.launcher_output, dump(preempted)
    assert "preempted: checkpoint at step 6 saved" in rank0(preempted)
    assert ckpt.committed_steps(tmp_path / "checkpoints") == [4, 6]
    resumed = train(tmp_path, config)
    assert "resumed from step 6" in rank0(resumed)
    assert_matches(tmp_path, reference)
