"""The loader's checkpointable state: a few integers per stream plus what they are relative to.

``{"format": 1, "fingerprint": str, "split": str, "seed": int, "num_streams": G,
"order": "contiguous" | "shuffled", "layout": [window_len, block_samples] (shuffled only; a
third entry 1 when windows are shifted per epoch),
"streams": [[g, epoch, unit, token], ...]}`` for the global streams a rank owns. Plain ints,
strs and lists, so it loads with ``torch.load(weights_only=True)``. A state without "order"
(written before shuffled order existed) is contiguous.

Changing the world size: stream ``g`` is global, so any layout with the same number of streams
G = world_size x micro_batch_size x grad_accum (say 2 ranks x 8 x 1 -> 4 ranks x 4 x 1) resumes
exactly: give every rank `merge_states` of all old ranks' states. A different G would re-cut
every epoch's sample ranges, and positions could not be carried over without losing or repeating
samples, so it is refused with `LoaderStateError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pretrain.loader.stream import Position

STATE_FORMAT = 1


class LoaderStateError(ValueError):
    """A saved loader state does not fit this loader (other data, seed or stream count)."""


def make_state(
    *,
    fingerprint: str,
    split: str,
    seed: int,
    num_streams: int,
    positions: dict[int, Position],
    order: str = "contiguous",
    layout: list[int] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "split": split,
        "seed": seed,
        "num_streams": num_streams,
        "order": order,
    }
    if layout is not None:
        state["layout"] = list(layout)
    state["streams"] = [[g, *positions[g]] for g in sorted(positions)]
    return state


def order_of(state: dict[str, Any]) -> tuple[str, list[int] | None]:
    """(order, layout) a state was written in; states from before "order" are contiguous."""
    layout = state.get("layout")
    return str(state.get("order", "contiguous")), None if layout is None else list(layout)


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One state holding every stream of ``states`` (each rank's), for a new world size."""
    if not states:
        raise LoaderStateError("no loader states to merge")
    if "sources" in states[0]:  # a mixture: the same header, each source's states merged
        top = {k: v for k, v in states[0].items() if k != "sources"}
        for state in states:
            if {k: v for k, v in state.items() if k != "sources"} != top:
                raise LoaderStateError("mixture loader states disagree (step, weights or sources)")
        return {
            **top,
            "sources": {
                name: merge_states([state["sources"][name] for state in states])
                for name in states[0]["sources"]
            },
        }
    head = {k: v for k, v in states[0].items() if k != "streams"}
    streams: dict[int, list[int]] = {}
    for state in states:
        other = {k: v for k, v in state.items() if k != "streams"}
        if other != head:
            raise LoaderStateError(f"loader states disagree: {head} vs {other}")
        for row in state["streams"]:
            if row[0] in streams:
                raise LoaderStateError(f"stream {row[0]} appears in two loader states")
            streams[row[0]] = list(row)
    return {**head, "streams": [streams[g] for g in sorted(streams)]}


def positions_for(
    state: dict[str, Any],
    *,
    fingerprint: str,
    split: str,
    seed: int,
    num_streams: int,
    streams: Sequence[int],
    order: str = "contiguous",
    layout: list[int] | None = None,
) -> dict[int, Position]:
    """The positions of ``streams`` in ``state``, after checking that the state fits."""
    if "mixture" in state:
        raise LoaderStateError(
            "loader state is of a mixture (data.mixture), this run reads one dataset "
            "(data.manifest)"
        )
    if state.get("format") != STATE_FORMAT:
        raise LoaderStateError(f"loader state format {state.get('format')!r} is not {STATE_FORMAT}")
    if state["fingerprint"] != fingerprint:
        raise LoaderStateError(
            f"loader state is for dataset fingerprint {state['fingerprint'][:16]}..., this "
            f"loader reads {fingerprint[:16]}...: the manifest changed since the checkpoint"
        )
    if state["split"] != split or state["seed"] != seed:
        raise LoaderStateError(
            f"loader state is for split {state['split']!r} seed {state['seed']}, this loader "
            f"has split {split!r} seed {seed}"
        )
    if state["num_streams"] != num_streams:
        raise LoaderStateError(
            f"loader state has {state['num_streams']} streams (world_size x micro_batch_size x "
            f"grad_accum), this loader has {num_streams}: resuming with another total stream "
            "count is refused because every epoch's sample ranges would change. Keep the "
            "product the same (e.g. halve grad_accum when doubling the ranks)."
        )
    if order_of(state) != (order, layout):
        raise LoaderStateError(
            f"loader state is in {order_of(state)[0]!r} order (layout {order_of(state)[1]}), this "
            f"loader reads in {order!r} order (layout {layout}; [window_len, block_samples] "
            "depend on seq_len, chunk_len and data.shuffle_buffer_tokens, a third entry 1 on "
            "data.window_shift=epoch): positions would name other units. Use the checkpoint's "
            "data.order and settings."
        )
    saved = {int(row[0]): (int(row[1]), int(row[2]), int(row[3])) for row in state["streams"]}
    missing = [g for g in streams if g not in saved]
    if missing:
        raise LoaderStateError(
            f"loader state lacks streams {missing[:8]}{'...' if len(missing) > 8 else ''}; after "
            "changing the world size, load merge_states() of every old rank's state"
        )
    return {g: saved[g] for g in streams}
