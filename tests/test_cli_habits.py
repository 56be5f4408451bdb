"""What users expect of every CLI: --version, -q/-v, defaults in --help, each command's own
override examples, options and overrides in any order, CPUs counted from this process's
affinity, and a run's folders named after its experiment."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest

from data_pipeline.configuration import ConfigError, load_config
from pretrain.config import ExperimentConfig
from tests.conftest import CORPORA, REPO_ROOT

CLIS = ["data_pipeline.cli", "pretrain.cli", "launch.cli"]
EXPERIMENT = REPO_ROOT / "configs" / "experiments" / "shakespeare_xl.yaml"
RECIPE = REPO_ROOT / "configs" / "data" / "shakespeare_char.yaml"


def run(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )


@pytest.mark.parametrize("module", CLIS)
def test_version(module: str) -> None:
    result = run("-m", module, "--version")
    assert result.returncode == 0, result.stderr
    assert "(mnemos) " in result.stdout


@pytest.mark.parametrize("module", CLIS)
def test_quiet_and_verbose_are_offered(module: str) -> None:
    out = run("-m", module, "--help").stdout
    assert "-q, --quiet" in out and "-v, --verbose" in out


@pytest.mark.parametrize(
    ("args", "own_key", "foreign_key"),
    [
        (["data_pipeline.cli", "prepare"], "chunk_len=", "train.lr="),
        (["data_pipeline.cli", "train-tokenizer"], "vocab_size=", "train.lr="),
        (["pretrain.cli", "train"], "train.lr=", "chunk_len="),
    ],
)
def test_help_shows_defaults_and_the_commands_own_keys(
    args: list[str], own_key: str, foreign_key: str
) -> None:
    out = run("-m", *args, "--help").stdout
    assert own_key in out and foreign_key not in out, out
    if args[-1] == "prepare":
        assert "(default: 1)" in out  # --num-tasks


def every_help_text() -> dict[str, str]:
    """Each CLI's and each subcommand's --help, as argparse formats it."""
    import argparse
    import importlib

    texts = {}
    for module in CLIS:
        parser = importlib.import_module(module).build_parser()
        texts[module] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    texts[f"{module} {name}"] = sub.format_help()
    return texts


def test_help_texts_print_as_written() -> None:
    """An option's default is shown once, and an example continued over two lines keeps its
    backslash (in a plain string literal a backslash before the newline joins the lines)."""
    texts = every_help_text()
    assert len(texts) > 10
    for name, text in texts.items():
        for line in text.splitlines():
            assert line.count("(default:") <= 1, f"{name}: {line}"
        examples = text.partition("\nexamples:\n")[2]
        for line in examples.splitlines():
            command = line.strip().split(" #")[0].rstrip()  # an example may end in a comment
            assert "    " not in command, f"{name}: an example's lines run together: {line}"


def test_workers_default_to_the_cpus_this_process_may_use() -> None:
    """Pinned to one CPU (as a SLURM allocation or taskset does), the default is 1, not all of
    the machine's."""
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    out = run("-m", "data_pipeline.cli", "prepare", "--help", prefix=("taskset", "-c", "0")).stdout
    workers = out[out.index("\n  --workers") + 1 :].split("\n  --", 1)[0]
    assert "(default: 1)" in workers, workers


@pytest.mark.parametrize(
    "args",
    [
        # data-pipeline prepare's own --help example: an override after an option
        ["data_pipeline.cli", "prepare", str(RECIPE), "--workers", "2", "chunk_len=1024"],
        ["data_pipeline.cli", "prepare", str(RECIPE), "chunk_len=1024", "--workers", "2"],
        ["pretrain.cli", "config", str(EXPERIMENT), "--print-config", "train.lr=1e-3"],
        ["pretrain.cli", "config", str(EXPERIMENT), "train.lr=1e-3", "--print-config"],
        ["pretrain.cli", "plan", str(EXPERIMENT), "--gpus", "8", "train.lr=1e-3"],
    ],
)
def test_options_and_overrides_in_any_order(args: list[str]) -> None:
    extra = [] if "--print-config" in args or "plan" in args else ["--print-config"]
    result = run("-m", *args, *extra)
    assert result.returncode == 0, result.stderr
    if "config" in args or "prepare" in args:
        assert ("chunk_len: 1024" in result.stdout) or ("lr: 0.001" in result.stdout)


def test_an_unknown_option_is_still_refused() -> None:
    result = run("-m", "data_pipeline.cli", "prepare", str(RECIPE), "--workerz", "2")
    assert result.returncode == 2 and "unrecognized arguments: --workerz" in result.stderr


def test_a_runs_folders_are_named_after_its_experiment() -> None:
    config = load_config(ExperimentConfig, EXPERIMENT, ["name=other_run"])
    assert config.checkpoint.dir == "runs/other_run/checkpoints"
    assert config.tracking.experiment == "other_run"
    explicit = load_config(ExperimentConfig, EXPERIMENT, ["checkpoint.dir=/data/ckpt"])
    assert explicit.checkpoint.dir == "/data/ckpt"


def test_a_name_that_cannot_name_a_folder_is_refused() -> None:
    with pytest.raises(ConfigError, match="name"):
        load_config(ExperimentConfig, EXPERIMENT, ["name=../elsewhere"])


def test_the_bundled_corpora_match_their_checksums() -> None:
    """corpora/SHA256SUMS is what corpora/README.md promises; a changed corpus changes every
    figure in docs/benchmarks.md, so it must be deliberate."""
    lines = (CORPORA / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((CORPORA / name).read_bytes()).hexdigest() == digest, name


def test_nothing_the_product_ships_points_outside_its_checkout() -> None:
    shipped = ["configs", "tests", "benchmarks", "docs", "pretrain", "data_pipeline", "launch"]
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in shipped
        for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".yaml", ".md", ".sh"}
        and "../" + "shared" in path.read_text(errors="replace")
    ]
    assert "../" + "shared" not in (REPO_ROOT / "README.md").read_text()
    assert offenders == []
