"""`ValidationLoader`: every validation sample exactly once across ranks, the same number of
batches on every rank.

The split is read in manifest order (no shuffling) as ``world_size x batch_size`` one-pass
streams over contiguous sample ranges (the same `StreamPlan` as training, unshuffled); rank r's
row b is stream ``r*batch_size + b``, so row b of consecutive batches is consecutive text and
Transformer-XL memory can be carried through evaluation. Every rank computes the batch count
from the manifest alone: the longest stream's segment count. Streams that finish early yield
padding with ignored targets, so no rank leaves a collective early.

Causal LM predicts every token once except the first token of each stream (there is nothing
before it to condition on): ``predicted_tokens`` says how many are predicted in total.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pretrain.config import DataConfig
from pretrain.loader.collate import Batch, Objective, with_memory_reset
from pretrain.loader.dataset import SplitReader
from pretrain.loader.order import StreamPlan, seed_int
from pretrain.loader.prefetch import Prefetcher
from pretrain.loader.stream import TokenStream


class ValidationLoader(SplitReader):
    """Iterate to get ``num_batches`` batches of ``batch_size`` rows; iterable more than once."""

    def __init__(
        self,
        manifest_url: str,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seq_len: int,
        objective: Objective,
        seed: int,
        data_config: DataConfig | None = None,
        expected_tokenizer_hash: str | None = None,
        expected_vocab_size: int | None = None,
        expected_dtype: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """Validation is always read in order (``data_config.order`` applies to training only)."""
        super().__init__(
            manifest_url,
            "validation_split",
            rank=rank,
            world_size=world_size,
            seq_len=seq_len,
            objective=objective,
            seed=seed,
            data_config=data_config,
            expected_tokenizer_hash=expected_tokenizer_hash,
            expected_vocab_size=expected_vocab_size,
            expected_dtype=expected_dtype,
            storage_options=storage_options,
        )
        self.batch_size = batch_size
        self.num_streams = world_size * batch_size
        self.plan = StreamPlan(
            self.source.split.shards,
            fingerprint=self.fingerprint,
            seed=seed,
            num_streams=self.num_streams,
            shuffle=False,
        )
        self.stream_ids = list(range(rank * batch_size, (rank + 1) * batch_size))
        chunk = self.source.manifest.chunk_len
        lengths = [self.plan.stream_samples(0, g) * chunk for g in range(self.num_streams)]
        _, advance = self.collator.segment_tokens(seq_len)
        if objective == "causal_lm":  # n tokens give n - 1 targets
            self.num_batches = max(math.ceil(max(n - 1, 0) / advance) for n in lengths)
            self.predicted_tokens = sum(max(n - 1, 0) for n in lengths)
        else:
            self.num_batches = max(math.ceil(n / advance) for n in lengths)
            self.predicted_tokens = sum(lengths)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        streams = [
            TokenStream(self.plan, g, (0, 0, 0), self.source.open_shard, cycle=False)
            for g in self.stream_ids
        ]
        read, advance = self.collator.segment_tokens(self.seq_len)

        def produce() -> Batch:
            rows, breaks = [], []
            for stream in streams:
                seed = seed_int(
                    self.seed, "validation", self.objective, stream.stream, *stream.position
                )
                tokens, doc_start = stream.take(read, advance)
                if self.objective == "causal_lm" and tokens.shape[0] < 2:
                    tokens, doc_start = tokens[:0], doc_start[:0]  # a lone token has no target
                rows.append((tokens, doc_start, seed))
                breaks.append(stream.last_take_breaks)
            return with_memory_reset(self.collator(rows, self.seq_len), breaks)

        prefetcher = Prefetcher(produce, self.data_config.prefetch_batches, "validation-prefetch")
        try:
            for _ in range(self.num_batches):
                yield prefetcher.get()
        finally:
            prefetcher.close()
            for stream in streams:
                stream.close()
