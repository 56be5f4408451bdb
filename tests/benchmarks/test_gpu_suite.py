"""`benchmarks/gpu_suite.py`: the CPU rehearsal of issue 22's GPU run, so that the GPU minutes
cannot be lost to a typo.

The smoke runs every part for real on CPU (DeepSpeed ZeRO-3 over gloo, the real `pretrain train`
and `pretrain evaluate` CLIs under torchrun, a real MLflow store). What it cannot reach (fp16
loss scaling, which DeepSpeed's CPU accelerator lacks, and the timeout and failure paths) is
checked here with an fp16-shaped metric history and injected faults.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_suite import PARTS, last_json_object, loss_scale_figures
from tests.helpers.distributed import REPO_ROOT, distributed_env

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_suite.py"

COMMON = {"suite", "part", "issue_part", "smoke", "status", "seconds", "timeout_s", "checks"}
PLAN = {"plan_micro_batch_ac_off", "plan_micro_batch_auto", "plan_predicted_gib"}
PLAN |= {"plan_model_states_gib", "plan_activations_gib", "measured_over_predicted"}
THROUGHPUT = {"tokens_per_s_per_gpu", "mfu", "hfu", "micro_batch", "seq_len", "precision"}
THROUGHPUT |= {"zero_stage", "memory", "peak_allocated_gib", "peak_rss_gib"} | PLAN
EXPECTED = {
    "throughput_off": THROUGHPUT,
    "throughput_on": THROUGHPUT,
    "reference": {"tokens_per_s_per_gpu", "mfu", "fused_adamw", "ours_over_reference"},
    "data": {"manifest", "train_tokens"},
    "fp16": {"precision", "loss_first5_mean", "loss_last5_mean", "fp16_overflows"}
    | {"loss_scale_first", "loss_scale_final", "mlflow_run_id"},
    "nccl": {"backend_expected", "checkpoint_steps", "evaluate_metrics", "evaluate_step"}
    | {"nccl_lines_in_train"},
    "xl": {"plain", "xl", "xl_over_plain_tokens_per_s", "xl_minus_plain_measured_gib"}
    | {"xl_minus_plain_predicted_gib", "score_matrix_gib_per_layer", "plan_predicts_xl_memory"},
}


def suite(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    out = tmp_path / "suite.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--workdir"]
    result = subprocess.run(
        [*cmd, str(tmp_path / "work"), *args],
        cwd=REPO_ROOT,
        env=distributed_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rows = {row["part"]: row for row in map(json.loads, out.read_text().splitlines())}
    return result, rows


@pytest.mark.slow  # every part on CPU, seven DeepSpeed processes: ~75 s on 2 cores
def test_smoke_runs_every_part_and_records_each_result(tmp_path: Path) -> None:
    result, rows = suite(tmp_path)
    output = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, output
    assert list(rows) == ["environment", *(p.name for p in PARTS), "summary"]
    for name, keys in EXPECTED.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row.get("error"))
        assert keys | COMMON <= row.keys(), (name, sorted(keys | COMMON - row.keys()))
        assert row["checks"] and all(row["checks"].values()), (name, row["checks"])
    assert rows["summary"]["parts_not_ok"] == [] and rows["summary"]["targets"] == {}
    off, on, ref = rows["throughput_off"], rows["throughput_on"], rows["reference"]
    assert (off["activation_checkpointing"], on["activation_checkpointing"]) == (
        "off",
        "every_layer",
    )
    assert on["hfu"] > on["mfu"] and off["hfu"] == off["mfu"]
    assert (
        ref["micro_batch"] == off["micro_batch"] and ref["micro_batch_source"] == "throughput_off's"
    )
    assert ref["ours_over_reference"] == pytest.approx(
        off["tokens_per_s_per_gpu"] / ref["tokens_per_s_per_gpu"]
    )
    assert ref["model_builder"] == "pretrain.model.build_model"
    fp16 = rows["fp16"]
    assert fp16["precision"] == "bf16" and fp16["loss_last5_mean"] < fp16["loss_first5_mean"]
    nccl = rows["nccl"]
    assert nccl["backend_expected"] == "gloo" and nccl["checkpoint_steps"] == [4]
    assert nccl["evaluate_step"] == 4 and nccl["evaluate_mlflow_run_id"]
    xl = rows["xl"]
    assert xl["xl"]["model_flops_per_token"] > xl["plain"]["model_flops_per_token"]
    assert xl["xl_minus_plain_predicted_gib"] > 0  # the plan counts the memory's hidden states
    assert rows["environment"]["torch"] and rows["environment"]["deepspeed"]
    for name in EXPECTED:
        assert f"| {name} |" in result.stdout  # the summary table


def test_a_failed_or_hung_part_is_recorded_and_the_suite_goes_on(tmp_path: Path) -> None:
    faults = {"GPU_SUITE_FAULTS": "reference:fail,data:hang"}
    result, rows = suite(
        tmp_path, "--parts", "reference,fp16", "--part-timeout", "8", env=faults, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert rows["reference"]["status"] == "failed"
    assert "injected fault" in rows["reference"]["error"]
    # fp16 brought in its prerequisite, the data part, which hung and was killed at 8 s ...
    assert rows["data"]["status"] == "timeout" and "8 s limit" in rows["data"]["error"]
    assert rows["data"]["seconds"] < 30
    # ... so fp16 was skipped, saying why, rather than run against no dataset.
    assert rows["fp16"]["status"] == "skipped" and "needs part data" in rows["fp16"]["error"]
    assert set(rows["summary"]["parts_not_ok"]) == {"reference", "data", "fp16"}
    assert "| data | - | timeout |" in result.stdout


def test_fp16_checks_on_a_loss_scaling_history() -> None:
    """The fp16 branch the CPU rehearsal cannot reach: 3 overflows from the initial scale (the
    first logged scale is already halved once), 10 clean steps, then the scale doubles."""
    scales = [2.0**27, 2.0**26, 2.0**25] + [2.0**25] * 10 + [2.0**26] * 7
    history = {
        "train/loss": [(i + 1, 4.5 - 0.1 * i) for i in range(20)],
        "train/loss_scale": [(i + 1, s) for i, s in enumerate(scales)],
        "train/fp16_overflows": [(i + 1, float(min(i + 1, 3))) for i in range(20)],
    }
    warnings = "step 1: fp16 gradient overflow; DeepSpeed skipped the update\n" * 3
    figures, checks = loss_scale_figures(history, 20, "fp16", warnings)
    assert all(checks.values()), checks
    assert figures["fp16_overflows"] == 3 and figures["loss_scale_decreases"] == 2
    assert figures["loss_scale_increases"] == 1 and figures["loss_scale_final"] == 2.0**26
    # A scale that never moves, or overflows the trainer did not report as skipped, fail.
    history["train/loss_scale"] = [(i + 1, 2.0**16) for i in range(20)]
    _, checks = loss_scale_figures(history, 20, "fp16", "")
    assert not checks["scale_moved_down_and_up"] and not checks["each_overflow_skipped"]
    # bf16 (the smoke): the loss-scale checks are not made.
    _, checks = loss_scale_figures(history, 20, "bf16", "")
    assert set(checks) == {"all_steps_logged", "loss_falls"}


def test_the_evaluate_report_is_found_among_log_lines() -> None:
    text = 'INFO something\n{\n "step": 4,\n "metrics": {"loss": 1.5}\n}\n'
    assert last_json_object(text) == {"step": 4, "metrics": {"loss": 1.5}}
    with pytest.raises(RuntimeError, match="no JSON report"):
        last_json_object("nothing here\n")


def test_cli_rejects_unknown_parts() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--parts", "throughput_off,warp_drive"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "warp_drive" in result.stderr
