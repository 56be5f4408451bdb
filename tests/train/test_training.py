"""Training runs of every family, numerical health and activation checkpointing: 2 processes,
gloo, real DeepSpeed ZeRO-3 in bf16, real shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import layout as ckpt
from tests.helpers.distributed import run_distributed
from tests.helpers.trained_runs import experiment_file
from tests.train.runs import assert_same_weights, dump, losses, rank0, train, weights

pytestmark = pytest.mark.distributed


@pytest.mark.slow
@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder_decoder"])
def test_each_family_trains_and_its_loss_falls(
    family: str, char_manifest: Path, tmp_path: Path
) -> None:
    config = experiment_file(tmp_path, char_manifest, family)
    run = train(tmp_path, config, "train.max_steps=24", "train.eval_every=24")
    curve = losses(tmp_path)
    assert sorted(curve) == list(range(1, 25))
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (22, 23, 24)) / 3
    # From ln(96) ~ 4.56 a tiny char model reaches well under 4 in 24 steps at lr 3e-3.
    assert last < first - 0.4, curve
    assert "validation at step 24" in rank0(run)
    assert ckpt.committed_steps(tmp_path / "checkpoints") == [16, 20, 24]


def test_a_nonfinite_loss_leaves_the_weights_unchanged(char_manifest: Path, tmp_path: Path) -> None:
    config = experiment_file(tmp_path, char_manifest)
    run = train(
        tmp_path,
        config,
        "train.max_steps=4",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=4",
        env={"MNEMOS_FAULTS": "nonfinite@3:1"},  # rank 1 only: both ranks must skip together
    )
    assert "step 3: non-finite loss on some rank; the update was skipped" in rank0(run)
    root = tmp_path / "checkpoints"
    assert_same_weights(weights(root, 2), weights(root, 3))
    step4 = weights(root, 4)
    assert any(not torch.equal(step4[k], v) for k, v in weights(root, 3).items())
    assert losses(tmp_path)[3] != losses(tmp_path)[3]  # NaN: the logged loss says what happened
    from pretrain.tracking import read_run
    from tests.train.runs import run_id

    history = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id(root))["history"]
    assert dict(history["train/skipped_steps"]) == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}


def test_repeated_nonfinite_losses_abort_clearly(char_manifest: Path, tmp_path: Path) -> None:
    config = experiment_file(tmp_path, char_manifest)
    run = train(
        tmp_path,
        config,
        "train.max_consecutive_skips=2",
        env={"MNEMOS_FAULTS": "nonfinite@2,nonfinite@3"},
        check=False,
    )
    assert run.returncode != 0, dump(run)
    assert "2 consecutive steps had a non-finite loss" in rank0(run)
    assert "stopping at step 3" in rank0(run)


def test_activation_checkpointing_same_losses_less_activation_memory(
    char_manifest: Path, tmp_path: Path
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    common = ["tracking.enabled=false", "model.n_layers=4"]
    results = {}
    for mode in ("off", "every_layer"):
        run = run_distributed(
            "tests.train.dist_fns:steps_with_saved_activation_bytes",
            str(config),
            [*common, f"train.activation_checkpointing={mode}"],
            3,
            workdir=tmp_path / mode,
        )
        results[mode] = run.ranks[0].value
    plain, checkpointed = results["off"], results["every_layer"]
    # Recomputation repeats the same bf16 arithmetic; allow bf16's last-bit differences.
    assert plain["losses"] == pytest.approx(checkpointed["losses"], rel=1e-2)
    assert max(checkpointed["saved_bytes"]) < 0.6 * min(plain["saved_bytes"])
