"""Real shards on disk, built once per session from tinyshakespeare (see shard_fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loader.shard_fixture import TINYSHAKESPEARE, BuiltDataset, build_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> BuiltDataset:
    """~550 train samples of 64 tokens in 12 shards over 2 units; 69 validation samples."""
    if not TINYSHAKESPEARE.exists():
        pytest.skip(f"corpus {TINYSHAKESPEARE} is missing (see ../shared/data/README.md)")
    return build_dataset(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def fresh_dataset(tmp_path: Path) -> BuiltDataset:
    """A private copy that a test may damage (bad-shard tests)."""
    return build_dataset(tmp_path / "shards", text_bytes=12_000, shard_samples=24)
