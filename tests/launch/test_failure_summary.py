"""A failed job under `pretrain-launch` ends with the first rank's one-line cause, and a dataset
with nothing to train on is refused before any process starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launch.supervise import FirstCause
from tests.launch.jobs import Launch, experiment
from tests.launch.test_faults import profile

CAUSE = "2 consecutive steps had a non-finite loss"


@pytest.mark.distributed
def test_a_failed_training_ends_with_the_first_ranks_cause(
    char_manifest: Path, tmp_path: Path
) -> None:
    config = experiment(tmp_path, char_manifest)
    run = Launch(
        profile(tmp_path, "local", nproc_per_node=2),
        config,
        "train.max_consecutive_skips=2",
        log=tmp_path / "failed.log",
        env={"MNEMOS_FAULTS": "nonfinite@2,nonfinite@3"},
    )
    assert run.wait(300) == 1, run.output()
    assert run.script().is_file()  # the launcher said which script it ran
    last = run.output().rstrip().splitlines()[-1]
    assert "ERROR the job failed (exit code 1): " in last and CAUSE in last, run.output()


def test_a_manifest_without_training_samples_is_refused_before_launch(
    char_manifest: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(char_manifest.parent, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"].update(samples=0, shards=[], tokens=0)
    (data / "manifest.json").write_text(json.dumps(manifest))
    config = experiment(tmp_path, data / "manifest.json")
    run = Launch(profile(tmp_path, "local", nproc_per_node=2), config, log=tmp_path / "empty.log")
    assert run.wait(120) == 1
    out = run.output()
    assert "holds no training samples in split 'train'" in out, out
    assert "Traceback" not in out and not list(tmp_path.glob("checkpoints/step_*"))


@pytest.mark.parametrize(
    ("lines", "cause"),
    [
        (["step 1", "error: shard x.tar is truncated\n", "error: later\n"], "shard x.tar is"),
        (
            [
                "Traceback (most recent call last):\n",
                '  File "a.py", line 1, in <module>\n',
                "IndexError: index out of range in self\n",
                "Traceback (most recent call last):\n",
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n",
            ],
            "IndexError: index out of range in self",
        ),
        (["2026-12-03 10:00:00 ERROR [rank 1] checkpoint corrupt\n"], "[rank 1] checkpoint"),
        (["all good\n"], None),
    ],
)
def test_the_first_cause_is_what_a_rank_said(lines: list[str], cause: str | None) -> None:
    first = FirstCause()
    for line in lines:
        first.observe(line)
    assert (first.cause is None) if cause is None else (cause in str(first.cause))
