"""The `data-pipeline` command line: help with examples, the recipes, inspect, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.configuration import load_config
from data_pipeline.schemas import PrepareConfig, TokenizerTrainingConfig

from .conftest import REPO_ROOT, cli, cli_env

COMMANDS = ["train-tokenizer", "prepare", "finalize", "inspect", "verify"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_examples(command: str) -> None:
    run = subprocess.run(cli(command, "--help"), env=cli_env(), capture_output=True, text=True)
    assert (
        run.returncode == 0
        and "examples:" in run.stdout
        and f"data-pipeline {command}" in run.stdout
    )


def test_shipped_recipes_load() -> None:
    for path in sorted((REPO_ROOT / "configs" / "data").glob("*.yaml")):
        assert load_config(PrepareConfig, path).chunk_len > 0
    for path in sorted((REPO_ROOT / "configs" / "tokenizer").glob("*.yaml")):
        assert load_config(TokenizerTrainingConfig, path).special_tokens.eos == "</s>"


def test_cli_train_prepare_inspect(tmp_path: Path, corpus_dir: Path) -> None:
    tok, out = tmp_path / "tok", tmp_path / "data"
    recipe = REPO_ROOT / "configs" / "tokenizer" / "shakespeare_char.yaml"
    src = f"source.paths=[{corpus_dir / 'shakespeare.txt'}]"
    run = subprocess.run(
        cli("train-tokenizer", str(recipe), f"output={tok}", src),
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    data = REPO_ROOT / "configs" / "data" / "shakespeare_char.yaml"
    args = [str(data), f"output={out}", f"tokenizer={tok}", src, "--workers", "1"]
    run = subprocess.run(cli("prepare", *args), env=cli_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "[prepare done]" in run.stderr and "documents" in run.stderr and "MB/s" in run.stderr
    run = subprocess.run(cli("inspect", str(out)), env=cli_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (
        "fingerprint" in run.stdout and "First Citizen" in run.stdout and "validation" in run.stdout
    )
    bad = subprocess.run(
        cli("prepare", *args, "chunk_len=nope"), env=cli_env(), capture_output=True, text=True
    )
    assert bad.returncode == 2 and "chunk_len" in bad.stderr


def test_data_pipeline_imports_without_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import data_pipeline\n"
        "for m in pkgutil.iter_modules(data_pipeline.__path__):\n"
        "    importlib.import_module('data_pipeline.' + m.name)\n"
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
