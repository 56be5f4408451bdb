"""Decoders as Hugging Face checkpoints (``config.json`` + ``model.safetensors``), so the
ecosystem's tools (transformers, vLLM, lm-evaluation-harness) load them without this package.

Two architectures express our decoders exactly:

* **GPT-2**: learned positions + LayerNorm + GELU (tanh). GPT-2's ``Conv1D`` stores weights as
  (in, out), so every projection is transposed; its fused ``c_attn`` splits q, k, v in our order.
  Without biases (``bias: false``) the bias tensors GPT-2 always has are written as zeros.
* **Llama**: rotary + RMSNorm + SwiGLU. Our fused ``qkv`` splits into q/k/v_proj and our fused
  SwiGLU ``fc`` into gate_proj (first half) and up_proj (second half); rotary pairs (x[i],
  x[i + d/2]) with the same frequencies as Llama's ``rotate_half``, so no permutation is needed.

Everything else (Transformer-XL's relative attention, a rotary decoder trained with memory,
encoders, encoder-decoders, mixed variants) is written as a ``mnemos`` model: our weights under
``mnemos.``, a ``config.json`` with ``auto_map``, and the modelling package generated from
``pretrain/model`` (`pretrain.export.package`), loaded with ``trust_remote_code=True``.

Weights go through ``huggingface_hub.save_torch_state_dict``: one ``model.safetensors``, or
shards with ``model.safetensors.index.json`` past ``max_shard_size``. Tensors are taken out of
the consolidated state one by one as they are converted, so the state is not held twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.export.package import AUTO_CLASSES, auto_map, write_package


def architecture(config: ModelConfig) -> str:
    """'gpt2' or 'llama' where one of those is exactly our model, else 'mnemos' (our own
    modelling code in the export)."""
    if config.family != "decoder" or config.mem_len:
        return "mnemos"  # no HF class carries our memory, encoders or encoder-decoders
    kind = (config.position, config.norm, config.activation)
    if kind == ("learned", "layernorm", "gelu"):
        return "gpt2"
    if kind == ("rotary", "rmsnorm", "swiglu"):
        return "llama"
    return "mnemos"


def _gpt2(config: ModelConfig, state: dict[str, Tensor]) -> tuple[dict[str, Any], dict]:
    d, ffn = config.d_model, config.ffn_dim
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,
        "n_embd": d,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": ffn,
        "activation_function": "gelu_new",  # the tanh approximation, as our MLP uses
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_embeddings,
    }

    def bias(name: str, size: int) -> Tensor:
        return state.get(name, torch.zeros(size))

    out = {
        "transformer.wte.weight": state["tok_emb.weight"],
        "transformer.wpe.weight": state["pos_emb.weight"],
        "transformer.ln_f.weight": state["stack.norm.weight"],
        "transformer.ln_f.bias": bias("stack.norm.bias", d),
    }
    for i in range(config.n_layers):
        ours, hf = f"stack.layers.{i}.", f"transformer.h.{i}."
        pairs = {
            "ln_1": ("norm_attn", d),
            "ln_2": ("norm_mlp", d),
        }
        for name, (src, size) in pairs.items():
            out[f"{hf}{name}.weight"] = state[f"{ours}{src}.weight"]
            out[f"{hf}{name}.bias"] = bias(f"{ours}{src}.bias", size)
        linears = {
            "attn.c_attn": ("attn.qkv", 3 * d),
            "attn.c_proj": ("attn.proj", d),
            "mlp.c_fc": ("mlp.fc", ffn),
            "mlp.c_proj": ("mlp.proj", d),
        }
        for name, (src, size) in linears.items():
            out[f"{hf}{name}.weight"] = state[f"{ours}{src}.weight"].t()  # Conv1D: (in, out)
            out[f"{hf}{name}.bias"] = bias(f"{ours}{src}.bias", size)
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return hf_config, out


def _llama(config: ModelConfig, state: dict[str, Tensor]) -> tuple[dict[str, Any], dict]:
    d, ffn = config.d_model, config.ffn_dim
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": d,
        "intermediate_size": ffn,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
    }
    out = {
        "model.embed_tokens.weight": state["tok_emb.weight"],
        "model.norm.weight": state["stack.norm.weight"],
    }
    for i in range(config.n_layers):
        ours, hf = f"stack.layers.{i}.", f"model.layers.{i}."
        out[f"{hf}input_layernorm.weight"] = state[f"{ours}norm_attn.weight"]
        out[f"{hf}post_attention_layernorm.weight"] = state[f"{ours}norm_mlp.weight"]
        splits = {
            "attn.qkv": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], d),
            "mlp.fc": (["mlp.gate_proj", "mlp.up_proj"], ffn),
        }
        for src, (names, size) in splits.items():
            for part, name in enumerate(names):
                rows = slice(part * size, (part + 1) * size)
                out[f"{hf}{name}.weight"] = state[f"{ours}{src}.weight"][rows]
                if config.bias:
                    out[f"{hf}{name}.bias"] = state[f"{ours}{src}.bias"][rows]
        for src, name in (("attn.proj", "self_attn.o_proj"), ("mlp.proj", "mlp.down_proj")):
            out[f"{hf}{name}.weight"] = state[f"{ours}{src}.weight"]
            if config.bias:
                out[f"{hf}{name}.bias"] = state[f"{ours}{src}.bias"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return hf_config, out


def _mnemos(config: ModelConfig, state: dict[str, Tensor]) -> tuple[dict[str, Any], dict]:
    _, wrapper = AUTO_CLASSES[config.family]
    hf_config = {
        "architectures": [wrapper],
        "model_type": "mnemos",
        "auto_map": auto_map(config.family),
        "mnemos": asdict(config),
        "is_encoder_decoder": config.family == "encoder_decoder",
        "tie_word_embeddings": config.tie_embeddings,
    }
    tied = {"decoder": "lm_head.weight", "encoder": "head.out.weight"}
    drop = tied.get(config.family, "lm_head.weight") if config.tie_embeddings else None
    # A tied output matrix is the embedding: stored once, re-tied by _tied_weights_keys.
    return hf_config, {f"mnemos.{k}": v for k, v in state.items() if k != drop}


def _own_tensor(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``, contiguous and owning its storage (safetensors refuses views
    into a larger buffer, e.g. one of q/k/v split from the fused qkv)."""
    out = tensor.detach().to(dtype).contiguous()
    if out.untyped_storage().nbytes() != out.numel() * out.element_size():
        out = out.clone()
    return out


