"""What both loaders share: the checked manifest, one split's shards, and how to open them."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from pretrain.config import DataConfig
from pretrain.loader.collate import Collator, Objective, make_collator
from pretrain.loader.manifest import Manifest, SplitInfo, check_compatible, load_manifest
from pretrain.loader.shards import BadShardStats, Sample, iter_shard


@dataclass
class SplitSource:
    """One split of a manifest, checked against the model, ready to stream shards from."""

    manifest: Manifest
    split: SplitInfo
    data_config: DataConfig
    storage_options: dict[str, Any] = field(default_factory=dict)
    bad_shards: BadShardStats = field(default_factory=BadShardStats)

    @classmethod
    def open(
        cls,
        manifest_url: str,
        split: str,
        data_config: DataConfig,
        *,
        expected_tokenizer_hash: str | None,
        expected_vocab_size: int | None,
        expected_dtype: str | None,
        storage_options: dict[str, Any] | None,
    ) -> SplitSource:
        manifest = load_manifest(manifest_url, storage_options)
        check_compatible(
            manifest,
            expected_tokenizer_hash=expected_tokenizer_hash,
            expected_vocab_size=expected_vocab_size,
            expected_dtype=expected_dtype,
        )
        return cls(manifest, manifest.split(split), data_config, dict(storage_options or {}))

    def open_shard(self, shard: int, start: int) -> Generator[Sample, None, None]:
        return iter_shard(
            self.split.shards[shard],
            start=start,
            dtype=self.manifest.dtype,
            chunk_len=self.manifest.chunk_len,
            on_bad_shard=self.data_config.on_bad_shard,
            stats=self.bad_shards,
            storage_options=self.storage_options,
        )

    def collator(self, objective: Objective) -> Collator:
        return make_collator(
            objective,
            self.manifest.special_ids,
            vocab_size=self.manifest.vocab_size,
            mlm_probability=self.data_config.mlm_probability,
            noise_density=self.data_config.noise_density,
            mean_span_length=self.data_config.mean_span_length,
        )
