"""`pretrain generate`: seeded sampling is deterministic, and incremental decoding with the
memory as the cache equals recomputing the whole sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.cli import main
from pretrain.config import ModelConfig, Position
from pretrain.generate.command import generate_text, load_generator
from pretrain.generate.sampling import SamplingConfig, filter_logits, sample
from pretrain.model import Decoder, build_model, decode_step
from tests.helpers.trained_runs import TrainedRun


def _decoder(position: Position, mem_len: int = 0) -> Decoder:
    config = ModelConfig(
        family="decoder",
        vocab_size=50,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        position=position,
        mem_len=mem_len,
    )
    torch.manual_seed(1)
    model = build_model(config).eval()
    assert isinstance(model, Decoder)
    return model


@pytest.mark.parametrize(("position", "mem_len"), [("relative", 8), ("rotary", 8), ("learned", 0)])
def test_incremental_decoding_equals_full_recomputation(position: Position, mem_len: int) -> None:
    model = _decoder(position, mem_len)
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    new = sample(model, prompt, SamplingConfig(max_new_tokens=30, temperature=1.0, seed=3))
    sequence = torch.cat([prompt, new], dim=1)  # (2, 35)
    with torch.no_grad():
        full, _ = model(sequence, None, mem_len=0)  # every position over its whole prefix
        logits, cache = decode_step(model, sequence[:, :5], None)
        steps = [logits]
        for t in range(5, sequence.size(1)):
            logits, cache = decode_step(model, sequence[:, t : t + 1], cache)
            steps.append(logits)
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)
    # Greedy decoding through the cache picks what recomputation would pick at every step.
    greedy = sample(model, prompt, SamplingConfig(max_new_tokens=12, temperature=0.0))
    tokens = prompt
    for _ in range(12):
        with torch.no_grad():
            step_logits, _ = model(tokens, None, mem_len=0)
        tokens = torch.cat([tokens, step_logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, tokens[:, 5:])


def test_learned_positions_refuse_to_run_past_their_table() -> None:
    model = _decoder("learned")
    with pytest.raises(ValueError, match="learned position table"):
        sample(model, torch.zeros(1, 60, dtype=torch.long), SamplingConfig(max_new_tokens=10))


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, None, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert filter_logits(logits, 3, None).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, 1, 0.99).isfinite().tolist() == [[True, False, False, False]]


@pytest.mark.slow
@pytest.mark.distributed
def test_generation_is_deterministic_with_a_seed(xl_export: Path) -> None:
    generator = load_generator(xl_export)
    settings = SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=20, top_p=0.95, seed=5)
    first = generate_text(generator, "ROMEO:", settings, num_samples=2)
    assert generate_text(generator, "ROMEO:", settings, num_samples=2) == first
    other = generate_text(generator, "ROMEO:", SamplingConfig(**{**settings.__dict__, "seed": 6}))
    assert other[0] != first[0]
    assert first[0] != first[1]  # the samples of one call are independent draws
    assert all(0 <= i < generator.tokenizer.vocab_size for row in first for i in row)


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_generates_the_same_text_from_checkpoint_and_export(
    xl_run: TrainedRun, xl_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--prompt", "KING:", "--max-new-tokens", "30", "--seed", "2", "--top-k", "10"]
    assert main(["generate", str(xl_export), *args]) == 0
    from_export = capsys.readouterr().out
    assert main(["generate", str(xl_run.checkpoints), *args]) == 0
    from_checkpoint = capsys.readouterr().out
    assert from_export.startswith("KING:") and len(from_export) > len("KING:\n")
    assert from_checkpoint == from_export
    assert main(["generate", str(xl_export), "--top-p", "1.5"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
