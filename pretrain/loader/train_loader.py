"""`TrainLoader`: each rank's training batches, Transformer-XL ordered, resumable exactly.

Rank r owns the global streams ``r*S .. r*S+S-1`` with S = micro_batch_size x grad_accum; row b
of micro-batch k is stream ``r*S + k*micro_batch_size + b`` at every step, so that row continues
the same text from step to step (and across gradient accumulation). A background thread builds
whole steps ahead into a bounded buffer; each step carries the stream positions *after* it, and
`state_dict()` reports the positions of the last step the trainer took, never the read-ahead.

The order (``DataConfig.order``): "contiguous" (each row continues its text, for Transformer-XL
memory) or "shuffled" (each row reads a random seq_len window each step, for models without
memory); "auto" picks shuffled when the caller says ``mem_len=0`` and contiguous otherwise
(also when ``mem_len`` is not given). See docs/loader.md "Order".
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pretrain.config import DataConfig
from pretrain.loader.collate import Batch, Objective, with_memory_reset
from pretrain.loader.dataset import SplitReader
from pretrain.loader.order import Plan, ShuffledPlan, StreamPlan, seed_int
from pretrain.loader.prefetch import Prefetcher
from pretrain.loader.replan import TransitionPlan
from pretrain.loader.state import LoaderStateError, make_state, order_of, positions_for
from pretrain.loader.stream import Position, TokenStream

Step = tuple[list[Batch], dict[int, Position]]
Order = Literal["contiguous", "shuffled"]


def resolve_order(order: str, mem_len: int | None) -> Order:
    """The order ``DataConfig.order`` means for a model with ``mem_len`` (None: not known)."""
    if order == "shuffled":
        if mem_len:
            raise ValueError(
                f"data.order shuffled with mem_len {mem_len}: Transformer-XL memory would carry "
                "unrelated text from step to step; use contiguous (or auto)"
            )
        return "shuffled"
    if order == "contiguous":
        return "contiguous"
    if order != "auto":
        raise ValueError(f"order must be auto, contiguous or shuffled, got {order!r}")
    return "shuffled" if mem_len == 0 else "contiguous"


class TrainLoader(SplitReader):
    """Batches of the training split for one rank. See docs/loader.md."""

    def __init__(
        self,
        manifest_url: str,
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
        """``mem_len``: the model's Transformer-XL memory length, which ``data_config.order``
        "auto" needs (0: shuffled; > 0 or None: contiguous)."""
        super().__init__(
            manifest_url,
            "train_split",
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
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.streams_per_rank = micro_batch_size * grad_accum
        self.num_streams = world_size * self.streams_per_rank
        split = self.source.split
        if split.samples < self.num_streams:
            raise ValueError(
                f"split {split.name!r} has {split.samples} samples, fewer than the "
                f"{self.num_streams} streams (world_size x micro_batch_size x grad_accum); "
                "prepare more data or a smaller chunk_len"
            )
        self.plan: Plan
        self.order: Order = resolve_order(self.data_config.order, mem_len)
        self._mem_len = mem_len
        self._set_order(self.order)
        first = rank * self.streams_per_rank
        self.stream_ids = list(range(first, first + self.streams_per_rank))
        self._positions: dict[int, Position] = {g: (0, 0, 0) for g in self.stream_ids}
        self._streams: list[TokenStream] = []
        self._prefetcher: Prefetcher[Step] | None = None

    def _set_order(self, order: Order) -> None:
        chunk_len = self.source.manifest.chunk_len
        _, advance = self.collator.segment_tokens(self.seq_len)
        if self.data_config.window_shift != "none" and (
            order == "contiguous" or advance > chunk_len
        ):
            why = (
                "contiguous order" if order == "contiguous" else f"seq_len > chunk_len {chunk_len}"
            )
            warnings.warn(
                f"data.window_shift={self.data_config.window_shift} has no effect with {why}: "
                "only shuffled windows of a sample are shifted",
                UserWarning,
                stacklevel=3,
            )
        if order == "shuffled" and advance <= chunk_len and chunk_len % advance:
            warnings.warn(
                f"shuffled order with seq_len {self.seq_len} not dividing chunk_len "
                f"{chunk_len}: each sample's last window has {chunk_len % advance} tokens and "
                "is padded (no loss there); a seq_len that divides chunk_len wastes nothing",
                UserWarning,
                stacklevel=3,
            )
        self.order = order
        self.plan = self._base_plan(self.num_streams)
        self._layout = self.plan.layout if isinstance(self.plan, ShuffledPlan) else None
        self._transition: dict[str, Any] | None = None

    def _base_plan(self, num_streams: int) -> StreamPlan | ShuffledPlan:
        """The order's plan for ``num_streams`` streams over the split."""
        split = self.source.split
        if self.order == "contiguous":
            return StreamPlan(
                split.shards, fingerprint=self.fingerprint, seed=self.seed, num_streams=num_streams
            )
        chunk_len = self.source.manifest.chunk_len
        _, advance = self.collator.segment_tokens(self.seq_len)
        return ShuffledPlan(
            split.shards,
            fingerprint=self.fingerprint,
            seed=self.seed,
            num_streams=num_streams,
            chunk_len=chunk_len,
            window_len=advance if advance <= chunk_len else None,
            block_samples=self.data_config.shuffle_buffer_tokens // chunk_len,
            shift_windows=self.data_config.window_shift == "epoch",
        )

    def _plan_with(self, transition: dict[str, Any] | None, num_streams: int) -> Plan:
        """The plan of ``num_streams`` streams after the global-batch changes ``transition``
        records (nested: each holds the streams and positions of the loader before it)."""
        if transition is None:
            return self._base_plan(num_streams)
        old = self._plan_with(transition.get("transition"), int(transition["num_streams"]))
        positions = {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in transition["streams"]}
        return TransitionPlan(old, self._base_plan(num_streams), positions)

    # -- what the trainer reads about the data -------------------------------------------

    @property
    def bad_shards(self) -> tuple[int, int]:
        """(shards, samples) skipped so far in lenient mode, in this process."""
        return self.source.bad_shards.shards, self.source.bad_shards.samples

    @property
    def hash_mismatches(self) -> int:
        """Shards read to the end whose sha256 or size did not match the manifest (lenient mode;
        their samples had already been used), in this process."""
        return self.source.bad_shards.hash_mismatches

    # -- iteration ------------------------------------------------------------------------

    def _start(self) -> None:
        self._streams = [
            TokenStream(self.plan, g, self._positions[g], self.source.open_shard)
            for g in self.stream_ids
        ]
        self._prefetcher = Prefetcher(self._produce_step, self.data_config.prefetch_batches)

    def _produce_step(self) -> Step:
        read, advance = self.collator.segment_tokens(self.seq_len)
        batches = []
        b = self.micro_batch_size
        for k in range(self.grad_accum):
            rows, breaks = [], []
            for stream in self._streams[k * b : (k + 1) * b]:
                # The seed names the segment by its stream and start position only.
                seed = seed_int(self.seed, self.objective, stream.stream, *stream.position)
                tokens, doc_start = stream.take(read, advance)
                rows.append((tokens, doc_start, seed))
                breaks.append(stream.last_take_breaks)
            batches.append(with_memory_reset(self.collator(rows, self.seq_len), breaks))
        return batches, {s.stream: s.position for s in self._streams}

    def next_step(self) -> list[Batch]:
        """The grad_accum micro-batches of the next optimizer step."""
        if self._prefetcher is None:
            self._start()
        assert self._prefetcher is not None
        batches, positions = self._prefetcher.get()
        self._positions = positions
        return batches

    def _stop(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        for stream in self._streams:
            stream.close()
        self._streams = []

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Positions after the last step returned by `next_step` (not the read-ahead)."""
        state = make_state(
            fingerprint=self.fingerprint,
            split=self.source.split.name,
            seed=self.seed,
            num_streams=self.num_streams,
            positions=self._positions,
            order=self.order,
            layout=self._layout,
        )
        if self._transition is not None:
            state["transition"] = self._transition
        return state

    def load_state_dict(self, state: dict[str, Any], *, allow_new_streams: bool = False) -> None:
        """Continue from ``state`` (this rank's, or `merge_states` of all ranks' states).

        With ``data_config.order`` "auto", a state in the other order (e.g. a checkpoint taken
        before shuffled order existed) is continued in its own order, with a warning. A state
        with another stream count (a new global batch) is refused unless ``allow_new_streams``
        and it holds every old stream (`merge_states`): the unread units are then dealt out to
        this loader's streams (`pretrain.loader.replan`).
        """
        if allow_new_streams and state.get("num_streams") != self.num_streams:
            self._load_new_streams(state)
            return
        saved_order, _ = order_of(state)
        if self.data_config.order == "auto" and saved_order != self.order:
            if saved_order not in ("contiguous", "shuffled"):
                raise LoaderStateError(f"loader state has unknown order {saved_order!r}")
            resolve_order(saved_order, self._mem_len)  # shuffled with memory: refused
            warnings.warn(
                f"data.order auto would read in {self.order} order, the checkpoint's loader "
                f"state is in {saved_order} order: continuing in {saved_order} order",
                UserWarning,
                stacklevel=2,
            )
            self._stop()
            self._set_order(saved_order)  # type: ignore[arg-type]
        positions = positions_for(
            state,
            fingerprint=self.fingerprint,
            split=self.source.split.name,
            seed=self.seed,
            num_streams=self.num_streams,
            streams=self.stream_ids,
            order=self.order,
            layout=self._layout,
        )
        self._stop()
        self._transition = state.get("transition")
        self.plan = self._plan_with(self._transition, self.num_streams)
        self._positions = positions

    def _load_new_streams(self, state: dict[str, Any]) -> None:
        if self.plan.window_len and self.data_config.window_shift != "none":
            raise LoaderStateError(
                "a new global batch cannot be resumed with data.window_shift=epoch (shifted "
                "windows of two epochs cannot be dealt out together); resume with the "
                "checkpoint's global batch"
            )
        old_streams = int(state["num_streams"])
        positions_for(  # the state is this data's, in this order, with every old stream
            state,
            fingerprint=self.fingerprint,
            split=self.source.split.name,
            seed=self.seed,
            num_streams=old_streams,
            streams=range(old_streams),
            order=self.order,
            layout=self._layout,
        )
        transition: dict[str, Any] = {"num_streams": old_streams, "streams": state["streams"]}
        if "transition" in state:
            transition["transition"] = state["transition"]
        plan = self._plan_with(transition, self.num_streams)
        assert isinstance(plan, TransitionPlan)
        self._stop()
        self.plan, self._transition = plan, transition
        self._positions = {g: (plan.first_epoch, 0, 0) for g in self.stream_ids}
