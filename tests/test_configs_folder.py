"""Every YAML file shipped under configs/ loads and validates with the schema of its folder."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from data_pipeline.configuration import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# folder under configs/ -> "module:Schema"; a YAML in a folder not listed here fails the test, so
# no shipped config goes unchecked.
SCHEMAS = {
    "model": "pretrain.config:ModelConfig",
    "experiments": "pretrain.config:ExperimentConfig",
    "cluster": "launch.config:ClusterConfig",
    "data": "data_pipeline.schemas:PrepareConfig",
    "tokenizer": "data_pipeline.schemas:TokenizerTrainingConfig",
    "finetune": "pretrain.finetune.config:FinetuneConfig",
}

CONFIG_FILES = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def schema_for(path: Path) -> type:
    folder = path.relative_to(REPO_ROOT / "configs").parts[0]
    if folder not in SCHEMAS:
        pytest.fail(f"{path}: no schema is registered for configs/{folder}/ in {__file__}")
    module, _, name = SCHEMAS[folder].partition(":")
    schema: type = getattr(importlib.import_module(module), name)
    return schema


def test_configs_exist() -> None:
    folders = {p.relative_to(REPO_ROOT / "configs").parts[0] for p in CONFIG_FILES}
    assert set(SCHEMAS) <= folders


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_config_file_validates(path: Path) -> None:
    load_config(schema_for(path), path)
