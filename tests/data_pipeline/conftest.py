"""Fixtures for the data pipeline tests: slices of the bundled corpora and small tokenizers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from data_pipeline.configuration import from_dict
from data_pipeline.schemas import PrepareConfig, TokenizerTrainingConfig
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.tokenizer_training import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPORA = REPO_ROOT / "corpora"


def cli_env() -> dict[str, str]:
    """Environment for `python -m data_pipeline.cli` subprocesses: this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline.cli", *args]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slices of the real corpora: tinyshakespeare (first 200 kB), WikiText-2 valid (first
    200 kB), and the first 3 Gutenberg books as JSON Lines."""
    import gzip
    import json

    d = tmp_path_factory.mktemp("corpus")
    (d / "shakespeare.txt").write_bytes(
        (CORPORA / "tinyshakespeare" / "input.txt").read_bytes()[:200_000]
    )
    wiki = (CORPORA / "wikitext-2" / "valid.txt").read_bytes()[:200_000]
    (d / "wikitext.txt").write_bytes(wiki[: wiki.rfind(b"\n") + 1])
    books = []
    with gzip.open(CORPORA / "gutenberg" / "gutenberg-8.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rec["text"] = rec["text"][:60_000]
            books.append(json.dumps(rec))
            if len(books) == 3:
                break
    (d / "books.jsonl").write_text("\n".join(books) + "\n", encoding="utf-8")
    return d


def tokenizer_config(
    output: Path, kind: str, paths: list[str], **extra: Any
) -> TokenizerTrainingConfig:
    tree: dict[str, Any] = {
        "name": kind,
        "output": str(output),
        "kind": kind,
        "vocab_size": 800,
        "source": {"paths": paths, "format": "text", "text_mode": "file"},
        "sample": {"max_items": 2000, "item_chars": 2048},
        "num_threads": 1,
    }
    tree.update(extra)
    return from_dict(TokenizerTrainingConfig, tree)


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> str:
    """A sentencepiece char tokenizer (with byte fallback) trained on the shakespeare slice."""
    out = tmp_path_factory.mktemp("tok") / "char"
    train_tokenizer(tokenizer_config(out, "sp_char", [str(corpus_dir / "shakespeare.txt")]))
    return str(out)


@pytest.fixture
def recipe(tmp_path: Path, char_tokenizer: str, corpus_dir: Path) -> Callable[..., PrepareConfig]:
    """A small prepare config writing under tmp_path; keyword arguments override its keys."""

    def make(**over: Any) -> PrepareConfig:
        source = {
            "paths": [str(corpus_dir / "shakespeare.txt")],
            "format": "text",
            "text_mode": "paragraphs",
        }
        source.update(over.pop("source", {}))
        tree: dict[str, Any] = {
            "name": "test",
            "output": str(tmp_path / "out"),
            "tokenizer": char_tokenizer,
            "source": source,
            "split": {"mode": "hash", "validation_fraction": 0.1},
            "chunk_len": 64,
            "shard_bytes": 65536,
            "unit_bytes": 65536,
        }
        tree.update(over)
        return from_dict(PrepareConfig, tree)

    return make


def load_tokenizer(path: str) -> Tokenizer:
    return Tokenizer.load(path)
