"""The Hugging Face config of an exported mnemos model (``model_type: mnemos``).

This file is written into the export folder (see `pretrain.export.package`) with its
``pretrain.*`` imports turned into imports of the copies next to it, so ``transformers`` loads
it with ``trust_remote_code=True`` and nothing of this project installed. In the repository it
runs as it is (tests use it directly).

The architecture is our `ModelConfig`, stored whole under ``mnemos`` in ``config.json``; the
standard names (``vocab_size``, ``hidden_size``, ...) are mirrors for tools that read them.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from pretrain.config import ModelConfig


class MnemosConfig(PretrainedConfig):
    model_type = "mnemos"

    def __init__(self, mnemos: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.mnemos = dict(mnemos or {})
        self.use_cache = bool(kwargs.pop("use_cache", True))
        if self.mnemos:
            spec = self.model_config()
            kwargs.setdefault("is_encoder_decoder", spec.family == "encoder_decoder")
            kwargs.setdefault("tie_word_embeddings", spec.tie_embeddings)
            self.vocab_size = spec.vocab_size
            self.hidden_size = spec.d_model
            self.num_hidden_layers = spec.n_layers
            self.num_attention_heads = spec.n_heads
            self.max_position_embeddings = spec.max_seq_len
            self.mem_len = spec.mem_len
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        """Our config, validated as training validated it."""
        spec = ModelConfig(**self.mnemos)
        spec.validate()
        return spec