def save_hf(
    config: ModelConfig,
    state: dict[str, Tensor],
    out: str | Path,
    *,
    special_ids: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str = "5GB",
) -> str:
    """Write ``config.json`` and the weights under ``out``; returns the architecture.
    The mnemos architecture also gets its modelling package (``modeling_mnemos.py`` ...).
    ``state`` is consumed (emptied), so that its tensors are not held next to their copies."""
    arch = architecture(config)
    convert = {"gpt2": _gpt2, "llama": _llama, "mnemos": _mnemos}[arch]
    hf_config, tensors = convert(config, state)
    ids = special_ids or {}
    hf_config.update(
        {
            "bos_token_id": ids.get("bos"),
            "eos_token_id": ids.get("eos"),
            "pad_token_id": ids.get("pad"),
            "dtype": str(dtype).removeprefix("torch."),
            "use_cache": True,
        }
    )
    if config.family == "encoder_decoder":
        hf_config["decoder_start_token_id"] = ids.get("pad")  # shift_right's start (as T5)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state.clear()  # from here `tensors` holds the only references: each is freed once converted
    converted = {}
    for name in list(tensors):
        converted[name] = _own_tensor(tensors.pop(name), dtype)
    save_torch_state_dict(converted, out, max_shard_size=max_shard_size, metadata={"format": "pt"})
    if arch == "mnemos":
        write_package(out)
    (out / "config.json").write_text(json.dumps(hf_config, indent=1, sort_keys=True) + "\n")
    return arch
