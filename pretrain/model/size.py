"""A model's size and cost from its config alone: no module is built.

``num_params`` is a closed formula over the config (tests check it against the built module for
small presets), so the size of a 13B preset is known without allocating it; ``flops_per_token``
feeds MFU.
"""

from __future__ import annotations

from pretrain.config import ModelConfig


def _norm_params(config: ModelConfig) -> int:
    with_bias = config.norm == "layernorm" and config.bias
    return config.d_model * (2 if with_bias else 1)


def _block_params(config: ModelConfig, *, cross: bool) -> int:
    d, ffn, b = config.d_model, config.ffn_dim, int(config.bias)
    fc_width = 2 * ffn if config.activation == "swiglu" else ffn
    attention = 4 * d * d + 4 * d * b  # qkv + output projection
    if config.position == "relative":
        attention += d * d  # W_R, no bias
    mlp = d * fc_width + fc_width * b + ffn * d + d * b
    total = 2 * _norm_params(config) + attention + mlp
    if cross:
        total += _norm_params(config) + 4 * d * d + 4 * d * b  # q, kv, output projection
    return total


def _stack_params(config: ModelConfig, n_layers: int, *, cross: bool) -> int:
    global_biases = 2 * config.d_model if config.position == "relative" else 0  # u and v
    return n_layers * _block_params(config, cross=cross) + _norm_params(config) + global_biases


def _position_table(config: ModelConfig) -> int:
    return config.max_seq_len * config.d_model if config.position == "learned" else 0


def num_params(config: ModelConfig) -> int:
    """Number of distinct parameters of ``build_model(config)``; tied embeddings count once."""
    d, vocab = config.d_model, config.vocab_size
    output = 0 if config.tie_embeddings else vocab * d
    total = vocab * d  # token embedding
    if config.family == "decoder":
        total += _position_table(config) + _stack_params(config, config.n_layers, cross=False)
        return total + output
    if config.family == "encoder":
        total += _position_table(config) + _stack_params(config, config.n_layers, cross=False)
        head = d * d + d * config.bias + _norm_params(config) + vocab * config.bias
        return total + head + output
    total += 2 * _position_table(config)
    total += _stack_params(config, config.n_layers, cross=False)
    total += _stack_params(config, config.decoder_layers, cross=True)
    return total + output


def _block_matmul_weights(config: ModelConfig, *, cross: bool) -> int:
    """Weights of a block that multiply every token (no biases, norms or W_R)."""
    d, ffn = config.d_model, config.ffn_dim
    fc_width = 2 * ffn if config.activation == "swiglu" else ffn
    return 4 * d * d + d * fc_width + ffn * d + (4 * d * d if cross else 0)


def _attention_flops(config: ModelConfig, query_len: int, key_len: int, causal: bool) -> int:
    """Forward FLOPs per query token per layer of scores and weighted values over ``key_len``
    keys (counted in full, as PaLM's MFU does, although a causal mask skips half), plus the
    Transformer-XL position term over its P distances, plus projecting the memory's share of
    keys and values (memory rows are re-projected every segment)."""
    d = config.d_model
    flops = 2 * 2 * d * key_len + 2 * 2 * d * d * (key_len - query_len) // query_len
    if config.position == "relative":
        distances = key_len if causal else key_len + query_len - 1
        flops += 2 * config.d_model * distances
    return flops


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs (forward + backward = 3 x forward) per token of a ``seq_len`` segment:
    6 per matmul weight plus attention. Embedding lookups, biases, norms and the per-segment
    projection of Transformer-XL's sinusoids are left out (negligible or not per token: W_R
    costs 4 * P * d^2 per segment and layer, shared by the batch).

    For the encoder-decoder, a "token" is one of the encoder's or the decoder's, with both
    sequences ``seq_len`` long: the FLOPs of one encoder token and one decoder token, halved.
    """
    seq = config.max_seq_len if seq_len is None else seq_len
    d = config.d_model
    keys = seq + config.mem_len
    output = config.vocab_size * d  # the LM head is a matmul even when tied to the embedding
    if config.family == "encoder_decoder":
        matmul = config.n_layers * _block_matmul_weights(config, cross=False)
        matmul += config.decoder_layers * _block_matmul_weights(config, cross=True) + output
        attention = config.n_layers * _attention_flops(config, seq, keys, causal=False)
        cross = 2 * 2 * d * seq
        attention += config.decoder_layers * (_attention_flops(config, seq, seq, True) + cross)
        return 3 * (2 * matmul + attention) // 2
    matmul = config.n_layers * _block_matmul_weights(config, cross=False) + output
    if config.family == "encoder":
        matmul += d * d  # the MLM head's dense layer
    causal = config.family == "decoder"
    attention = config.n_layers * _attention_flops(config, seq, keys, causal=causal)
    return 3 * (2 * matmul + attention)
