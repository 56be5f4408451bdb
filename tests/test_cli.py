"""The command-line surface: every CLI has --help with examples; configs print and round-trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.configuration import load_config
from pretrain.config import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO_ROOT / "configs" / "experiments" / "shakespeare_xl.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )


@pytest.mark.parametrize("module", ["data_pipeline.cli", "pretrain.cli", "launch.cli"])
def test_every_cli_has_help(module: str) -> None:
    result = run("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("module", ["pretrain.cli", "launch.cli"])
def test_help_shows_examples(module: str) -> None:
    assert "examples:" in run("-m", module, "--help").stdout


def test_print_config_round_trips(tmp_path: Path) -> None:
    result = run("-m", "pretrain.cli", "config", str(EXPERIMENT), "train.lr=3e-4", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout)
    expected = load_config(ExperimentConfig, EXPERIMENT, ["train.lr=3e-4"])
    assert load_config(ExperimentConfig, printed) == expected


def test_save_config_writes_the_resolved_config(tmp_path: Path) -> None:
    saved = tmp_path / "out" / "resolved.yaml"
    result = run("-m", "pretrain.cli", "config", str(EXPERIMENT), f"--save-config={saved}")
    assert result.returncode == 0, result.stderr
    assert load_config(ExperimentConfig, saved) == load_config(ExperimentConfig, EXPERIMENT)


def test_bad_override_exits_2_naming_key_and_source() -> None:
    result = run("-m", "pretrain.cli", "config", str(EXPERIMENT), "model.n_layers=many")
    assert result.returncode == 2
    assert "model.n_layers: must be an integer" in result.stderr
    assert "command line override 'model.n_layers=many'" in result.stderr
    assert "Traceback" not in result.stderr


def test_launch_profile_validates() -> None:
    result = run("-m", "launch.cli", "configs/cluster/local_cpu.yaml", "nnodes=2")
    assert result.returncode == 2
    assert "backend local runs on one node" in result.stderr


@pytest.mark.parametrize("command", ["config", "plan", "train"])
def test_options_and_overrides_in_any_order(command: str) -> None:
    """Every subcommand takes ``key=value`` overrides before and after its options."""
    from data_pipeline.config_cli import parse_arguments
    from pretrain.cli import build_parser

    parser = build_parser()
    after = parse_arguments(parser, [command, str(EXPERIMENT), "--print-config", "train.lr=1e-3"])
    before = parse_arguments(parser, [command, str(EXPERIMENT), "train.lr=1e-3", "--print-config"])
    assert after.overrides == before.overrides == ["train.lr=1e-3"]
    assert after.print_config and before.print_config


def test_print_config_before_an_override() -> None:
    result = run("-m", "pretrain.cli", "config", str(EXPERIMENT), "--print-config", "train.lr=1e-3")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.001" in result.stdout


def test_one_exit_code_map_for_every_command() -> None:
    from data_pipeline.configuration import ConfigError
    from pretrain.checkpoint.layout import CheckpointError
    from pretrain.cli import COMMANDS, exit_code

    for name, *_ in COMMANDS:
        assert exit_code(ConfigError("bad key"), name) == 2
        assert exit_code(CheckpointError("no step"), name) == 1
        assert exit_code(KeyError("a bug"), name) is None  # a bug keeps its traceback
    assert exit_code(ValueError("streams do not divide"), "evaluate") == 1
