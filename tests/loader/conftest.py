"""Real shards on disk, built once per session: from tinyshakespeare by the loader's own fixture
builder (see shard_fixture), and by the real `data-pipeline train-tokenizer` + `prepare` CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.loader.shard_fixture import TINYSHAKESPEARE, BuiltDataset, build_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARED_CHARS = 48_000  # of tinyshakespeare: ~700 samples of 64 tokens, a few seconds to prepare


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


def _data_pipeline(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, f"data-pipeline {' '.join(args)} failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def prepared_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`data-pipeline prepare` output: a character-level sentencepiece tokenizer (16 sentinels)
    and uint16 WebDataset shards of the first 48 kB of tinyshakespeare, paragraphs as documents,
    chunk_len 64, 12 kB units and 64 kB shards (several units of several shards each)."""
    if not TINYSHAKESPEARE.exists():
        pytest.skip(f"corpus {TINYSHAKESPEARE} is missing (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("prepared")
    corpus = root / "slice.txt"
    corpus.write_text(TINYSHAKESPEARE.read_text(encoding="utf-8")[:PREPARED_CHARS], "utf-8")
    source = f"source:\n  paths: [{corpus}]\n  format: text\n  text_mode: paragraphs\n"
    (root / "tokenizer.yaml").write_text(
        f"name: slice_char\noutput: {root / 'tokenizer'}\nkind: sp_char\nbyte_fallback: false\n"
        f"{source}special_tokens:\n  num_sentinels: 16\n"
    )
    (root / "data.yaml").write_text(
        f"name: slice\noutput: {root / 'data'}\ntokenizer: {root / 'tokenizer'}\n{source}"
        "split:\n  mode: position\n  validation_fraction: 0.1\n"
        "chunk_len: 64\nunit_bytes: 12288\nshard_bytes: 65536\n"
    )
    _data_pipeline("train-tokenizer", str(root / "tokenizer.yaml"))
    _data_pipeline("prepare", str(root / "data.yaml"), "--workers", "1")
    manifest = root / "data" / "manifest.json"
    assert manifest.is_file()
    return manifest
