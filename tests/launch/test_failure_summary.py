"""A failed job under `pretrain-launch` ends with the first rank's one-line cause, and a dataset
with nothing to train on is refused before any process starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launch.supervise import FirstCause, LauncherReport
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


TORCHRUN_REPORT = [
    "Traceback (most recent call last):\n",
    '  File "<frozen runpy>", line 198, in _run_module_as_main\n',
    '  File ".../torch/distributed/run.py", line 1032, in <module>\n',
    "    main()\n",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
    "============================================================\n",
    "pretrain.cli FAILED\n",
    "------------------------------------------------------------\n",
    "Root Cause (first observed failure):\n",
    "  exitcode  : 1 (pid: 12711)\n",
    "============================================================\n",
]
RANK_TRACEBACK = [
    "Traceback (most recent call last):\n",
    '  File "pretrain/model/layers.py", line 3, in forward\n',
    "IndexError: index out of range in self\n",
]


def test_torchruns_own_report_is_held_back_and_a_ranks_traceback_is_not() -> None:
    report = LauncherReport()
    lines = ["error: bad shard x.tar: truncated\n", *TORCHRUN_REPORT, *RANK_TRACEBACK, "bye\n"]
    shown = [out for line in lines for out in report.feed(line)] + report.flush()
    assert shown == ["error: bad shard x.tar: truncated\n", *RANK_TRACEBACK, "bye\n"]
    assert report.dropped == len(TORCHRUN_REPORT)
    # A traceback cut short by the end of the output is given back whole.
    cut = LauncherReport()
    assert [o for line in RANK_TRACEBACK[:2] for o in cut.feed(line)] == []
    assert cut.flush() == RANK_TRACEBACK[:2]


@pytest.mark.distributed
def test_a_damaged_dataset_under_the_launcher_ends_in_error_lines_only(
    char_manifest: Path, tmp_path: Path
) -> None:
    """The issue's 88 lines and three tracebacks: now each rank's one line naming its shard,
    torchrun's one log line, and the cause at the end."""
    data = tmp_path / "data"
    shutil.copytree(char_manifest.parent, data)
    for shard in data.glob("train-*.tar"):
        shard.unlink()
    config = experiment(tmp_path, data / "manifest.json")
    run = Launch(profile(tmp_path, "local", nproc_per_node=2), config, log=tmp_path / "bad.log")
    assert run.wait(300) == 1
    out = run.output()
    assert "Traceback" not in out and "ChildFailedError" not in out, out
    last = out.rstrip().splitlines()[-1]
    assert "ERROR the job failed (exit code 1): bad shard " in last and str(data) in last, out
    assert len(out.strip().splitlines()) < 12, out


def test_a_rank_killed_by_a_signal_is_named_from_torchruns_report() -> None:
    """A rank that dies by SIGKILL says nothing itself: the failure line takes torchrun's root
    cause (rank, host, exit code, signal) from the report it holds back."""
    report = LauncherReport()
    lines = [
        "Traceback (most recent call last):\n",
        '  File "run.py", line 1, in <module>\n',
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "=" * 60 + "\n",
        "Root Cause (first observed failure):\n",
        "  host      : node7\n",
        "  rank      : 1 (local_rank: 0)\n",
        "  exitcode  : -9 (pid: 24561)\n",
        "  traceback : Signal 9 (SIGKILL) received by PID 24561\n",
        "=" * 60 + "\n",
        "after the report\n",
    ]
    shown = [out for line in lines for out in report.feed(line)]
    assert shown == ["after the report\n"]
    assert report.failed_child == [
        "host : node7",
        "rank : 1 (local_rank: 0)",
        "exitcode : -9 (pid: 24561)",
        "traceback : Signal 9 (SIGKILL) received by PID 24561",
    ]
