"""The loader refuses data that does not fit the model, before the first step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pretrain.loader import ManifestError
from tests.loader.helpers import make_loader
from tests.loader.shard_fixture import TOKENIZER_HASH, VOCAB_SIZE, BuiltDataset, build_dataset


def test_matching_expectations_pass(dataset: BuiltDataset) -> None:
    loader = make_loader(
        dataset,
        expected_tokenizer_hash=TOKENIZER_HASH,
        expected_vocab_size=VOCAB_SIZE + 11,  # a padded embedding table is fine
        expected_dtype="uint16",
    )
    assert loader.fingerprint and loader.utf8_bytes > 0 and loader.tokens > 0
    loader.close()


def test_tokenizer_hash_mismatch(dataset: BuiltDataset) -> None:
    with pytest.raises(ManifestError, match=r"tokenizer hash .* does not match"):
        make_loader(dataset, expected_tokenizer_hash="some-other-tokenizer")


def test_vocab_larger_than_model(dataset: BuiltDataset) -> None:
    with pytest.raises(ManifestError, match=rf"vocab_size {VOCAB_SIZE} exceeds .* 200"):
        make_loader(dataset, expected_vocab_size=200)


def test_dtype_mismatch(dataset: BuiltDataset) -> None:
    with pytest.raises(ManifestError, match=r"dtype 'uint16' does not match .*'uint32'"):
        make_loader(dataset, expected_dtype="uint32")


def test_uint32_shards_read(tmp_path: Path) -> None:
    built = build_dataset(tmp_path, text_bytes=6_000, dtype="uint32")
    with make_loader(built, expected_dtype="uint32") as loader:
        batch = loader.next_step()[0]
    first = built.samples["train"]
    assert batch["input_ids"].dtype.is_floating_point is False
    assert np.isin(batch["input_ids"].numpy(), np.concatenate(first)).all()


def test_missing_or_malformed_manifest(tmp_path: Path, dataset: BuiltDataset) -> None:
    with pytest.raises(ManifestError, match="not found"):
        make_loader(dataset.__class__(tmp_path / "nope.json", tmp_path, {}, {}))
    bad = tmp_path / "manifest.json"
    bad.write_text('{"format_version": 1, "dtype": "uint16"}')
    with pytest.raises(ManifestError, match="malformed manifest"):
        make_loader(dataset.__class__(bad, tmp_path, {}, {}))
