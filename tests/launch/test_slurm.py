"""SLURM for real: a one-node slurmctld/slurmd on localhost runs the rendered sbatch script.

The script is the one `pretrain-launch` writes (and prints with --dry-run): srun starts one
torchrun agent, which starts 2 ranks. The preemption test sends the batch shell the signal SLURM
sends before a time limit (``scancel --signal=USR1 --batch``): the ranks must checkpoint, the
job requeue itself, and the second run resume and finish.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.tracking import read_run
from tests.helpers.distributed import REPO_ROOT, distributed_env
from tests.launch.jobs import OVERRIDES, STEPS, dry_run, experiment, wait_for_checkpoint
from tests.launch.slurm_cluster import (
    SlurmCluster,
    cluster_or_skip,
    free_port,
)
from tests.train.runs import run_id

pytestmark = [pytest.mark.slurm, pytest.mark.distributed, pytest.mark.slow]

PROFILE = str(REPO_ROOT / "configs" / "cluster" / "slurm_cpu.yaml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from cluster_or_skip(tmp_path_factory.mktemp("slurm"))


def submit(cluster: SlurmCluster, tmp_path: Path, config: Path, *extra: str) -> tuple[str, str]:
    """Submit through pretrain-launch; returns the job id and the --dry-run text."""
    # The profile's fixed rendezvous port may be taken on a shared machine: pick a free one.
    args = ["-c", f"output_dir={tmp_path / 'slurm'}", "-c", f"rdzv_port={free_port()}", *extra]
    expected = dry_run(PROFILE, config, *args, env=cluster.env)
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", PROFILE, str(config), *OVERRIDES, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=distributed_env(cluster.env),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    script = next(tmp_path.glob("slurm/*.sbatch"))
    assert script.read_text() == expected  # what sbatch ran is what --dry-run printed
    return result.stdout.strip().split(";")[0], expected


def job_output(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("slurm/*.out")))


def test_sbatch_trains_two_processes(
    cluster: SlurmCluster, char_manifest: Path, tmp_path: Path
) -> None:
    config = experiment(tmp_path, char_manifest)
    job, _ = submit(cluster, tmp_path, config)
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    out = job_output(tmp_path)
    assert state["JobState"] == "COMPLETED", out
    assert "preflight ok on" in out
    assert ckpt.committed_steps(tmp_path / "checkpoints")[-1] == STEPS
    run = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id(tmp_path / "checkpoints"))
    assert run["status"] == "FINISHED"
    assert run["tags"]["world_size"] == "2"
    assert sorted(step for step, _ in run["history"]["train/loss"]) == list(range(1, STEPS + 1))


def test_preemption_signal_checkpoints_requeues_and_finishes(
    cluster: SlurmCluster, char_manifest: Path, tmp_path: Path
) -> None:
    config = experiment(tmp_path, char_manifest)
    job, _ = submit(cluster, tmp_path, config)
    cluster.wait_state(job, {"RUNNING"}, 60)
    wait_for_checkpoint(tmp_path / "checkpoints", 2, timeout=240)
    # What SLURM does preempt_signal_s before the time limit (#SBATCH --signal=B:USR1@...).
    signalled = cluster.run("scancel", "--signal=USR1", "--batch", job)
    assert signalled.returncode == 0, signalled.stderr
    deadline = time.monotonic() + 300
    while "requeueing job" not in job_output(tmp_path):
        assert time.monotonic() < deadline, job_output(tmp_path)
        time.sleep(0.5)
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, 300)
    out = job_output(tmp_path)
    assert state["JobState"] == "COMPLETED", out
    assert int(state["Restarts"]) >= 1, state
    assert "received SIGUSR1: forwarding to the ranks" in out
    # The trainer's log line (after its time, level and rank), not the script's own echo.
    preempted_at = [line for line in out.splitlines() if "preempted: checkpoint at step " in line]
    assert preempted_at, out
    step = int(preempted_at[0].split("at step ")[1].split()[0])
    assert f"resumed from step {step}" in out
    assert ckpt.committed_steps(tmp_path / "checkpoints")[-1] == STEPS
    run = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id(tmp_path / "checkpoints"))
    assert run["status"] == "FINISHED"
