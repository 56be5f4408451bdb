"""What the reproduction scripts share: prepare a bundled corpus once, train an experiment
through the real CLI (1 process, or N under torchrun), evaluate its checkpoint, summarise seeds,
and score the unigram baseline a trained model has to beat.

Every run goes through the same commands a user types (`data-pipeline`, `pretrain train`,
`pretrain evaluate`), in subprocesses, with MLflow in a sqlite store inside the run's directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the other helpers run without it
    from torch import Tensor

REPO = Path(__file__).resolve().parents[1]


def ensure_prepared(tokenizer_config: str, data_config: str, manifest: Path) -> None:
    """Train the tokenizer and prepare the shards when ``manifest`` does not exist yet. When it
    does, `prepare` still runs: with every unit committed it only checks that the dataset was
    built from this data recipe and tokenizer (and refuses, naming what differs, when not), so
    a run never reads data left by an older recipe. (A tokenizer artifact left by an older
    tokenizer recipe is not detected: delete runs/tokenizers/... after changing one.)"""
    steps = [["prepare", data_config]]
    if not manifest.is_file():
        steps.insert(0, ["train-tokenizer", tokenizer_config])
    for args in steps:
        subprocess.run([sys.executable, "-m", "data_pipeline.cli", *args], cwd=REPO, check=True)


@dataclass(frozen=True)
class TrainResult:
    val_loss: float  # the last validation the run logged
    val_bpb: float | None  # bits per byte of that validation (decoders)
    ms_per_step: float  # median of the log windows after the first (warm-up); nan: none logged
    wall_s: float
    checkpoints: Path


def train(
    experiment: Path,
    out: Path,
    overrides: Sequence[str] = (),
    *,
    processes: int = 1,
    threads: int | None = None,
) -> TrainResult:
    """Train ``experiment`` from scratch into ``out`` (checkpoints, MLflow store, train.log)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = [
        f"checkpoint.dir={out / 'checkpoints'}",
        "train.resume=never",
        f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
        f"tracking.artifact_location={out / 'mlartifacts'}",
        *overrides,
    ]
    cores = os.cpu_count() or 2
    env = {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "PYTHONUNBUFFERED": "1",
        # One process gets every core; N processes share them.
        "OMP_NUM_THREADS": str(threads or max(1, cores // processes)),
    }
    if processes == 1:
        cmd = [sys.executable, "-m", "pretrain.cli", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "pretrain.cli", "train"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(
        [*cmd, str(experiment), *settings], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    log = out / "train.log"
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"training failed: {experiment.name} {list(overrides)}; see {log}")
    # The progress lines are log lines: on stderr since the console went through logging.
    output = result.stdout + result.stderr
    validations = re.findall(r"validation at step \d+: loss ([0-9.]+)(?:.*?bpb ([0-9.]+))?", output)
    if not validations:
        raise SystemExit(f"{log}: the run logged no validation")
    step_ms = [float(ms) for ms in re.findall(r"\| (\d+) ms/step", output)]
    loss, bpb = validations[-1]
    return TrainResult(
        val_loss=float(loss),
        val_bpb=float(bpb) if bpb else None,
        ms_per_step=statistics.median(step_ms[1:] or step_ms) if step_ms else math.nan,
        wall_s=wall,
        checkpoints=out / "checkpoints",
    )


def evaluate(checkpoints: Path, *args: str, threads: int | None = None) -> dict[str, Any]:
    """`pretrain evaluate CHECKPOINTS --json ARGS...` in one process (on ``threads`` CPU
    threads; default every core); its report."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "OMP_NUM_THREADS": str(threads or os.cpu_count() or 1),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.cli",
            "evaluate",
            str(checkpoints),
            "--json",
            "--no-mlflow",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"evaluation of {checkpoints} failed:\n{result.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± sample std`` to ``digits`` decimals (just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# -- The unigram baseline: a model that ignores its input ------------------------------------
# It predicts every target by the target's frequency in the training batches. The targets are
# taken from the real loaders, exactly as `pretrain evaluate` picks them, so a model's loss and
# the baseline's are over the same tokens (the masked positions of the same masking draw; the
# span targets with their sentinels and EOS).


@dataclass(frozen=True)
class UnigramBaseline:
    loss: float  # mean -log p(target) in nats over the scored targets
    accuracy: float  # fraction of the scored targets equal to the most frequent counted one
    targets: int  # targets scored
    counted: int  # targets the frequencies were estimated from


def batch_targets(batch: Mapping[str, Tensor], family: str) -> np.ndarray:
    """The target ids `pretrain evaluate` scores in one loader batch, flattened: next tokens
    (decoder), the selected positions' labels (encoder), the decoder targets without padding
    (encoder-decoder: sentinels and EOS included)."""
    from pretrain.batch_loss import TARGETS
    from pretrain.objectives import IGNORE_INDEX

    targets = batch[TARGETS[cast(Any, family)]].numpy().ravel()
    return targets[targets != IGNORE_INDEX]


def count_targets(
    batches: Iterable[Mapping[str, Tensor]], family: str, vocab_size: int
) -> np.ndarray:
    """How often each id in [0, vocab_size) is a target in ``batches``, (vocab_size,) int64."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in batches:
        counts += np.bincount(batch_targets(batch, family), minlength=vocab_size)
    return counts


def score_unigram(
    counts: np.ndarray, batches: Iterable[Mapping[str, Tensor]], family: str
) -> UnigramBaseline:
    """Score the targets of ``batches`` with the add-one smoothed frequencies of ``counts``
    (over all ``counts.size`` ids, the model's vocabulary) and with always guessing the most
    frequent counted id."""
    log_p = np.log(counts + 1.0) - np.log(float(counts.sum()) + counts.size)
    best = int(np.argmax(counts))
    nll, correct, total = 0.0, 0, 0
    for batch in batches:
        targets = batch_targets(batch, family)
        nll -= float(log_p[targets].sum())
        correct += int((targets == best).sum())
        total += int(targets.size)
    return UnigramBaseline(
        loss=nll / max(total, 1),
        accuracy=correct / max(total, 1),
        targets=total,
        counted=int(counts.sum()),
    )


def checkpoint_baseline(step_dir: Path, settings: Mapping[str, Any]) -> UnigramBaseline:
    """The unigram baseline of the run that wrote ``step_dir`` (a committed step; its report's
    "checkpoint"): frequencies counted over exactly the training batches the run took (every
    rank's, every step up to this one), scored on the validation batches `pretrain evaluate`
    scored with ``settings`` (its report's "settings": split, seq_len, streams, batches).
    Imports no DeepSpeed."""
    from data_pipeline.configuration import load_config
    from pretrain.batch_loss import OBJECTIVES
    from pretrain.checkpoint.layout import read_marker
    from pretrain.config import ExperimentConfig
    from pretrain.evaluate.loop import EvalSettings, validation_loader
    from pretrain.loader import TrainLoader

    marker = read_marker(step_dir)
    config = load_config(ExperimentConfig, step_dir / "config.yaml")
    family, train_cfg = config.model.family, config.train
    world_size, steps = int(marker["world_size"]), int(marker["step"])
    manifest = config.data.manifest  # relative paths are the repository's, as for `train`
    if "://" not in manifest and not Path(manifest).is_absolute():
        manifest = str(REPO / manifest)
    counts = np.zeros(config.model.vocab_size, dtype=np.int64)
    for rank in range(world_size):  # the trainer's own loader arguments, rank by rank
        with TrainLoader(
            manifest,
            rank=rank,
            world_size=world_size,
            micro_batch_size=train_cfg.micro_batch_size,
            grad_accum=train_cfg.grad_accum,
            seq_len=train_cfg.seq_len,
            objective=OBJECTIVES[family],
            seed=config.data.seed,
            data_config=config.data,
            expected_vocab_size=config.model.vocab_size,
            mem_len=config.model.mem_len,
        ) as loader:
            for _ in range(steps):
                counts += count_targets(loader.next_step(), family, config.model.vocab_size)
    evaluated = EvalSettings(
        **{k: settings[k] for k in ("split", "seq_len", "mem_len", "streams", "batches")}
    )
    validation = validation_loader(
        config,
        manifest,
        evaluated,
        rank=0,
        world_size=1,  # the same rows as any process count: a row's masking seed is its stream's
        expected_tokenizer_hash=None,
    )
    limit = evaluated.batches if evaluated.batches > 0 else len(validation)
    return score_unigram(counts, islice(validation, limit), family)
