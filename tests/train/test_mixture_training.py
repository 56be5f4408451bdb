"""Training on a weighted mixture of two prepared datasets (one tokenizer), through the real
`pretrain train` CLI: 2 gloo ranks, DeepSpeed ZeRO-3, a Transformer-XL decoder with a memory of
two segments (masked per row at a change of source).

Per-source metrics are recorded, a kill -9 resumes to the very same loss curve as an
uninterrupted run, and a changed mixture is refused at resume unless allowed."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pretrain.checkpoint import layout as ckpt
from pretrain.cli import main
from pretrain.evaluate.command import format_table
from pretrain.tracking import read_run
from tests.conftest import CORPORA
from tests.helpers.prepared_data import data_pipeline
from tests.helpers.trained_runs import SLICE_CHARS, experiment_file
from tests.train.runs import dump, losses, rank0, run_id, start_train, train, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_manifest(char_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 9,000 characters of tinyshakespeare, prepared with char_manifest's tokenizer
    (the same hash): a source ~7x smaller than the other, so it repeats."""
    root = tmp_path_factory.mktemp("small_source")
    text = (CORPORA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    corpus = root / "corpus.txt"
    corpus.write_text(text[SLICE_CHARS : SLICE_CHARS + 9_000], encoding="utf-8")
    (root / "data.yaml").write_text(
        f"name: small\noutput: {root / 'data'}\n"
        f"tokenizer: {char_manifest.parent.parent / 'tokenizer'}\n"
        f"source:\n  paths: [{corpus}]\n  format: text\n  text_mode: file\n"
        "split:\n  mode: position\n  validation_fraction: 0.1\n"
        "chunk_len: 32\nunit_bytes: 4096\nshard_bytes: 16384\n"
    )
    data_pipeline("prepare", str(root / "data.yaml"), "--workers", "1")
    return root / "data" / "manifest.json"


def mixture_file(tmp_path: Path, big: Path, small: Path, weights: tuple[float, float]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = experiment_file(tmp_path, big)
    text = config.read_text().replace(
        f"  manifest: {big}\n",
        f"  mixture:\n    - {{name: big, manifest: {big}, weight: {weights[0]}}}\n"
        f"    - {{name: small, manifest: {small}, weight: {weights[1]}}}\n",
    )
    assert "mixture" in text
    # A memory of two segments: after a change of source the other source's segment stays in
    # the memory for a step, masked (the memory's usable-slot entry, checkpointed with it).
    text = text.replace("mem_len: 16", "mem_len: 32")
    assert "mem_len: 32" in text
    config.write_text(text)
    return config


def test_mixture_run_logs_per_source_and_resumes_exactly_after_kill_9(
    char_manifest: Path,
    small_manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = tmp_path / "reference"
    config = mixture_file(reference, char_manifest, small_manifest, (0.6, 0.4))
    train(reference, config)
    record = read_run(f"sqlite:///{reference / 'mlflow.db'}", run_id(reference / "checkpoints"))
    metrics = record["metrics"]
    tokens = metrics["train/tokens/big"] + metrics["train/tokens/small"]
    assert tokens == metrics["train/tokens_seen"] == 8 * 2 * 2 * 2 * 16
    assert abs(metrics["train/tokens/small"] / tokens - 0.4) < 0.1  # 64 rows: coarse
    assert metrics["train/epochs/small"] > metrics["train/epochs/big"] > 0
    for name in ("big", "small"):
        assert metrics[f"val/{name}/loss"] > 0 and metrics[f"val/{name}/bpb"] > 0
    weighted = 0.6 * metrics["val/big/loss"] + 0.4 * metrics["val/small/loss"]
    assert metrics["val/loss"] == pytest.approx(weighted)

    # `pretrain evaluate` reports the same per-source table (in one process, bf16 like training).
    code = main(["evaluate", str(reference / "checkpoints"), "--json", "--no-mlflow"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])  # after DeepSpeed's accelerator notice
    assert code == 0 and sorted(report["sources"]) == ["big", "small"]
    for name in ("big", "small"):
        got = report["sources"][name]["loss"]
        assert got == pytest.approx(metrics[f"val/{name}/loss"], rel=2e-2)
    assert report["metrics"]["loss"] == pytest.approx(
        0.6 * report["sources"]["big"]["loss"] + 0.4 * report["sources"]["small"]["loss"]
    )
    table = format_table(report)
    assert "per source" in table and "small" in table.splitlines()[-1]

    killed = tmp_path / "killed"
    config = mixture_file(killed, char_manifest, small_manifest, (0.6, 0.4))
    job = start_train(killed, config)
    wait_for(ckpt.step_dir(killed / "checkpoints", 4) / ckpt.MARKER, job)
    job.kill(signal.SIGKILL)  # torchrun and both ranks, mid-step
    assert job.wait(60).returncode != 0
    resumed = train(killed, config)
    assert "resumed from step 4" in rank0(resumed)
    assert losses(killed) == losses(reference)

    # Other weights at resume: refused with the difference, unless allowed.
    changed = mixture_file(killed, char_manifest, small_manifest, (0.3, 0.7))
    refused = train(killed, changed, "train.max_steps=10", check=False)
    assert refused.returncode != 0, dump(refused)
    assert "share of 'big' 0.6 -> 0.3" in rank0(refused)
    assert "data.allow_mixture_change=true" in rank0(refused)
