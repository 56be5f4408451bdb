"""TrainLoader on real shards: Transformer-XL continuity and exact resume for each objective."""

from __future__ import annotations

import io

import pytest
import torch

from pretrain.loader import LoaderStateError, TrainLoader, merge_states
from pretrain.objectives import IGNORE_INDEX
from tests.loader.helpers import make_loader, planned_tokens, stream_rows
from tests.loader.shard_fixture import EOS, BuiltDataset


def _steps(loader: TrainLoader, n: int) -> list[list[dict[str, torch.Tensor]]]:
    return [loader.next_step() for _ in range(n)]


def test_rows_are_consecutive_text_across_steps_and_micro_batches(dataset: BuiltDataset) -> None:
    seq_len, steps_n = 24, 40
    with make_loader(dataset, seq_len=seq_len) as loader:
        steps = _steps(loader, steps_n)
    for k in range(2):
        for b in range(2):
            stream = k * 2 + b  # row b of micro-batch k is global stream k*B + b on rank 0
            inputs = stream_rows(steps, "input_ids", k, b)
            targets = stream_rows(steps, "targets", k, b)
            expected = torch.from_numpy(planned_tokens(dataset, loader.plan, stream, epochs=2))
            n = steps_n * seq_len
            assert torch.equal(inputs, expected[:n])  # step t+1 continues step t exactly
            assert torch.equal(targets, expected[1 : n + 1])  # every token a target once
    # the document-start flags sit on the first token of each document (after an EOS)
    doc = stream_rows(steps, "doc_start", 0, 0)
    inputs = stream_rows(steps, "input_ids", 0, 0)
    after_eos = torch.zeros_like(doc)
    after_eos[1:] = inputs[:-1] == EOS
    assert after_eos.any()
    assert torch.equal(doc[1:] & after_eos[1:], after_eos[1:])  # every document start is flagged
    assert bool(doc[0])  # the stream's very first token starts fresh


def test_streams_roll_into_the_next_epoch(dataset: BuiltDataset) -> None:
    # 1 stream of ~550 samples x 64 tokens: 150 steps of 256 tokens cross into epoch 1.
    with make_loader(dataset, micro_batch_size=1, grad_accum=1, seq_len=256) as loader:
        steps = _steps(loader, 150)
        epoch = loader.state_dict()["streams"][0][1]
    assert epoch == 1
    got = stream_rows(steps, "input_ids", 0, 0)
    expected = torch.from_numpy(planned_tokens(dataset, loader.plan, 0, epochs=2))
    assert torch.equal(got, expected[: got.numel()])


@pytest.mark.parametrize("objective", ["causal_lm", "mlm", "span"])
def test_resume_gives_the_same_batches(dataset: BuiltDataset, objective: str) -> None:
    n_before, n_after = 7, 6
    with make_loader(dataset, objective=objective) as loader:
        reference = _steps(loader, n_before + n_after)
    with make_loader(dataset, objective=objective) as loader:
        _steps(loader, n_before)
        buf = io.BytesIO()
        torch.save(loader.state_dict(), buf)  # the checkpoint path: plain types only
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    with make_loader(dataset, objective=objective) as resumed:
        resumed.load_state_dict(state)
        after = _steps(resumed, n_after)
    for want, got in zip(reference[n_before:], after, strict=True):
        for want_mb, got_mb in zip(want, got, strict=True):
            assert want_mb.keys() == got_mb.keys()
            for key in want_mb:
                assert torch.equal(want_mb[key], got_mb[key]), key
    if objective == "mlm":  # the masks really vary, so equality above means something
        labels = torch.stack([s[0]["labels"] for s in after])
        assert (labels != IGNORE_INDEX).any()
        assert not torch.equal(after[0][0]["labels"], after[1][0]["labels"])


def test_state_counts_consumed_steps_not_read_ahead(dataset: BuiltDataset) -> None:
    with make_loader(dataset, seq_len=16) as loader:
        loader.next_step()
        loader.next_step()
        # the prefetcher (depth 4) has read further by now; the state must not show it
        positions = {row[0]: tuple(row[1:]) for row in loader.state_dict()["streams"]}
    assert positions == {g: (0, 0, 32) for g in range(4)}  # 2 steps x 16 tokens, chunk_len 64


def test_same_stream_count_on_another_world_size_resumes_exactly(dataset: BuiltDataset) -> None:
    # 2 ranks x 2 rows x 1 micro-batch -> 1 rank x 2 rows x 2 micro-batches: 4 streams both.
    old = [make_loader(dataset, rank=r, world_size=2, grad_accum=1) for r in range(2)]
    for loader in old:
        _steps(loader, 5)
    merged = merge_states([loader.state_dict() for loader in old])
    reference = [_steps(loader, 4) for loader in old]
    for loader in old:
        loader.close()
    with make_loader(dataset, world_size=1, grad_accum=2) as new:
        new.load_state_dict(merged)
        after = _steps(new, 4)
    for g in range(4):
        rank, row = divmod(g, 2)  # old layout
        k, b = divmod(g, 2)  # new layout: micro-batch k, row b
        for t in range(4):
            for key in ("input_ids", "targets"):
                assert torch.equal(reference[rank][t][0][key][row], after[t][k][key][b])


def test_other_stream_count_or_dataset_is_refused(
    dataset: BuiltDataset, fresh_dataset: BuiltDataset
) -> None:
    with make_loader(dataset) as loader:
        loader.next_step()
        state = loader.state_dict()
    with (
        make_loader(dataset, grad_accum=1) as smaller,
        pytest.raises(LoaderStateError, match=r"4 streams .* this loader has 2"),
    ):
        smaller.load_state_dict(state)
    with make_loader(fresh_dataset) as other, pytest.raises(LoaderStateError, match="fingerprint"):
        other.load_state_dict(state)
    with (
        make_loader(dataset, rank=1, world_size=2, grad_accum=1) as rank1,
        pytest.raises(LoaderStateError, match="lacks streams"),
    ):
        rank1.load_state_dict({**state, "streams": state["streams"][:2], "num_streams": 4})


def test_too_few_samples_for_the_streams_is_a_clear_error(dataset: BuiltDataset) -> None:
    with pytest.raises(ValueError, match="fewer than the"):
        make_loader(dataset, world_size=64, micro_batch_size=8, grad_accum=2)
