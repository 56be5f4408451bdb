"""Build a model from its config: the family class the config names, initialised."""

from __future__ import annotations

import torch

from pretrain.config import ModelConfig
from pretrain.model.families import Decoder, Encoder, EncoderDecoder, LanguageModel

# engine.precision (and the --precision / --dtype options) -> the torch dtype of the weights
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

FAMILIES: dict[str, type[LanguageModel]] = {
    "decoder": Decoder,
    "encoder": Encoder,
    "encoder_decoder": EncoderDecoder,
}


def build_model(config: ModelConfig) -> LanguageModel:
    """The family the config names, with initialised weights.

    Under ``deepspeed.zero.Init`` the engine builds the class (``FAMILIES[config.family]``)
    itself and calls ``init_weights(gather=...)``; see `LanguageModel.init_weights`.
    """
    model = FAMILIES[config.family](config)
    model.init_weights()
    return model
