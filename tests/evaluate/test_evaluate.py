"""`pretrain evaluate`: a 2-process ZeRO-3 checkpoint scored in one process, memory sweeps,
MLflow logging, the other families, and the errors users meet."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from data_pipeline.configuration import load_config
from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint.reading import open_checkpoint
from pretrain.cli import main
from pretrain.config import ExperimentConfig
from pretrain.evaluate.command import run_evaluation
from pretrain.evaluate.loop import EvalSettings, evaluate_model, validation_loader
from pretrain.model import build_model
from pretrain.tracking import TRAINING_RUN_TAG, read_run
from tests.helpers.distributed import run_cli_distributed
from tests.helpers.trained_runs import XL_HALF, XL_STEPS, TrainedRun, experiment_file


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("step", [XL_HALF, XL_STEPS])
def test_one_process_reproduces_the_training_runs_validation(xl_run: TrainedRun, step: int) -> None:
    logged = dict(read_run(xl_run.tracking_uri, xl_run.run_id)["history"]["val/loss"])
    assert f"validation at step {step}: loss {logged[step]:.4f}" in xl_run.log
    report = run_evaluation(open_checkpoint(xl_run.checkpoints, step))
    # Same settings as the trainer's validation (its 2 x 4 streams as 8 rows here, its
    # eval_batches, seq_len and memory) and the same precision: the bf16 weights are the same
    # rounding of the same fp32 masters. What differs is only how CPU matmuls block a 4-row
    # batch versus two 4-row ones, which moves bf16 results by about an ulp (2^-8) here and
    # there; over 512 targets that averages to ~1e-4 of the loss (measured: ~1e-5).
    assert report["precision"] == "bf16"
    assert report["settings"]["streams"] == 8 and report["settings"]["num_batches"] == 4
    assert report["metrics"]["loss"] == pytest.approx(logged[step], rel=1e-3)
    assert report["metrics"]["tokens"] == 8 * 4 * 16


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_prints_json_and_logs_a_linked_mlflow_run(
    xl_run: TrainedRun, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", str(xl_run.checkpoints), "--json", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)  # nothing but the report on stdout
    metrics = report["metrics"]
    assert report["step"] == xl_run.step and report["precision"] == "fp32"
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["bits_per_byte"] == pytest.approx(
        metrics["loss"] / math.log(2) / metrics["bytes_per_token"]
    )
    logged_val = dict(read_run(xl_run.tracking_uri, xl_run.run_id)["history"]["val/loss"])
    # fp32 (the master weights) against the training run's bf16: close, not equal.
    assert metrics["loss"] == pytest.approx(logged_val[xl_run.step], rel=2e-2)
    run = read_run(xl_run.tracking_uri, report["mlflow_run_id"])
    assert run["tags"][TRAINING_RUN_TAG] == xl_run.run_id
    assert run["tags"]["mlflow.parentRunId"] == xl_run.run_id
    assert run["history"]["eval/validation/loss"] == [(xl_run.step, metrics["loss"])]
    assert "evaluation.json" in run["artifacts"]


@pytest.mark.slow
@pytest.mark.distributed
def test_memory_beats_no_memory_on_held_out_text(
    xl_run: TrainedRun, capsys: pytest.CaptureFixture[str]
) -> None:
    # Short segments make the context the memory adds matter: without memory a segment's first
    # tokens are predicted from almost nothing. 100 segments of each of the 8 streams of the
    # validation split, text the model never trained on.
    args = ["--seq-len", "4", "--batches", "100", "--precision", "fp32", "--no-mlflow"]
    code = main(["evaluate", str(xl_run.checkpoints), *args, "--mem-len-sweep", "0,4,16"])
    table = capsys.readouterr().out
    assert code == 0, table
    rows = {
        int(line.split()[0]): float(line.split()[1])
        for line in table.splitlines()
        if line.strip() and line.split()[0].isdigit()
    }
    assert sorted(rows) == [0, 4, 16]
    assert rows[16] < rows[0] - 0.05, table  # the direction Dai et al. report
    assert rows[4] < rows[0], table


def test_other_families_report_their_objectives(char_manifest: Path, tmp_path: Path) -> None:
    # Untrained models are enough to check what is measured: a loss near ln(V) and accuracy.
    for family, name in (("encoder", "masked-token loss"), ("encoder_decoder", "span loss")):
        config = load_config(ExperimentConfig, experiment_file(tmp_path, char_manifest, family))
        settings = EvalSettings("validation", seq_len=16, mem_len=16, streams=2, batches=2)
        loader = validation_loader(
            config, str(char_manifest), settings, rank=0, world_size=1, expected_tokenizer_hash=None
        )
        model = build_model(config.model).eval()
        metrics = evaluate_model(
            model, loader, settings, family=config.model.family, device=torch.device("cpu")
        )
        assert metrics["tokens"] > 0 and 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["loss"] == pytest.approx(math.log(config.model.vocab_size), rel=0.1)
        assert "bits_per_byte" not in metrics
        from pretrain.evaluate.loop import LOSS_NAMES

        assert LOSS_NAMES[config.model.family] == name


# -- errors --------------------------------------------------------------------------------


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _copy_step(xl_run: TrainedRun, root: Path, step: int = XL_HALF) -> Path:
    source = ckpt.step_dir(xl_run.checkpoints, step)
    target = ckpt.step_dir(root, step)
    shutil.copytree(source, target)
    return target


@pytest.mark.slow
@pytest.mark.distributed
def test_clear_errors(
    xl_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--no-mlflow"]
    err = _error([*base, str(xl_run.checkpoints), "--step", "7"], capsys)
    assert f"has no step 7 (committed steps: {XL_HALF}, {XL_STEPS})" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a checkpoint directory" in _error([*base, str(empty)], capsys)
    assert "does not exist" in _error([*base, str(tmp_path / "nowhere")], capsys)

    uncommitted = _copy_step(xl_run, tmp_path / "uncommitted")
    (uncommitted / ckpt.MARKER).unlink()
    assert "uncommitted" in _error([*base, str(uncommitted.parent)], capsys)
    assert "is not committed" in _error([*base, str(uncommitted)], capsys)

    corrupt = _copy_step(xl_run, tmp_path / "corrupt")
    shard = next(corrupt.glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    err = _error([*base, str(corrupt.parent), "--step", str(XL_HALF)], capsys)
    assert "corrupt" in err and "xxh3_128 does not match" in err

    err = _error([*base, str(xl_run.checkpoints), "model.n_layers=3"], capsys)
    assert "change the architecture" in err and "model.n_layers: 2 -> 3" in err


@pytest.mark.slow
@pytest.mark.distributed
def test_data_from_another_tokenizer_is_refused(
    xl_run: TrainedRun, char_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(char_manifest.read_text())
    doc["tokenizer"]["hash"] = "f" * 64
    other = char_manifest.with_name("other_tokenizer_manifest.json")
    other.write_text(json.dumps(doc))
    err = _error(["evaluate", str(xl_run.checkpoints), "--data", str(other), "--no-mlflow"], capsys)
    assert "tokenized with tokenizer ffffffffffffffff" in err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_one_process_result(xl_run: TrainedRun) -> None:
    args = ["evaluate", str(xl_run.checkpoints), "--json", "--no-mlflow", "--precision", "fp32"]
    run = run_cli_distributed(["pretrain.cli", *args], workdir=xl_run.workdir / "eval2")
    out = run.ranks[0].output
    two = json.JSONDecoder().raw_decode(out[out.index("{") :])[0]
    one = run_evaluation(open_checkpoint(xl_run.checkpoints, overrides=["engine.precision=fp32"]))
    assert two["processes"] == 2 and one["processes"] == 1
    # Each process scores half of the same streams; what differs is the fp32 matmul blocking of
    # 4-row and 8-row batches (~1e-7 per logit) and the order of the float64 sums.
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], rel=1e-5)
    assert two["metrics"]["tokens"] == one["metrics"]["tokens"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_run_without_zero_partitioning_logs_grad_norms_and_evaluates(
    char_manifest: Path, tmp_path: Path
) -> None:
    """`engine.zero_stage: 0` (what a model this small trains fastest with): DeepSpeed keeps no
    gradient norm for fp32 without ZeRO, and writes the whole model once instead of ZeRO shards;
    the trainer measures the norm itself and `evaluate` reads that layout."""
    from tests.train.runs import run_id, train

    config = experiment_file(tmp_path, char_manifest)
    train(
        tmp_path,
        config,
        "engine.zero_stage=0",
        "engine.precision=fp32",
        "train.max_steps=4",
        "train.eval_every=4",
        "train.log_every=1",
        "checkpoint.every_steps=4",
    )
    checkpoints = tmp_path / "checkpoints"
    history = read_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id(checkpoints))["history"]
    norms = dict(history["train/grad_norm"])
    assert sorted(norms) == [1, 2, 3, 4] and all(math.isfinite(n) and n > 0 for n in norms.values())
    # The same first step under ZeRO-2 (built the same way, so the same weights and batches),
    # whose norm DeepSpeed measures itself over its partitioned gradients: the stage-0 figure is
    # that of the whole averaged gradient, not of one rank's or of a rescaled one.
    zero2 = tmp_path / "zero2"
    zero2.mkdir()
    train(
        zero2,
        experiment_file(zero2, char_manifest),
        "engine.zero_stage=2",
        "engine.precision=fp32",
        "train.max_steps=2",
    )
    reference = read_run(f"sqlite:///{zero2 / 'mlflow.db'}", run_id(zero2 / "checkpoints"))
    assert dict(history["train/loss"])[1] == pytest.approx(
        dict(reference["history"]["train/loss"])[1], rel=1e-5
    )  # the same model and batches
    assert norms[1] == pytest.approx(dict(reference["history"]["train/grad_norm"])[1], rel=1e-4)
    assert not list(ckpt.step_dir(checkpoints, 4).glob("*zero_pp_rank_*"))  # not ZeRO's layout
    report = run_evaluation(open_checkpoint(checkpoints, 4))
    logged = dict(history["val/loss"])[4]
    assert report["metrics"]["loss"] == pytest.approx(logged, rel=1e-4)
