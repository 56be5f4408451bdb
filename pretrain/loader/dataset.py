"""What both loaders share: the checked manifest, one split's shards, and how to open them."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

from pretrain.config import DataConfig
from pretrain.faults import Faults
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
    faults: Faults = field(default_factory=Faults.from_env)  # tests' read errors (faults.py)

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
            vocab_size=self.manifest.vocab_size,
            read_retries=self.data_config.read_retries,
            faults=self.faults,
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


class SplitReader:
    """What `TrainLoader` and `ValidationLoader` share: this rank's place, the split opened from
    the manifest and checked against the model, its collator, and the figures the trainer and
    the evaluator read."""

    def __init__(
        self,
        manifest_url: str,
        split: Literal["train_split", "validation_split"],
        *,
        rank: int,
        world_size: int,
        seq_len: int,
        objective: Objective,
        seed: int,
        data_config: DataConfig | None,
        expected_tokenizer_hash: str | None,
        expected_vocab_size: int | None,
        expected_dtype: str | None,
        storage_options: dict[str, Any] | None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.data_config = data_config or DataConfig()
        self.data_config.validate()
        self.source = SplitSource.open(
            manifest_url,
            getattr(self.data_config, split),
            self.data_config,
            expected_tokenizer_hash=expected_tokenizer_hash,
            expected_vocab_size=expected_vocab_size,
            expected_dtype=expected_dtype,
            storage_options=storage_options,
        )
        self.rank, self.world_size = rank, world_size
        self.seq_len, self.objective, self.seed = seq_len, objective, seed
        self.collator = self.source.collator(objective)

    @property
    def fingerprint(self) -> str:
        return self.source.manifest.fingerprint

    @property
    def tokens(self) -> int:
        return self.source.split.tokens

    @property
    def utf8_bytes(self) -> int:
        return self.source.split.utf8_bytes
