"""The unigram baseline of `benchmarks/reproduction.py` on a small real prepared dataset: it is
the hand computation (counts -> add-one probabilities -> mean -log p, most frequent id), it
scores exactly the targets the evaluator scores, and a checkpoint's baseline counts every
rank's training batches of every step."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from torch import Tensor

from benchmarks.reproduction import (
    UnigramBaseline,
    checkpoint_baseline,
    count_targets,
    score_unigram,
)
from data_pipeline.configuration import load_config, save_config
from pretrain.batch_loss import OBJECTIVES
from pretrain.config import ExperimentConfig
from pretrain.evaluate.loop import EvalSettings, evaluate_model, validation_loader
from pretrain.loader import Batch, TrainLoader, load_manifest
from pretrain.model import LanguageModel
from pretrain.objectives import IGNORE_INDEX
from tests.helpers.trained_runs import experiment_file

FAMILIES = ("encoder", "encoder_decoder")
SETTINGS = EvalSettings("validation", seq_len=16, mem_len=16, streams=4, batches=0)


def _config(tmp_path: Path, manifest: Path, family: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, experiment_file(tmp_path, manifest, family))


def _train_batches(
    config: ExperimentConfig, steps: int, rank: int = 0, world_size: int = 1
) -> list[Batch]:
    with TrainLoader(
        config.data.manifest,
        rank=rank,
        world_size=world_size,
        micro_batch_size=config.train.micro_batch_size,
        grad_accum=config.train.grad_accum,
        seq_len=config.train.seq_len,
        objective=OBJECTIVES[config.model.family],
        seed=config.data.seed,
        data_config=config.data,
        mem_len=config.model.mem_len,
    ) as loader:
        return [batch for _ in range(steps) for batch in loader.next_step()]


def _validation_batches(config: ExperimentConfig, settings: EvalSettings) -> list[Batch]:
    loader = validation_loader(
        config,
        config.data.manifest,
        settings,
        rank=0,
        world_size=1,
        expected_tokenizer_hash=None,
    )
    return list(islice(loader, settings.batches or len(loader)))


def _hand_targets(batches: list[Batch], family: str) -> list[int]:
    key = "labels" if family == "encoder" else "decoder_targets"
    return [t for batch in batches for t in batch[key].flatten().tolist() if t != IGNORE_INDEX]


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_is_the_hand_computation(family: str, char_manifest: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, char_manifest, family)
    special = load_manifest(str(char_manifest)).special_ids
    pad_id, vocab = int(special["pad"]), config.model.vocab_size
    train, validation = _train_batches(config, steps=6), _validation_batches(config, SETTINGS)

    baseline = score_unigram(count_targets(train, family, vocab), validation, family)

    seen, scored = _hand_targets(train, family), _hand_targets(validation, family)
    frequency = Counter(seen)
    probability = {i: (frequency[i] + 1) / (len(seen) + vocab) for i in range(vocab)}
    top = max(range(vocab), key=lambda i: frequency[i])
    assert baseline.counted == len(seen) and baseline.targets == len(scored)
    assert baseline.loss == pytest.approx(
        sum(-math.log(probability[t]) for t in scored) / len(scored), rel=1e-12
    )
    assert baseline.accuracy == sum(t == top for t in scored) / len(scored)
    # What is counted: masked characters only, never padding or specials; span targets include
    # sentinels and EOS, never padding.
    if family == "encoder":
        assert 0.1 < len(seen) / (len(train) * 2 * 16) < 0.2  # 15% of 2 rows x 16 tokens
        assert not set(seen) & {pad_id, int(special["mask"]), int(special["eos"])}
    else:
        sentinel, eos = int(special["sentinels"][0]), int(special["eos"])
        assert {sentinel, eos} <= set(seen) and pad_id not in seen
    # A smoothed unigram scores better than uniform over the vocabulary, worse than zero.
    assert 0.0 < baseline.loss < math.log(vocab)


class UnigramModel(torch.nn.Module):
    """Ignores its input: the same log-probabilities at every position of the output."""

    def __init__(self, family: str, log_p: np.ndarray) -> None:
        super().__init__()
        self.config = type("Config", (), {"family": family})()
        self.log_p = torch.from_numpy(log_p).float()

    def forward(
        self,
        *inputs: Tensor | None,
        mem_len: int = 0,
        memory_reset: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        # encoder: (input_ids, mems); encoder-decoder: (encoder ids, decoder inputs, mems)
        width = inputs[1] if self.config.family == "encoder_decoder" else inputs[0]
        assert width is not None
        return self.log_p.expand(*width.shape, self.log_p.numel()), []


@pytest.mark.parametrize("family", FAMILIES)
def test_the_evaluator_gives_a_unigram_model_the_baseline(
    family: str, char_manifest: Path, tmp_path: Path
) -> None:
    # The evaluator's loss, accuracy and target count for a model that predicts the baseline's
    # probabilities everywhere are the baseline's: both score the same targets the same way.
    config = _config(tmp_path, char_manifest, family)
    vocab = config.model.vocab_size
    counts = count_targets(_train_batches(config, steps=6), family, vocab)
    baseline = score_unigram(counts, _validation_batches(config, SETTINGS), family)

    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab)
    model = cast(LanguageModel, UnigramModel(family, log_p))
    loader = validation_loader(
        config, str(char_manifest), SETTINGS, rank=0, world_size=1, expected_tokenizer_hash=None
    )
    metrics = evaluate_model(
        model, loader, SETTINGS, family=config.model.family, device=torch.device("cpu")
    )
    assert metrics["tokens"] == baseline.targets
    assert metrics["loss"] == pytest.approx(baseline.loss, rel=1e-5)
    assert metrics["accuracy"] == baseline.accuracy


def test_a_checkpoints_baseline_counts_every_ranks_steps(
    char_manifest: Path, tmp_path: Path
) -> None:
    # A committed step of a 2-rank, 3-step run, as far as the baseline reads one: its resolved
    # config and the marker's step and world size.
    config = _config(tmp_path, char_manifest, "encoder_decoder")
    step_dir = tmp_path / "checkpoints" / "step_0000003"
    step_dir.mkdir(parents=True)
    save_config(config, step_dir / "config.yaml")
    (step_dir / "COMMITTED").write_text(json.dumps({"step": 3, "world_size": 2, "files": {}}))
    settings = EvalSettings("validation", seq_len=16, mem_len=16, streams=4, batches=5)
    report_settings = {**settings.__dict__, "num_batches": 5}

    baseline = checkpoint_baseline(step_dir, report_settings)

    train = [b for rank in (0, 1) for b in _train_batches(config, 3, rank=rank, world_size=2)]
    counts = count_targets(train, "encoder_decoder", config.model.vocab_size)
    expected = score_unigram(counts, _validation_batches(config, settings), "encoder_decoder")
    assert baseline == expected
    assert isinstance(baseline, UnigramBaseline) and baseline.counted == int(counts.sum()) > 0
