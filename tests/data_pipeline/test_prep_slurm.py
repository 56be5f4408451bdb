"""Data preparation on a real one-node SLURM cluster (the launch tests' slurmctld/slurmd):
`launch.prep` submits the quality stages, prepare as an array of 3 tasks and a finalize that
depends on it; the manifest and shards must be those of a local one-process run, also when a
prepare task fails and is rerun alone."""

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


def local_run(
    recipe: Callable[..., PrepareConfig], paths: list[str], tmp_path: Path
) -> tuple[Path, Path]:
    """The recipe prepared here in one process (moved to out-local), and its YAML for SLURM,
    which writes to tmp_path/out."""
    cfg = quality_recipe(recipe, paths, tmp_path / "out")
    prepare(cfg, workers=1)
    local = tmp_path / "out-local"
    (tmp_path / "out").rename(local)
    config = tmp_path / "recipe.yaml"
    config.write_text(to_yaml(cfg))
    return local, config


def test_array_and_dependent_finalize_match_a_local_run(
    cluster: SlurmCluster,
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    local, config = local_run(recipe, paths, tmp_path)

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


def unit_of(name: str) -> int | None:
    """The unit a marker (``_units/00004.json``) or shard (``train-00004-00000.tar``) is of."""
    found = re.fullmatch(r"_units/(\d+)\.json|\w+-(\d+)-\d+\.tar", name)
    return None if found is None else int(found[1] or found[2])


def test_a_failed_task_is_rerun_alone_and_committed_units_are_not_redone(
    cluster: SlurmCluster,
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    local, config = local_run(recipe, paths, tmp_path)
    out = tmp_path / "out"
    # Task 1 of 3 runs units 1, 4, 7, ...: a directory where a later one of them writes its
    # first shard makes that commit fail (os.replace onto a directory; root reads any file, so
    # an unreadable file would not do), after the task committed the units before it.
    units = sorted(int(p.stem) for p in (local / "_units").glob("*.json"))
    assert units == list(range(len(units))) and len(units) >= 5, units
    ours = [u for u in units if u % 3 == 1]
    failing = next(u for u in ours[1:] if list(local.glob(f"*-{u:05d}-00000.tar")))
    done_before = ours.index(failing)  # task 1's units committed before the failure
    blocked = min(local.glob(f"*-{failing:05d}-00000.tar")).name
    (out / blocked).mkdir(parents=True)

    jobs = dict(re.findall(r"^(\w+): job (\d+)", prep(cluster, config, tmp_path), flags=re.M))
    assert list(jobs) == ["scan", "buckets", "clusters", "prepare", "finalize"]
    tasks = [cluster.wait_state(f"{jobs['prepare']}_{i}", DONE, 600) for i in range(3)]
    logs = {p.name: p.read_text() for p in (tmp_path / "slurm").glob("*.out")}
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "FAILED", "COMPLETED"], logs
    failed_log = logs[f"test-prepare-{jobs['prepare']}_1.out"]
    assert "error:" in failed_log and blocked in failed_log, failed_log
    # The dependent steps never ran: their afterok cannot be met any more, and SLURM cancelled
    # them itself (--kill-on-invalid-dep), leaving nothing pending to scancel by hand.
    assert cluster.wait_state(jobs["finalize"], {"CANCELLED"}, 60)["JobState"] == "CANCELLED"
    assert not (out / "manifest.json").exists()
    committed = {unit_of(f"_units/{p.name}") for p in (out / "_units").glob("*.json")}
    assert committed == set(units) - set(ours[done_before:]), committed
    files = {
        str(p.relative_to(out)): p.stat()
        for p in [*out.glob("*.tar"), *(out / "_units").glob("*.json")]
        if unit_of(str(p.relative_to(out))) in committed
    }
    assert {unit_of(name) for name in files} == committed

    (out / blocked).rmdir()  # the cause fixed; task 1 alone again, finalize once it succeeded
    script = tmp_path / "slurm" / "test-prepare.sbatch"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=1", str(script)],
        capture_output=True,
        text=True,
        env={**cli_env(), **cluster.env},
        timeout=30,
        check=True,
    )
    rerun = submitted.stdout.split(";")[0].strip()  # "<job id>[;<cluster>]"
    finalize = re.findall(
        r"^finalize: job (\d+)",
        prep(cluster, config, tmp_path, "--from", "finalize", "--after", rerun),
        flags=re.M,
    )
    assert len(finalize) == 1
    state = cluster.wait_state(finalize[0], DONE, 600)
    logs = {p.name: p.read_text() for p in (tmp_path / "slurm").glob("*.out")}
    assert state["JobState"] == "COMPLETED", logs
    assert sorted(n for n in logs if n.startswith(f"test-prepare-{rerun}_")) == [
        f"test-prepare-{rerun}_1.out"
    ]  # only task 1 ran again
    rerun_log = logs[f"test-prepare-{rerun}_1.out"]
    to_run = len(ours) - done_before
    assert f"this task {len(ours)}, already committed {done_before}, to run {to_run}" in rerun_log
    assert state["StartTime"] >= cluster.job_state(f"{rerun}_1")["EndTime"]
    # Every file of a unit committed before the failure is the same file, never rewritten.
    for name, before in files.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert (out / "manifest.json").read_bytes() == (local / "manifest.json").read_bytes()
    assert shard_bytes(str(out)) == shard_bytes(str(local))
