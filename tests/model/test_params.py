"""Parameter counts and FLOPs from the config, against built modules and published figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from data_pipeline.configuration import load_config
from pretrain.config import ModelConfig
from pretrain.model import FAMILIES, build_model, flops_per_token, num_params
from tests.model.common import tiny_config, tokens

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"
BIG = {"decoder_1_3b", "decoder_6_7b", "decoder_13b"}  # never built, not even on meta


def _llama(d: int, layers: int, ffn: int, vocab: int = 50304) -> int:
    # Llama-style block: q, k, v, o (4 d^2), SwiGLU gate/up/down (3 d ffn), two RMSNorm
    # weights; untied input and output embeddings; one final norm.
    return layers * (4 * d * d + 3 * d * ffn + 2 * d) + 2 * vocab * d + d


EXPECTED = {
    # Hugging Face GPT2LMHeadModel("gpt2"): 124,439,808 parameters, same architecture.
    "gpt2_small": 124_439_808,
    # Hugging Face BertForMaskedLM("bert-base-uncased") has 109,514,298; ours drops the token
    # type table and the embedding LayerNorm (2 x 768 + 2 x 768) and adds a final pre-norm
    # LayerNorm (2 x 768).
    "bert_base": 109_514_298 - 1536,
    # Hugging Face T5ForConditionalGeneration("t5-base"): 222,903,552, including two 32 x 12
    # relative bias tables that we do not have; we add W_R per layer and u, v per stack.
    "t5_base": 222_903_552 - 2 * 32 * 12 + 24 * 768 * 768 + 2 * 2 * 768,
    # Dai et al. 2019, table 2: 41M for the 12-layer enwik8 model.
    "transformer_xl_enwik8_base": 41_080_832,
    # SwiGLU widths from the 8/3 rule rounded up to 64: 5504, 10944, 13696.
    "decoder_1_3b": _llama(2048, 24, 5504),
    "decoder_6_7b": _llama(4096, 32, 10944),
    "decoder_13b": _llama(5120, 40, 13696),
    # nanoGPT's shakespeare-char (bias off, tied): 4 x 12 x 128^2 + 4 x 2 x 128 + 128 (final
    # norm) + 96 x 128 + 64 x 128 positions.
    "shakespeare_char": 4 * 12 * 128 * 128 + 4 * 2 * 128 + 128 + 96 * 128 + 64 * 128,
}


def _preset(name: str) -> ModelConfig:
    return load_config(ModelConfig, PRESETS / f"{name}.yaml")


def _module_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters are listed once


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts_match_published_figures(name: str) -> None:
    assert num_params(_preset(name)) == EXPECTED[name]


def test_every_preset_has_an_expected_count() -> None:
    shipped = {p.stem for p in PRESETS.glob("*.yaml")} - {"tiny"}
    assert shipped == set(EXPECTED)


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem not in BIG)
)
def test_formula_equals_the_built_module_for_presets(name: str) -> None:
    config = _preset(name)
    small = num_params(config) < 2_000_000
    # Presets above ~1M parameters are built on the meta device: real modules, no memory.
    with torch.device("cpu" if small else "meta"):
        model = FAMILIES[config.family](config)
    assert _module_count(model) == num_params(config) == model.num_params()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"position": "relative", "mem_len": 8},
        {"position": "rotary", "norm": "rmsnorm", "activation": "swiglu", "bias": False},
        {"tie_embeddings": False, "d_ff": 48},
        {"family": "encoder"},
        {"family": "encoder", "position": "relative", "bias": False, "tie_embeddings": False},
        {"family": "encoder_decoder"},
        {"family": "encoder_decoder", "position": "relative", "n_decoder_layers": 3},
    ],
)
def test_formula_equals_the_built_module_for_variants(overrides: dict[str, object]) -> None:
    config = tiny_config(**overrides)
    assert _module_count(build_model(config)) == num_params(config)


@pytest.mark.parametrize(
    "overrides",
    [
        {"position": "learned"},
        {"position": "relative", "mem_len": 16},
        {"position": "rotary", "activation": "swiglu", "bias": False},
        {"family": "encoder", "position": "relative", "mem_len": 16},
    ],
)
def test_flops_per_token_matches_a_flop_counter(overrides: dict[str, object]) -> None:
    config = tiny_config(**overrides)
    model = build_model(config)
    seq, batch = 16, 2
    mems = model.init_mems(batch)
    if config.mem_len:
        _, mems = model(tokens(batch, config.mem_len, seed=1))  # full memory
    counter = FlopCounterMode(display=False)
    # The math backend spells attention out as matmuls the counter sees (it has no formula
    # for the fused CPU kernel); it computes masked scores in full, as our count assumes.
    with counter, sdpa_kernel(SDPBackend.MATH):
        logits, _ = model(tokens(batch, seq), mems)
        logits.sum().backward()
    measured = counter.get_total_flops()
    if config.position == "relative":
        # W_R projects the P distance sinusoids once per segment and layer (forward and
        # weight gradient), which a per-token figure leaves out on purpose. The table carries
        # one zero row more (the relative shift's padding column, see Positions.relative),
        # which also adds one column to the position scores (forward and two gradients).
        distances = seq + config.mem_len + (0 if config.family == "decoder" else seq - 1)
        measured -= config.n_layers * 4 * (distances + 1) * config.d_model**2
        measured -= config.n_layers * 3 * 2 * config.d_model * batch * seq
    assert measured / (batch * seq) == pytest.approx(flops_per_token(config, seq), rel=1e-9)


def test_encoder_decoder_flops_count_both_sides() -> None:
    config = tiny_config(family="encoder_decoder")
    decoder = tiny_config()
    # One encoder + one decoder token costs more than two decoder-only tokens (cross-attention).
    assert flops_per_token(config, 16) > flops_per_token(decoder, 16)
