"""lm-evaluation-harness on our models: the registered ``mnemos`` model type on a checkpoint,
and transformers' ``hf`` model on the ``--format hf`` export, over local task YAMLs (bundled
text, no hub). The ``mnemos`` route's perplexity is `pretrain evaluate`'s."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint.reading import open_checkpoint
from pretrain.checkpoint.tokenizer import manifest_tokenizer, training_manifest
from pretrain.cli import main
from pretrain.loader import ValidationLoader
from tests.conftest import REPO_ROOT
from tests.helpers.trained_runs import TrainedRun

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra")
pytest.importorskip("transformers", reason="the hf route needs transformers (dev dependency)")

ROLLING_TASK = """task: mnemos_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
CHOICE_TASK = """task: mnemos_next_line
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
"""


def _validation_documents(run: TrainedRun) -> tuple[list[str], int]:
    """The validation split's documents in stream order (decoded from its shards, split at
    eos) and the number of tokens its one stream predicts."""
    checkpoint = open_checkpoint(run.checkpoints)
    manifest_url = checkpoint.config.data.manifest
    loader = ValidationLoader(
        manifest_url,
        rank=0,
        world_size=1,
        batch_size=1,
        seq_len=1 << 16,
        objective="causal_lm",
        seed=0,
    )
    (batch,) = list(loader)
    inputs, targets = batch["input_ids"][0], batch["targets"][0]
    stream = [*inputs[targets >= 0].tolist(), int(targets[targets >= 0][-1])]
    tokenizer = Tokenizer.load(str(manifest_tokenizer(training_manifest(manifest_url), None).path))
    eos = tokenizer.special_ids.eos
    documents: list[str] = []
    current: list[int] = []
    for token in stream:
        if token == eos:
            documents.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    # The split is stored in whole chunks: its stream ends inside a document, without eos.
    assert current, "this fixture's validation stream ends inside a document"
    documents.append(tokenizer.decode(current))
    return documents, len(stream) - 1


def _tasks(tmp_path: Path, documents: list[str]) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rolling.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    lines = [
        line
        for line in (REPO_ROOT / "corpora/tinyshakespeare/input.txt")
        .read_text()
        .splitlines()[2000:2040]
        if line
    ]
    pairs = [{"context": a + "\n", "continuation": b} for a, b in itertools.pairwise(lines)]
    (tasks / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tasks / "rolling.yaml").write_text(ROLLING_TASK.format(docs=tasks / "rolling.jsonl"))
    (tasks / "pairs.yaml").write_text(CHOICE_TASK.format(docs=tasks / "pairs.jsonl"))
    return tasks


def _run(model: str, model_args: str, tasks: Path) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager

    import pretrain.evaluate.harness  # noqa: F401  (registers the mnemos model type)

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["mnemos_rolling", "mnemos_next_line"],
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=1,
        device="cpu",
    )
    results: dict[str, Any] = out["results"]
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_mnemos_route_gives_pretrain_evaluates_perplexity(
    xl_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = ["--streams", "1", "--batches", "0", "--precision", "fp32", "--json", "--no-mlflow"]
    assert main(["evaluate", str(xl_run.checkpoints), *args]) == 0
    out = capsys.readouterr().out
    # DeepSpeed's import may print a line before the report the first time it is imported.
    report = json.loads(out[out.index("{\n") :])["metrics"]
    documents, predicted = _validation_documents(xl_run)
    assert report["tokens"] == predicted
    model_args = f"checkpoint={xl_run.checkpoints},eos_after_last=False"
    results = _run("mnemos", model_args, _tasks(tmp_path, documents))
    rolling = results["mnemos_rolling"]
    utf8_bytes = sum(len(d.encode("utf-8")) for d in documents)
    logprob = -rolling["bits_per_byte,none"] * math.log(2) * utf8_bytes
    perplexity = math.exp(-logprob / predicted)
    assert perplexity == pytest.approx(report["perplexity"], rel=1e-4)
    pairs = results["mnemos_next_line"]
    assert math.isfinite(pairs["perplexity,none"]) and 0.0 <= pairs["acc,none"] <= 1.0


@pytest.mark.slow
@pytest.mark.distributed
def test_hf_route_runs_on_the_exported_decoder(
    xl_run: TrainedRun, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "xl_hf"
    assert main(["export", str(xl_run.checkpoints), str(out), "--format", "hf"]) == 0
    documents, _ = _validation_documents(xl_run)
    tasks = _tasks(tmp_path, documents[:20])
    # max_length: one window for every request (lm-eval's default is the model's max_seq_len,
    # 64 here, and it cuts the context to fit).
    args = f"pretrained={out},trust_remote_code=True,dtype=float32,max_length=4096"
    results = _run("hf", args, tasks)
    assert math.isfinite(results["mnemos_rolling"]["bits_per_byte,none"])
    assert 0.0 <= results["mnemos_next_line"]["acc,none"] <= 1.0
    # In one window without memory the mnemos route scores each line pair as the hf route does
    # (measured: log-likelihoods within 1.3e-5 nats of each other).
    mnemos = _run("mnemos", f"checkpoint={xl_run.checkpoints},mem_len=0,seq_len=4096", tasks)
    assert results["mnemos_next_line"]["perplexity,none"] == pytest.approx(
        mnemos["mnemos_next_line"]["perplexity,none"], rel=1e-4
    )
    assert torch.isfinite(torch.tensor(results["mnemos_rolling"]["word_perplexity,none"]))
