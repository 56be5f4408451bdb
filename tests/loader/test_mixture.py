"""Weighted mixtures of prepared datasets: the schedule's proportions over every window, each
source read as its own contiguous streams with its own epochs, document starts and memory
resets at every change of source (and at every break within a source, only there), a row that
changed source read by a Transformer-XL decoder exactly as without memory, exact
resume (same and another world size with the same stream count, every objective and order,
from the state of a process killed with SIGKILL), and the refusals (mismatched tokenizer or
dtype, a changed mixture, both data keys)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data_pipeline.configuration import ConfigError, from_dict
from pretrain.config import DataConfig, ExperimentConfig, MixtureSource, ModelConfig
from pretrain.loader import (
    LoaderStateError,
    ManifestError,
    MixtureLoader,
    TrainLoader,
    merge_states,
)
from pretrain.loader.mixture import BLOCK, MixtureSchedule
from pretrain.loader.order import StreamPlan
from pretrain.model import build_model
from tests.loader.helpers import planned_tokens
from tests.loader.shard_fixture import VOCAB_SIZE, BuiltDataset, build_dataset

SEQ = 16


@dataclass
class Sources:
    big_a: BuiltDataset
    big_b: BuiltDataset
    small: BuiltDataset  # ~100x fewer training tokens than the others, another chunk_len


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("mixture")
    return Sources(
        build_dataset(root / "a", text_bytes=100_000, shard_samples=64),
        build_dataset(root / "b", text_bytes=100_000, text_start=400_000, shard_samples=64),
        build_dataset(root / "c", text_bytes=1_100, text_start=900_000, chunk_len=16),
    )


def mixture(sources: Sources, weights: tuple[float, float, float]) -> list[MixtureSource]:
    return [
        MixtureSource(name, str(ds.manifest), w)
        for name, ds, w in zip(
            ("a", "b", "c"), (sources.big_a, sources.big_b, sources.small), weights, strict=True
        )
    ]


def make(sources: list[MixtureSource], **overrides: Any) -> MixtureLoader:
    args: dict[str, Any] = {
        "rank": 0,
        "world_size": 1,
        "micro_batch_size": 2,
        "grad_accum": 2,
        "seq_len": SEQ,
        "objective": "causal_lm",
        "seed": 3,
        "data_config": DataConfig(order="contiguous", prefetch_batches=2),
    }
    args.update(overrides)
    return MixtureLoader(sources, **args)


def steps(loader: MixtureLoader, n: int) -> list[list[dict[str, torch.Tensor]]]:
    return [loader.next_step() for _ in range(n)]


def worst_window_error(sequence: np.ndarray, weights: list[float], window: int) -> float:
    """Largest |share of source s - weight of s| over every window of ``window`` positions."""
    worst = 0.0
    for s, w in enumerate(weights):
        counts = np.concatenate([[0], np.cumsum(sequence == s)])
        shares = (counts[window:] - counts[:-window]) / window
        worst = max(worst, float(np.abs(shares - w).max()))
    return worst


@pytest.mark.parametrize(
    "weights",
    [[0.7, 0.2, 0.1], [0.5, 0.5], [0.97, 0.03], [0.4, 0.3, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]],
)
def test_every_window_of_1000_segments_holds_the_weights_within_one_point(
    weights: list[float],
) -> None:
    schedule = MixtureSchedule(weights)
    sequence = schedule.sources(0, 30_000)
    assert worst_window_error(sequence, weights, 1000) < 0.01
    # A source keeps the row for runs (one per block), not one segment at a time.
    switches = int(np.count_nonzero(np.diff(sequence.astype(int))))
    assert switches <= len(sequence) * len(weights) // BLOCK


def test_loader_rows_follow_the_schedule_and_each_source_reads_its_own_contiguous_text(
    sources: Sources,
) -> None:
    weights = (0.7, 0.2, 0.1)
    n = 1200
    with make(mixture(sources, weights)) as loader:
        got = steps(loader, n)
        # Realised token shares per stream, from the rows actually handed out.
        for g in range(4):
            k, b = divmod(g, 2)
            picked = np.array([loader.source_of(g, t) for t in range(n)])
            assert worst_window_error(picked, list(weights), 1000) < 0.01
            # Each source's rows of this stream, concatenated, are that source's stream text.
            for s, ds in enumerate((sources.big_a, sources.big_b, sources.small)):
                rows = [got[t][k]["input_ids"][b] for t in range(n) if picked[t] == s]
                text = torch.cat(rows).numpy() if rows else np.zeros(0, np.int64)
                plan = loader.loaders[s].plan
                assert isinstance(plan, StreamPlan)
                expected = planned_tokens(ds, plan, g, 40)[: text.shape[0]]
                assert np.array_equal(text, expected), (g, s)
        tokens = loader.source_tokens()
        epochs = loader.source_epochs()
        state = loader.state_dict()
    # The small source has over 100x fewer training tokens than each large one.
    assert min(loader.loaders[0].tokens, loader.loaders[1].tokens) > 100 * loader.loaders[2].tokens
    assert sum(tokens.values()) == n * 4 * SEQ
    for name, w in zip("abc", weights, strict=True):
        assert abs(tokens[name] / (n * 4 * SEQ) - w) < 0.01
    # The small source repeats (several epochs), the large ones have not finished one.
    assert epochs["c"] > 2 and epochs["a"] < 1 and epochs["b"] < 1
    assert max(row[1] for row in state["sources"]["c"]["streams"]) >= 2
    assert max(row[1] for row in state["sources"]["a"]["streams"]) == 0


def stream_breaks(loader: TrainLoader, stream: int, epochs: int) -> set[int]:
    """Token offsets where a stream's text jumps, from its plan's pieces alone: its start, and
    every piece that does not go on from where the one before stopped (in the same shard, or
    at the start of the next shard of the same prepared unit)."""
    plan = loader.plan
    assert isinstance(plan, StreamPlan)
    chunk = loader.source.manifest.chunk_len
    breaks, offset, last = {0}, 0, None
    for epoch in range(epochs):
        for piece in plan.pieces(epoch, stream):
            if last is not None:
                before, now = plan.shards[last[0]], plan.shards[piece.shard]
                same_shard = piece.shard == last[0] and piece.start == last[1]
                next_shard = (
                    last[1] == before.samples
                    and piece.start == 0
                    and (now.unit, now.seq) == (before.unit, before.seq + 1)
                )
                if not (same_shard or next_shard):
                    breaks.add(offset)
            offset += (piece.stop - piece.start) * chunk
            last = (piece.shard, piece.stop)
    return breaks


def test_memory_is_reset_at_every_change_of_source_and_at_every_break_only(
    sources: Sources,
) -> None:
    # Every row of a long run: memory_reset (and a document start) wherever the row changes
    # source; within a source, memory_reset exactly where that source's stream jumps (the
    # small source's new epochs), and nowhere else, so rows that continue keep their memory.
    n = 400
    with make(mixture(sources, (0.7, 0.2, 0.1))) as loader:
        got = steps(loader, n)
        breaks = [[stream_breaks(src, g, 10) for g in range(4)] for src in loader.loaders]
        switches = within = kept = 0
        for g in range(4):
            k, b = divmod(g, 2)
            read = [0, 0, 0]  # tokens this stream has read from each source
            for t in range(n):
                s = loader.source_of(g, t)
                switched = t == 0 or loader.source_of(g, t - 1) != s
                reset = bool(got[t][k]["memory_reset"][b])
                assert reset == (switched or read[s] in breaks[s][g]), (g, t)
                if switched:
                    switches += 1
                    assert bool(got[t][k]["doc_start"][b, 0]), (g, t)
                else:
                    within += reset
                    kept += not reset
                read[s] += SEQ
    assert switches > 100 and within > 0 and kept > 800


def test_a_row_after_a_change_of_source_reads_as_with_no_memory(sources: Sources) -> None:
    # The loader's flags through a real Transformer-XL decoder, memory carried step to step
    # as the trainer carries it: a row that changed source gives the logits of a call without
    # memory, a row that stayed on its source does not (its memory is used).
    config = ModelConfig(
        family="decoder", vocab_size=VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4,
        position="relative", mem_len=SEQ,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config).double().eval()
    with torch.no_grad():  # u and v start at zero: give the position biases some weight
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    switched = continued = 0
    with make(mixture(sources, (0.5, 0.3, 0.2)), grad_accum=1, micro_batch_size=4) as loader:
        mems = None
        for t in range(30):
            (batch,) = loader.next_step()
            logits, new_mems = model(batch["input_ids"], mems, memory_reset=batch["memory_reset"])
            alone, _ = model(batch["input_ids"], None)
            for g in range(4):
                changed = t > 0 and loader.source_of(g, t) != loader.source_of(g, t - 1)
                if changed:
                    switched += 1
                    assert torch.allclose(logits[g], alone[g], rtol=1e-9, atol=1e-10), (g, t)
                elif t > 0 and not bool(batch["memory_reset"][g]):
                    continued += 1
                    assert not torch.allclose(logits[g], alone[g]), (g, t)
            mems = new_mems
    assert switched > 5 and continued > 50


def test_exact_resume_same_and_other_world_size(sources: Sources) -> None:
    srcs = mixture(sources, (0.7, 0.2, 0.1))
    with make(srcs) as whole:
        reference = steps(whole, 30)
    with make(srcs) as first:
        steps(first, 12)
        state = first.state_dict()
    with make(srcs) as again:  # one rank, as before
        again.load_state_dict(json.loads(json.dumps(state)))  # survives a plain round trip
        resumed = steps(again, 18)
    for a, b in zip(reference[12:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert all(torch.equal(x[key], y[key]) for key in x)
    # 2 ranks x micro-batch 1 x grad_accum 2: the same 4 streams, laid out differently.
    merged = merge_states([state])
    for rank in range(2):
        with make(srcs, rank=rank, world_size=2, micro_batch_size=1) as part:
            part.load_state_dict(merged)
            got = steps(part, 18)
        for t in range(18):
            for k in range(2):
                g = rank * 2 + k  # this rank's stream in micro-batch k
                ref_k, ref_b = divmod(g, 2)
                for key in ("input_ids", "targets", "doc_start", "memory_reset"):
                    assert torch.equal(got[t][k][key][0], reference[12 + t][ref_k][key][ref_b])


def test_changed_mixture_refused_unless_allowed(sources: Sources) -> None:
    with make(mixture(sources, (0.7, 0.2, 0.1))) as loader:
        steps(loader, 5)
        state = loader.state_dict()
    with (
        make(mixture(sources, (0.5, 0.3, 0.2))) as changed,
        pytest.raises(LoaderStateError, match=r"share of 'a' 0\.7 -> 0\.5.*allow_mixture_change"),
    ):
        changed.load_state_dict(state)
    with make(mixture(sources, (7, 2, 1))) as same:  # relative weights: the same shares
        same.load_state_dict(state)
    allowed = DataConfig(order="contiguous", allow_mixture_change=True)
    with make(mixture(sources, (0.5, 0.3, 0.2)), data_config=allowed) as annealed:
        annealed.load_state_dict(state)
        assert annealed.source_tokens() == loader.source_tokens()
        got = steps(annealed, 3)
        after = annealed.state_dict()
    # The old schedule chose what each row read before: the first step breaks every row.
    assert all(bool(batch["memory_reset"].all()) for batch in got[0])
    assert all(bool(batch["doc_start"][:, 0].all()) for batch in got[0])
    with make(mixture(sources, (7, 2, 1))) as same:  # the same mixture: no forced break
        same.load_state_dict(state)
        kept = steps(same, 1)[0]
    assert not all(bool(batch["memory_reset"].all()) for batch in kept)
    assert after["step"] == 8
    # Sources continue where they were: a's streams moved on from the saved positions.
    assert after["sources"]["a"]["streams"] != [[g, 0, 0, 0] for g in range(4)]


def test_sources_with_other_tokenizers_or_dtypes_are_refused(
    sources: Sources, tmp_path: Path
) -> None:
    other_tok = build_dataset(tmp_path / "tok", text_bytes=8_000, tokenizer_hash="other-hash")
    wide = build_dataset(tmp_path / "wide", text_bytes=8_000, dtype="uint32")
    base = MixtureSource("a", str(sources.big_a.manifest), 1.0)
    for ds, what in ((other_tok, "tokenizer hash"), (wide, "dtype")):
        with pytest.raises(ManifestError) as err:
            make([base, MixtureSource("x", str(ds.manifest), 1.0)])
        message = str(err.value)
        assert str(sources.big_a.manifest) in message and str(ds.manifest) in message
        assert what in message


def test_manifest_and_mixture_are_exclusive() -> None:
    model = {"family": "decoder", "vocab_size": 300, "d_model": 8, "n_layers": 1, "n_heads": 2}
    source = {"name": "a", "manifest": "a.json", "weight": 1}
    tree: dict[str, Any] = {"name": "x", "model": model, "data": {"manifest": "m.json"}}
    tree["data"]["mixture"] = [source]
    with pytest.raises(ConfigError, match=r"data\.manifest and data\.mixture"):
        from_dict(ExperimentConfig, tree)
    tree["data"] = {"mixture": [{"name": "a", "manifest": "a.json", "weight": 0}]}
    with pytest.raises(ConfigError, match="weight must be > 0"):
        from_dict(ExperimentConfig, tree)
    tree["data"] = {"mixture": [{"name": "a", "manifest": "a.json", "weight": 2}]}
    assert from_dict(ExperimentConfig, tree).data.mixture[0].weight == 2.0


@pytest.mark.parametrize(
    ("objective", "order"),
    [("mlm", "contiguous"), ("span", "contiguous"), ("causal_lm", "shuffled")],
)
def test_every_objective_and_order_resumes_exactly(
    sources: Sources, objective: str, order: str
) -> None:
    srcs = mixture(sources, (0.5, 0.3, 0.2))
    config = DataConfig(order=order, prefetch_batches=2)  # type: ignore[arg-type]
    with make(srcs, objective=objective, data_config=config) as whole:
        reference = steps(whole, 16)
    with make(srcs, objective=objective, data_config=config) as first:
        steps(first, 7)
        state = first.state_dict()
    with make(srcs, objective=objective, data_config=config) as again:
        again.load_state_dict(state)
        resumed = steps(again, 9)
    for a, b in zip(reference[7:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x)


CHILD = """
import os, sys, torch
from pretrain.config import DataConfig, MixtureSource
from pretrain.loader import MixtureLoader
names, manifests, out = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3]
sources = [MixtureSource(n, m, w) for n, m, w in zip(names, manifests, (0.7, 0.2, 0.1))]
loader = MixtureLoader(sources, rank=0, world_size=1, micro_batch_size=2, grad_accum=2,
    seq_len=16, objective="causal_lm", seed=3, data_config=DataConfig(order="contiguous"))
