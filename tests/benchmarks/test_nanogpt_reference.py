"""`benchmarks/nanogpt_reference.py` follows nanoGPT's recipe: the lr schedule, the weight-decay
groups, the whole-split scorer, and a tiny real training run on tinyshakespeare."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.nanogpt_reference import (
    CORPUS,
    GPT,
    GPTConfig,
    ReferenceResult,
    configure_optimizer,
    get_lr,
    run_reference,
    whole_split_loss,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20k characters of tinyshakespeare (2k of them the validation split)."""
    if not CORPUS.is_file():
        pytest.skip(f"tinyshakespeare is not bundled here: expected {CORPUS}")
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def test_lr_schedule_matches_nanogpts_formula() -> None:
    # lr 1e-3, min_lr 1e-4, warmup 100, decay over 2000: the README command's values.
    assert get_lr(0) == pytest.approx(1e-3 / 101, rel=1e-12)
    assert get_lr(99) == pytest.approx(1e-3 * 100 / 101, rel=1e-12)
    assert get_lr(100) == pytest.approx(1e-3, rel=1e-12)  # cos(0): the peak
    assert get_lr(1050) == pytest.approx(5.5e-4, rel=1e-12)  # halfway: (1e-3 + 1e-4) / 2
    # One step before the end: 1 + cos(pi - pi/1900) = 1 - cos(pi/1900) ~ (pi/1900)^2 / 2.
    assert get_lr(1999) == pytest.approx(1e-4 + 9e-4 * (math.pi / 1900) ** 2 / 4, rel=1e-9)
    assert get_lr(1999) > 1e-4
    assert get_lr(2000) == pytest.approx(1e-4, rel=1e-12)
    assert get_lr(2001) == 1e-4


def test_weight_decay_groups_count_every_matrix_once_and_exempt_layernorms() -> None:
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32))
    assert model.lm_head.weight is model.wte.weight  # tied
    decay_group, exempt_group = configure_optimizer(model).param_groups
    assert decay_group["weight_decay"] == 0.1 and exempt_group["weight_decay"] == 0.0
    decay, exempt = decay_group["params"], exempt_group["params"]
    assert len({id(p) for p in decay}) == len(decay)  # nothing twice, the tied matrix included
    assert sum(p is model.lm_head.weight for p in decay) == 1
    matrices = {id(p) for _, p in model.named_parameters() if p.dim() >= 2}
    assert {id(p) for p in decay} == matrices
    assert any(p is model.wpe.weight for p in decay)
    layernorms = [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layernorms) == 2 * 2 + 1
    assert {id(p) for p in exempt} == {id(w) for w in layernorms}
    unique = {id(p) for p in model.parameters()}
    assert len(decay) + len(exempt) == len(unique)
    # 2 blocks x (c_attn, attn c_proj, c_fc, mlp c_proj) + wte/lm_head + wpe
    assert len(decay) == 2 * 4 + 2


def test_whole_split_scorer_scores_each_target_once_with_fresh_windows() -> None:
    block = 8
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=block, n_layer=1, n_head=2, n_embd=16)).eval()
    data = torch.randint(11, (3 * block + 6,))  # 29 targets: 3 full windows and 5 more
    expected, count = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(data)):  # each target on its own, from its window's start
            start = (t - 1) // block * block
            logits = model(data[start:t].unsqueeze(0))[0, -1]
            expected += F.cross_entropy(logits, data[t]).item()
            count += 1
    assert count == len(data) - 1
    assert whole_split_loss(model, data, block_size=block) == pytest.approx(
        expected / count, rel=1e-5
    )
    # Batching windows differently changes nothing.
    assert whole_split_loss(model, data, block_size=block, windows_per_batch=2) == pytest.approx(
        expected / count, rel=1e-5
    )


def test_tiny_run_learns_and_is_deterministic_for_a_seed(small_corpus: Path) -> None:
    vocab = len(set(small_corpus.read_text(encoding="utf-8")))

    def tiny_run(seed: int) -> ReferenceResult:
        return run_reference(
            seed,
            iters=400,
            corpus=small_corpus,
            threads=1,
            n_layer=1,
            n_head=2,
            n_embd=32,
            block_size=16,
            batch_size=12,
            learning_rate=3e-3,
            warmup_iters=10,
        )  # ~1 s; reaches ~2.5 nats, past the unigram entropy (~3.3)

    first, again, other = tiny_run(0), tiny_run(0), tiny_run(1)
    assert first.val_loss < math.log(vocab) - 1.0, (first, math.log(vocab))
    # The 20-batch estimator samples the same quantity: close, not equal.
    assert abs(first.estimated_val_loss - first.val_loss) < 0.3
    assert first.estimated_val_loss != first.val_loss
    assert first.ms_per_iter > 0
    assert again.val_loss == first.val_loss
    assert again.estimated_val_loss == first.estimated_val_loss
    assert other.val_loss != first.val_loss  # the seed does reach the run


def test_cli_prints_the_table(small_corpus: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "nanogpt_reference.py"),
            "--seeds",
            "0,1",
            "--iters",
            "3",
            "--threads",
            "1",
            "--corpus",
            str(small_corpus),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| seed | val loss, whole split |" in result.stdout
    assert result.stdout.count("\n| 0 | ") == 1 and result.stdout.count("\n| 1 | ") == 1
    assert "over 2 seeds: whole split " in result.stdout
