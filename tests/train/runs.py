"""Running `pretrain train` under torchrun for tests, and reading back what it recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from pretrain.checkpoint import layout as ckpt
from pretrain.tracking import read_run
from tests.helpers.distributed import (
    DistributedRun,
    RunningJob,
    run_cli_distributed,
    start_cli_distributed,
)


def train(
    workdir: Path,
    config: Path,
    *overrides: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> DistributedRun:
    return run_cli_distributed(
        ["pretrain.cli", "train", str(config), *overrides],
        workdir=workdir / "jobs",
        env=env,
        check=check,
        timeout=timeout,
    )


def start_train(workdir: Path, config: Path, *overrides: str) -> RunningJob:
    return start_cli_distributed(
        ["pretrain.cli", "train", str(config), *overrides], workdir=workdir / "jobs"
    )


def wait_for(path: Path, job: RunningJob, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if job.proc.poll() is not None:
            raise AssertionError(f"the job ended before {path} appeared")
        if time.monotonic() > deadline:
            job.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def run_id(checkpoints: Path) -> str:
    marker = ckpt.read_marker(ckpt.step_dir(checkpoints, ckpt.committed_steps(checkpoints)[-1]))
    return str(marker["run_id"])


def losses(workdir: Path) -> dict[int, float]:
    """train/loss per step from the MLflow store; for a step logged twice (a run killed after
    logging it, then resumed), the later value: the one the finished run stands on."""
    run = read_run(f"sqlite:///{workdir / 'mlflow.db'}", run_id(workdir / "checkpoints"))
    return dict(run["history"]["train/loss"])


def weights(checkpoints: Path, step: int) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a ZeRO checkpoint, consolidated in this process."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=f"step_{step:07d}")
    return {k: v.clone() for k, v in state.items()}


def assert_same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


def rank0(run: DistributedRun) -> str:
    return run.ranks[0].output


def dump(run: DistributedRun) -> str:
    return json.dumps({"returncode": run.returncode}) + "\n" + run.describe()
