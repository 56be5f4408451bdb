"""Data preparation on a real one-node SLURM cluster (the launch tests' slurmctld/slurmd):
`launch.prep` submits the quality stages, prepare as an array of 3 tasks and a finalize that
depends on it; the manifest and shards must be those of a local one-process run."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_pipeline.configuration import to_yaml
from data_pipeline.prepare import prepare
from data_pipeline.schemas import PrepareConfig
from tests.data_pipeline.conftest import REPO_ROOT, cli_env
from tests.data_pipeline.test_prepare import shard_bytes
from tests.data_pipeline.test_quality import dup_corpus, quality_recipe
from tests.launch.slurm_cluster import (
    SlurmCluster,
    cluster_or_skip,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
__all__ = ["dup_corpus"]  # the fixture, used below

PROFILE = str(REPO_ROOT / "configs" / "cluster" / "slurm_cpu.yaml")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from cluster_or_skip(tmp_path_factory.mktemp("slurm"))


def prep(cluster: SlurmCluster, recipe: Path, tmp_path: Path, *extra: str) -> str:
    args = [
        sys.executable,
        "-m",
        "launch.prep",
        PROFILE,
        str(recipe),
        "--tasks",
        "3",
        "--bucket-tasks",
        "2",
        "--max-concurrent",
        "2",
        "-c",
        f"output_dir={tmp_path / 'slurm'}",
        "-c",
        "cpus_per_task=1",
        "-c",
        f"python={sys.executable}",
        *extra,
    ]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**cli_env(), **cluster.env},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_array_and_dependent_finalize_match_a_local_run(
    cluster: SlurmCluster,
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    cfg = quality_recipe(recipe, paths, tmp_path / "out")
    prepare(cfg, workers=1)
    local = tmp_path / "out-local"
    (tmp_path / "out").rename(local)
    config = tmp_path / "recipe.yaml"
    config.write_text(to_yaml(cfg))

    printed = prep(cluster, config, tmp_path, "--dry-run")
    blocks = re.split(r"^# ==== (\S+): sbatch .*\n", printed, flags=re.M)[1:]
    expected = dict(zip(blocks[::2], blocks[1::2], strict=True))
    assert [Path(p).stem.rsplit("-", 1)[1] for p in expected] == [
        "scan",
        "buckets",
        "clusters",
        "prepare",
        "finalize",
    ]
    assert "#SBATCH --array=0-2%2" in expected[str(tmp_path / "slurm" / "test-prepare.sbatch")]

    submitted = prep(cluster, config, tmp_path)
    jobs = dict(re.findall(r"^(\w+): job (\d+)", submitted, flags=re.M))
    assert list(jobs) == ["scan", "buckets", "clusters", "prepare", "finalize"], submitted
    for path, text in expected.items():
        assert Path(path).read_text() == text  # what sbatch ran is what --dry-run printed
    state = cluster.wait_state(jobs["finalize"], DONE, 600)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "slurm").glob("*.out")))
    assert state["JobState"] == "COMPLETED", logs
    # Three prepare array tasks ran (one log each), then the dependent finalize started after
    # the last of them ended.
    assert len(list((tmp_path / "slurm").glob(f"test-prepare-{jobs['prepare']}_*.out"))) == 3
    tasks = cluster.run("scontrol", "show", "job", "-o", jobs["prepare"]).stdout.splitlines()
    ends = [re.search(r"EndTime=(\S+)", line)[1] for line in tasks]  # type: ignore[index]
    assert len(ends) == 3 and state["StartTime"] >= max(ends), (ends, state["StartTime"])
    assert (tmp_path / "out" / "manifest.json").read_bytes() == (
        local / "manifest.json"
    ).read_bytes()
    assert shard_bytes(str(tmp_path / "out")) == shard_bytes(str(local))
