"""``mnemos-lm-eval``, the console script that is lm-eval's own command line with the ``mnemos``
model type registered (lm-eval 0.4.13 has no plugin hook for models), run as a subprocess the
way pip's generated script runs it, on a native export and local task YAMLs over bundled text."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.conftest import REPO_ROOT
from tests.evaluate.test_harness import _run, _tasks
from tests.helpers.tiny_models import tiny_export, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra")

SCRIPT = "mnemos-lm-eval"


def _run_console_script(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """``mnemos-lm-eval ARGUMENTS`` as pip's generated script runs it: its declared
    ``module:function``, called and its result the exit code."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[SCRIPT].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    return subprocess.run(
        [sys.executable, "-c", code, *arguments],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Transformer-XL decoder with a char tokenizer of tinyshakespeare, exported."""
    root = tmp_path_factory.mktemp("harness_cli")
    text = (REPO_ROOT / "corpora" / "tinyshakespeare" / "input.txt").read_text()[:50_000]
    tokenizer = tiny_tokenizer(root, "sp_char", 80, text)
    return tiny_export(root, tokenizer)


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_OFFLINE": "1"}


@pytest.mark.slow
def test_console_script_runs_both_task_kinds(export: Path, tmp_path: Path) -> None:
    documents = [
        line
        for line in (REPO_ROOT / "corpora/tinyshakespeare/input.txt")
        .read_text()
        .split("\n\n")[300:310]
    ]
    tasks = _tasks(tmp_path, documents)
    out = tmp_path / "results"
    arguments = ["--model", "mnemos", "--model_args", f"checkpoint={export}"]
    arguments += ["--tasks", "mnemos_rolling,mnemos_next_line", "--include_path", str(tasks)]
    arguments += ["--output_path", str(out)]
    done = _run_console_script(arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mnemos_rolling" in done.stdout  # lm-eval's own results table
    (written,) = out.rglob("results_*.json")
    results: dict[str, Any] = json.loads(written.read_text())["results"]
    assert 0.0 <= results["mnemos_next_line"]["acc,none"] <= 1.0
    # The command line evaluates what lm-eval's Python API evaluates with the same arguments.
    expected = _run("mnemos", f"checkpoint={export}", tasks)
    for task, metric in [
        ("mnemos_rolling", "bits_per_byte,none"),
        ("mnemos_next_line", "perplexity,none"),
    ]:
        assert math.isfinite(results[task][metric])
        assert results[task][metric] == pytest.approx(expected[task][metric], rel=1e-6)


def test_console_script_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, ["To be, or not to be"])
    missing = tmp_path / "no_such_run"
    arguments = ["--model", "mnemos", "--model_args", f"checkpoint={missing}"]
    arguments += ["--tasks", "mnemos_rolling", "--include_path", str(tasks)]
    done = _run_console_script(arguments)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last
