"""The 2-process helper the distributed tests rely on: real torchrun, real gloo, bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tests.helpers.distributed import DistributedRunError, run_cli_distributed, run_distributed

pytestmark = pytest.mark.distributed


def test_gloo_all_reduce_across_two_processes(tmp_path: Path) -> None:
    run = run_distributed("tests.helpers.rank_functions:all_reduce_rank_plus_one", workdir=tmp_path)
    assert [r.value["rank"] for r in run.ranks] == [0, 1]
    for r in run.ranks:
        assert r.value["world_size"] == 2
        assert r.value["backend"] == "gloo"
        assert torch.equal(r.value["sum"], torch.tensor([3.0]))  # 1 + 2
        assert f"rank {r.rank} says hello" in r.output
    assert run.ranks[0].value["pid"] != run.ranks[1].value["pid"]


def test_a_failing_rank_fails_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(DistributedRunError, match="boom from rank one") as err:
        run_distributed(
            "tests.helpers.rank_functions:fail_on_rank_one", "boom from rank one", workdir=tmp_path
        )
    assert err.value.run.returncode != 0


def test_a_hang_is_killed_at_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DistributedRunError, match="timed out after 20 s"):
        run_distributed("tests.helpers.rank_functions:hang_forever", workdir=tmp_path, timeout=20)
    # Bounded: the helper returned soon after its timeout instead of waiting on the ranks.
    assert time.monotonic() - started < 60


def test_cli_under_torchrun_reports_each_rank(tmp_path: Path, repo_root: Path) -> None:
    run = run_cli_distributed(
        ["pretrain.cli", "config", str(repo_root / "configs/experiments/shakespeare_xl.yaml")],
        workdir=tmp_path,
    )
    assert len(run.ranks) == 2
    for r in run.ranks:
        assert "valid (decoder, 4 layers)" in r.output
