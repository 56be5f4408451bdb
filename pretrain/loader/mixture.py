"""`MixtureLoader`: training batches drawn from several prepared datasets by weight, resumable
exactly. See docs/loader.md "Mixtures".

Every source is read by its own `TrainLoader` plan with the run's G streams, so each source keeps
everything a single dataset has (its own epochs, seeded shard order, contiguous or shuffled
order, bad-shard handling, exact positions). What the mixture adds is which source global stream
g reads at step k: ``schedule[k + phase(g)]``, with

* ``schedule`` a sequence that depends on the weights only: blocks of `BLOCK` segments, each
  block's seats given one at a time to the source furthest below its share of all seats so far
  (so every prefix holds each source's share to within about one segment), then laid out as one
  run per source (A A A A A A A B B C), so a row changes source a few times per block instead of
  at nearly every segment (each change costs the row its Transformer-XL memory);
* ``phase(g)`` a seeded offset in ``[0, BLOCK)`` from (fingerprints, seed, g), so the rows of one
  step sit at different places of the block pattern and every step mixes the sources.

Any window of n consecutive segments of one stream then holds each source's share to within
about ``1 + BLOCK / 2`` segments (the prefix error plus the partial blocks at both ends):
within 1 percentage point over 1,000 segments. A segment is one row of one step (``seq_len``
tokens, every one a target), so segment shares are token shares.

The state is the step position k (the same for every stream), each source's `TrainLoader` state
and the global segment count per source (for ``train/tokens/<name>``, kept rather than recounted
because the weights may change at resume).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pretrain.config import DataConfig, MixtureSource
from pretrain.loader.collate import Batch, Objective, with_memory_reset
from pretrain.loader.manifest import ManifestError, load_manifest
from pretrain.loader.order import seed_int, seeded_rng
from pretrain.loader.prefetch import Prefetcher
from pretrain.loader.state import STATE_FORMAT, LoaderStateError
from pretrain.loader.stream import Position, TokenStream
from pretrain.loader.train_loader import TrainLoader

logger = logging.getLogger(__name__)

BLOCK = 10  # segments per schedule block: longer runs per source, larger window error


class MixtureSchedule:
    """Which source each position of the shared sequence reads: a pure function of the
    (normalised) weights. Computed lazily and kept, one byte per position."""

    def __init__(self, weights: Sequence[float], block: int = BLOCK) -> None:
        if not weights or len(weights) > 255:
            raise ValueError(f"a mixture needs 1 to 255 sources, got {len(weights)}")
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.block = block
        self._table = bytearray()
        self._seats = [0] * len(weights)  # seats given so far, per source

    def _extend(self, size: int) -> None:
        weights, seats, n = self.weights, self._seats, len(self.weights)
        while len(self._table) < size:
            given = [0] * n
            total = len(self._table)
            for _ in range(self.block):
                total += 1
                # The source furthest below its share of the first `total` seats (ties: first).
                best = max(range(n), key=lambda s: weights[s] * total - seats[s])
                seats[best] += 1
                given[best] += 1
            for s in range(n):
                self._table.extend(bytes([s]) * given[s])

    def source(self, index: int) -> int:
        if index >= len(self._table):
            self._extend(index + 1)
        return self._table[index]

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The sources of positions ``[start, stop)``."""
        if stop > len(self._table):
            self._extend(stop)
        return np.frombuffer(bytes(self._table[start:stop]), dtype=np.uint8)


def stream_phase(fingerprints: Sequence[str], seed: int, stream: int) -> int:
    """Where in the schedule stream ``stream`` starts (the same for every set of weights)."""
    return int(seeded_rng("mixture-phase", tuple(fingerprints), seed, stream).integers(BLOCK))


