"""Small real datasets for tests, made through the real `data-pipeline` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def data_pipeline(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, f"data-pipeline {' '.join(args)} failed:\n{result.stderr}"


def prepare_char_dataset(
    root: Path,
    text: str,
    *,
    text_mode: str = "file",
    chunk_len: int = 64,
    unit_bytes: int = 16384,
    shard_bytes: int = 65536,
    num_sentinels: int = 16,
) -> Path:
    """Train a character-level sentencepiece tokenizer on ``text`` and prepare it into shards
    (90/10 split by position, like nanoGPT). Returns the manifest's path."""
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    source = f"source:\n  paths: [{corpus}]\n  format: text\n  text_mode: {text_mode}\n"
    (root / "tokenizer.yaml").write_text(
        f"name: char\noutput: {root / 'tokenizer'}\nkind: sp_char\nbyte_fallback: false\n"
        f"{source}special_tokens:\n  num_sentinels: {num_sentinels}\n"
    )
    (root / "data.yaml").write_text(
        f"name: data\noutput: {root / 'data'}\ntokenizer: {root / 'tokenizer'}\n{source}"
        "split:\n  mode: position\n  validation_fraction: 0.1\n"
        f"chunk_len: {chunk_len}\nunit_bytes: {unit_bytes}\nshard_bytes: {shard_bytes}\n"
    )
    data_pipeline("train-tokenizer", str(root / "tokenizer.yaml"))
    data_pipeline("prepare", str(root / "data.yaml"), "--workers", "1")
    manifest = root / "data" / "manifest.json"
    assert manifest.is_file()
    return manifest
