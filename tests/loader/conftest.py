"""Real shards on disk, built once per session: from tinyshakespeare by the loader's own fixture
builder (see shard_fixture), and by the real `data-pipeline train-tokenizer` + `prepare` CLIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.prepared_data import prepare_char_dataset
from tests.loader.shard_fixture import TINYSHAKESPEARE, BuiltDataset, build_dataset

PREPARED_CHARS = 48_000  # of tinyshakespeare: ~700 samples of 64 tokens, a few seconds to prepare


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> BuiltDataset:
    """~550 train samples of 64 tokens in 12 shards over 2 units; 69 validation samples."""
    return build_dataset(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def fresh_dataset(tmp_path: Path) -> BuiltDataset:
    """A private copy that a test may damage (bad-shard tests)."""
    return build_dataset(tmp_path / "shards", text_bytes=12_000, shard_samples=24)


@pytest.fixture(scope="session")
def prepared_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`data-pipeline prepare` output: a character-level sentencepiece tokenizer (16 sentinels)
    and uint16 WebDataset shards of the first 48 kB of tinyshakespeare, paragraphs as documents,
    chunk_len 64, 12 kB units and 64 kB shards (several units of several shards each)."""
    text = TINYSHAKESPEARE.read_text(encoding="utf-8")[:PREPARED_CHARS]
    return prepare_char_dataset(
        tmp_path_factory.mktemp("prepared"), text, text_mode="paragraphs", unit_bytes=12288
    )