def check_same_tokenizer(sources: Sequence[MixtureSource], storage: dict[str, Any]) -> None:
    """All sources must be tokenized alike: one tokenizer hash and one token dtype."""
    first = sources[0]
    head = load_manifest(first.manifest, storage)
    for other in sources[1:]:
        manifest = load_manifest(other.manifest, storage)
        for what, a, b in (
            ("tokenizer hash", head.tokenizer_hash, manifest.tokenizer_hash),
            ("dtype", head.dtype, manifest.dtype),
        ):
            if a != b:
                raise ManifestError(
                    f"data.mixture: {first.manifest} ({first.name}) and {other.manifest} "
                    f"({other.name}) differ in {what}: {a!r} vs {b!r}; every source must be "
                    "prepared with the same tokenizer and dtype"
                )


@dataclass
class _After:
    """Where the mixture stands after a step (what `state_dict` reports once it is taken)."""

    step: int
    positions: list[dict[int, Position]]  # per source
    segments: list[int]  # per source, over all streams


class MixtureLoader:
    """Training batches of a weighted mixture for one rank; `TrainLoader`'s interface."""

    def __init__(
        self,
        sources: Sequence[MixtureSource],
        *,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        grad_accum: int,
        seq_len: int,
        objective: Objective,
        seed: int,
        data_config: DataConfig | None = None,
        expected_tokenizer_hash: str | None = None,
        expected_vocab_size: int | None = None,
        expected_dtype: str | None = None,
        storage_options: dict[str, Any] | None = None,
        mem_len: int | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        check_same_tokenizer(sources, dict(storage_options or {}))
        self.sources = list(sources)
        self.names = [s.name for s in sources]
        self.data_config = data_config or DataConfig()
        self.loaders = [
            TrainLoader(
                source.manifest,
                rank=rank,
                world_size=world_size,
                micro_batch_size=micro_batch_size,
                grad_accum=grad_accum,
                seq_len=seq_len,
                objective=objective,
                seed=seed,
                data_config=self.data_config,
                expected_tokenizer_hash=expected_tokenizer_hash,
                expected_vocab_size=expected_vocab_size,
                expected_dtype=expected_dtype,
                storage_options=storage_options,
                mem_len=mem_len,
            )
            for source in sources
        ]
        head = self.loaders[0]
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.seq_len, self.objective = seq_len, objective
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.num_streams, self.stream_ids = head.num_streams, head.stream_ids
        self.collator = head.collator  # one tokenizer: the same special ids for every source
        self.order = head.order
        self.schedule = MixtureSchedule([s.weight for s in sources])
        fingerprints = [loader.fingerprint for loader in self.loaders]
        self.phases = [stream_phase(fingerprints, seed, g) for g in range(self.num_streams)]
        self._after = _After(
            0, [dict(loader._positions) for loader in self.loaders], [0] * len(sources)
        )
        self._streams: list[list[TokenStream]] = []
        # The step after a resume with a changed mixture: every row's text before it may be
        # another source's under the old schedule, so every row breaks there.
        self._changed_at: int | None = None
        self._produced: _After | None = None
        self._prefetcher: Prefetcher[tuple[list[Batch], _After]] | None = None

    # -- what the trainer reads about the data -------------------------------------------

    @property
    def fingerprint(self) -> str:
        """Of the mixture: names, weights and each source's dataset fingerprint."""
        parts = [
            (s.name, s.weight, loader.fingerprint)
            for s, loader in zip(self.sources, self.loaders, strict=True)
        ]
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    @property
    def source(self) -> Any:
        """The first source's `SplitSource` (all sources share its tokenizer)."""
        return self.loaders[0].source

    @property
    def tokens(self) -> int:
        return sum(loader.tokens for loader in self.loaders)

    @property
    def utf8_bytes(self) -> int:
        return sum(loader.utf8_bytes for loader in self.loaders)

    @property
    def bad_shards(self) -> tuple[int, int]:
        counts = [loader.bad_shards for loader in self.loaders]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    @property
    def hash_mismatches(self) -> int:
        return sum(loader.hash_mismatches for loader in self.loaders)

    @property
    def step(self) -> int:
        """Steps taken (each stream's schedule position)."""
        return self._after.step

    def source_tokens(self) -> dict[str, int]:
        """Tokens (``seq_len`` per segment) read from each source so far, over all ranks."""
        return {n: c * self.seq_len for n, c in zip(self.names, self._after.segments, strict=True)}

    def source_epochs(self) -> dict[str, float]:
        """How many passes over each source's training split those tokens are."""
        return {
            name: tokens / max(1, loader.tokens)
            for (name, tokens), loader in zip(
                self.source_tokens().items(), self.loaders, strict=True
            )
        }

    def source_of(self, stream: int, step: int) -> int:
        """The source global stream ``stream`` reads at step ``step``."""
        return self.schedule.source(step + self.phases[stream])

    # -- iteration ------------------------------------------------------------------------

    def _start(self) -> None:
        self._streams = [
            [
                TokenStream(loader.plan, g, self._after.positions[s][g], loader.source.open_shard)
                for g in self.stream_ids
            ]
            for s, loader in enumerate(self.loaders)
        ]
        self._produced = _After(
            self._after.step, [dict(p) for p in self._after.positions], list(self._after.segments)
        )
        self._prefetcher = Prefetcher(self._produce_step, self.data_config.prefetch_batches)

    def _produce_step(self) -> tuple[list[Batch], _After]:
        assert self._produced is not None
        step = self._produced.step
        # Fresh dicts: the previous step's are already the consumer's.
        positions = [dict(p) for p in self._produced.positions]
        read, advance = self.collator.segment_tokens(self.seq_len)
        b = self.micro_batch_size
        batches = []
        for k in range(self.grad_accum):
            rows, breaks = [], []
            for j in range(k * b, (k + 1) * b):
                g = self.stream_ids[j]
                s = self.source_of(g, step)
                stream = self._streams[s][j]
                seed = seed_int(self.seed, self.objective, self.names[s], g, *stream.position)
                tokens, doc_start = stream.take(read, advance)
                switched = step == 0 or step == self._changed_at or self.source_of(g, step - 1) != s
                if switched:
                    # Another source's text came before: it is no context for this one.
                    doc_start = doc_start.copy()
                    doc_start[:1] = True
                rows.append((tokens, doc_start, seed))
                breaks.append(switched or stream.last_take_breaks)
                positions[s][g] = stream.position
            batches.append(with_memory_reset(self.collator(rows, self.seq_len), breaks))
        counts = np.bincount(
            [self.source_of(g, step) for g in range(self.num_streams)], minlength=len(self.names)
        )
        segments = [a + int(c) for a, c in zip(self._produced.segments, counts, strict=True)]
        self._produced = _After(step + 1, positions, segments)
        return batches, self._produced

    def next_step(self) -> list[Batch]:
        """The grad_accum micro-batches of the next optimizer step."""
        if self._prefetcher is None:
            self._start()
        assert self._prefetcher is not None
        batches, self._after = self._prefetcher.get()
        return batches

    def _stop(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        for streams in self._streams:
            for stream in streams:
                stream.close()
        self._streams = []

    def close(self) -> None:
        self._stop()
        for loader in self.loaders:
            loader.close()

    def __enter__(self) -> MixtureLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing --------------------------------------------------------------------

    def _described(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "weight": s.weight, "fingerprint": loader.fingerprint}
            for s, loader in zip(self.sources, self.loaders, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        """Positions after the last step returned by `next_step` (not the read-ahead)."""
        sources = {}
        for name, loader, positions in zip(
            self.names, self.loaders, self._after.positions, strict=True
        ):
            loader._positions = dict(positions)
            sources[name] = loader.state_dict()
        return {
            "format": STATE_FORMAT,
            "mixture": self._described(),
            "seed": self.seed,
            "num_streams": self.num_streams,
            "step": self._after.step,
            "segments": dict(zip(self.names, self._after.segments, strict=True)),
            "sources": sources,
        }

    def load_state_dict(self, state: dict[str, Any], *, allow_new_streams: bool = False) -> None:
        """Continue from ``state`` (this rank's, or `merge_states` of all ranks' states).

        A new stream count (``train.allow_new_global_batch``) is not supported for a mixture
        yet: the per-source re-plan and the schedule's phases would both have to move, so it is
        refused, naming the flag, rather than read some samples twice.

        A changed mixture (weights, sources added or removed, a source's data changed) is
        refused unless ``data.allow_mixture_change``; then sources kept with the same data
        continue where they were, new ones start at their beginning, and the schedule goes on
        from the same step with the new weights; that first step is a break for every row (what
        a row read before it was chosen by the old schedule, maybe from another source).
        """
        if "mixture" not in state:
            raise LoaderStateError(
                "loader state is of a single dataset (data.manifest), this run reads data.mixture"
            )
        if state.get("format") != STATE_FORMAT:
            raise LoaderStateError(
                f"loader state format {state.get('format')!r} is not {STATE_FORMAT}"
            )
        if allow_new_streams and state.get("num_streams") != self.num_streams:
            raise LoaderStateError(
                f"train.allow_new_global_batch: a mixture run cannot change its stream count "
                f"({state.get('num_streams')} -> {self.num_streams}) yet; keep world_size x "
                "micro_batch_size x grad_accum"
            )
        if state["seed"] != self.seed or state["num_streams"] != self.num_streams:
            raise LoaderStateError(
                f"loader state is for seed {state['seed']} with {state['num_streams']} streams, "
                f"this loader has seed {self.seed} with {self.num_streams} streams (world_size x "
                "micro_batch_size x grad_accum must stay the same)"
            )
        changes = mixture_changes(state["mixture"], self._described())
        if changes and not self.data_config.allow_mixture_change:
            raise LoaderStateError(
                "data.mixture changed since the checkpoint: "
                + "; ".join(changes)
                + ". Set data.allow_mixture_change=true to resume with the new mixture"
            )
        for line in changes:
            logger.info("mixture changed at resume (data.allow_mixture_change): %s", line)
        saved = {entry["name"]: entry for entry in state["mixture"]}
        positions, segments = [], []
        for name, loader in zip(self.names, self.loaders, strict=True):
            kept = name in saved and saved[name]["fingerprint"] == loader.fingerprint
            if kept:
                loader.load_state_dict(state["sources"][name])
            else:
                loader._positions = {g: (0, 0, 0) for g in loader.stream_ids}
            positions.append(dict(loader._positions))
            segments.append(int(state["segments"].get(name, 0)) if kept else 0)
        self._stop()
        self.order = self.loaders[0].order
        self._after = _After(int(state["step"]), positions, segments)
        self._changed_at = int(state["step"]) if changes else None


def mixture_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """What differs between two mixtures described as [{name, weight, fingerprint}, ...]."""
    before = {e["name"]: e for e in old}
    after = {e["name"]: e for e in new}
    # Weights are relative: compare shares, so 7/3 is the same mixture as 0.7/0.3.
    old_total = sum(float(e["weight"]) for e in old)
    new_total = sum(float(e["weight"]) for e in new)
    changes = []
    for name, entry in after.items():
        if name not in before:
            changes.append(f"source {name!r} added")
            continue
        if entry["fingerprint"] != before[name]["fingerprint"]:
            changes.append(f"source {name!r} has other data (its manifest changed)")
        share, old_share = (
            float(entry["weight"]) / new_total,
            float(before[name]["weight"]) / old_total,
        )
        if abs(share - old_share) > 1e-12:
            changes.append(f"share of {name!r} {old_share:.4g} -> {share:.4g}")
    changes += [f"source {name!r} removed" for name in before if name not in after]
    return changes