while True:  # a training loop's checkpoints: the state after each step, written atomically
    loader.next_step()
    torch.save(loader.state_dict(), out + ".tmp")
    os.replace(out + ".tmp", out)
"""


def test_state_saved_by_a_process_killed_with_sigkill_resumes_at_any_world_size(
    sources: Sources, tmp_path: Path
) -> None:
    srcs = mixture(sources, (0.7, 0.2, 0.1))
    out = tmp_path / "state.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    names, manifests = ",".join(s.name for s in srcs), ",".join(s.manifest for s in srcs)
    child = subprocess.Popen([sys.executable, "-c", CHILD, names, manifests, str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or torch.load(out)["step"] < 20:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    state = torch.load(out, weights_only=True)
    done = state["step"]
    with make(srcs) as whole:
        reference = steps(whole, done + 10)
    with make(srcs) as same:  # the same world size
        same.load_state_dict(state)
        got = steps(same, 10)
    for a, b in zip(reference[done:], got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x)
    merged = merge_states([state])
    for rank in range(2):  # 2 ranks x micro-batch 1 x grad_accum 2: the same 4 streams
        with make(srcs, rank=rank, world_size=2, micro_batch_size=1) as part:
            part.load_state_dict(merged)
            got = steps(part, 10)
        for t in range(10):
            for k in range(2):
                ref_k, ref_b = divmod(rank * 2 + k, 2)
                for key in ("input_ids", "targets", "doc_start", "memory_reset"):
                    assert torch.equal(got[t][k][key][0], reference[done + t][ref_k][key][ref_b])


def test_a_mixture_state_and_a_single_dataset_state_are_not_interchangeable(
    sources: Sources,
) -> None:
    srcs = mixture(sources, (0.7, 0.2, 0.1))
    with make(srcs) as mixed, make_single(sources.big_a) as single:
        with pytest.raises(LoaderStateError, match="this run reads one dataset"):
            single.load_state_dict(mixed.state_dict())
        with pytest.raises(LoaderStateError, match=r"this run reads data\.mixture"):
            mixed.load_state_dict(single.state_dict())


def make_single(dataset: BuiltDataset) -> TrainLoader:
    return TrainLoader(
        str(dataset.manifest),
        rank=0,
        world_size=1,
        micro_batch_size=2,
        grad_accum=2,
        seq_len=SEQ,
        objective="causal_lm",
        seed=3,
        data_config=DataConfig(order="contiguous"),
    )
