"""`launch.prep --dry-run`: which steps a recipe gets, array bounds and dependencies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launch.prep import main

PROFILE = str(Path(__file__).resolve().parents[2] / "configs" / "cluster" / "slurm_cpu.yaml")


def dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    recipe = tmp_path / "r.yaml"
    if not recipe.exists():
        recipe.write_text("name: r\noutput: out\ntokenizer: tok\nsource: {paths: [a.txt]}\n")
    assert main([PROFILE, str(recipe), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


def steps(text: str) -> list[str]:
    return re.findall(r"^#SBATCH --job-name=r-(\w+)$", text, flags=re.M)


def test_plain_recipe_is_a_prepare_array_then_finalize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = dry_run(tmp_path, capsys, "--tasks", "5", "--max-concurrent", "2")
    assert steps(text) == ["prepare", "finalize"]
    assert "#SBATCH --array=0-4%2" in text
    assert '--num-tasks 5 --task-index "$SLURM_ARRAY_TASK_ID"' in text
    assert re.search(
        r"^# ==== \S+r-finalize.sbatch: sbatch --dependency=afterok:<prepare", text, re.M
    )


def test_quality_recipe_adds_its_stages_and_from_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    over = ["quality.exact_dedup=true", "quality.minhash.enabled=true", "quality.minhash.bands=3"]
    text = dry_run(tmp_path, capsys, *over, "--bucket-tasks", "8")
    assert steps(text) == ["scan", "buckets", "clusters", "prepare", "finalize"]
    assert "#SBATCH --array=0-2%8" in text  # no more bucket tasks than bands
    assert "quality.exact_dedup=true" in text and "--stage clusters" in text
    text = dry_run(tmp_path, capsys, *over, "--from", "prepare")
    assert steps(text) == ["prepare", "finalize"]
    assert "sbatch --dependency" not in text.split("\n", 1)[0]  # the first step waits for none


def test_after_makes_the_first_step_wait_for_a_rerun_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = dry_run(tmp_path, capsys, "--from", "finalize", "--after", "1234")
    assert steps(text) == ["finalize"]
    assert re.match(r"# ==== \S+r-finalize.sbatch: sbatch --dependency=afterok:1234 ", text)
    recipe = str(tmp_path / "r.yaml")
    assert main([PROFILE, recipe, "--dry-run", "--after", "12;rm"]) == 2
    assert "error: --after 12;rm: not a SLURM job id" in capsys.readouterr().err
