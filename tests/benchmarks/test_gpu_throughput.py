"""`benchmarks/gpu_throughput.py` runs end to end on CPU, and its MFU/HFU conventions hold.

The GPU figures themselves need a GPU; this checks that the script a GPU run would use works:
the real trainer step under DeepSpeed ZeRO-3 (gloo, ``DS_ACCELERATOR=cpu``), one process per
activation-checkpointing setting, the table and the JSON rows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_throughput import PEAK_FLOPS, experiment, peak_flops, recomputed_forward_flops
from tests.helpers.distributed import REPO_ROOT, distributed_env

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_throughput.py"


@pytest.mark.slow  # two DeepSpeed engines in fresh processes: ~30 s
def test_smoke_run_writes_a_row_per_checkpointing_setting(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--peak-tflops", "1", "--json", str(out)],
        cwd=REPO_ROOT,
        env=distributed_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {row["checkpointing"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == ["off", "on"]
    for row in rows.values():
        assert row["data"] == "synthetic random tokens"
        assert row["world_size"] == 1 and row["micro_batch"] == 2 and row["seq_len"] == 64
        assert row["tokens_per_s_per_gpu"] > 0 and row["ms_per_step"] > 0
        assert row["peak_flops"] == 1e12
        assert math.isfinite(row["mfu"]) and row["mfu"] > 0
        assert row["memory"] == "cpu_rss" and row["peak_rss_gib"] > 0
        assert math.isfinite(row["last_loss"])
        assert f"| CPU | 1 | {row['checkpointing']} | 2 |" in result.stdout  # the table
    off, on = rows["off"], rows["on"]
    assert off["activation_checkpointing"] == "off"
    assert on["activation_checkpointing"] == "every_layer"
    assert off["hfu"] == off["mfu"]
    assert on["hfu"] > on["mfu"]
    # Same model and tokens: the recomputed forward is the only difference in counted FLOPs.
    assert on["model_flops_per_token"] == off["model_flops_per_token"]


def test_peak_table_hfu_convention_and_cli() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", None)[0] == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16", None)[0] == 756e12
    assert peak_flops("NVIDIA H200", "bf16", None)[0] == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16", None)[0] == 312e12
    for unknown in ("NVIDIA H100 NVL", "CPU", "NVIDIA L4"):
        peak, reason = peak_flops(unknown, "bf16", None)
        assert peak is None and "--peak-tflops" in reason
    assert peak_flops("CPU", "bf16", 2.5)[0] == 2.5e12
    assert len(PEAK_FLOPS) >= 4
    # HFU with every block checkpointed: the blocks' forward again, not the LM head's, so a
    # little under 4/3 of MFU for the 1.3B preset.
    config = experiment(
        REPO_ROOT / "configs" / "model" / "decoder_1_3b.yaml",
        seq_len=2048,
        micro_batch=1,
        precision="bf16",
        checkpointing="on",
        steps=1,
        overrides=[],
    )
    from pretrain.model import flops_per_token

    model_flops = flops_per_token(config.model, 2048)
    ratio = 1 + recomputed_forward_flops(config) / model_flops
    assert 1.28 < ratio < 4 / 3
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "examples:" in result.stdout
    assert "torchrun" in result.stdout
    for flag in ("--checkpointing=sometimes", "--micro-batch=0"):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), flag], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2 and "error:" in result.stderr, flag
