"""Encoder, decoder and encoder-decoder Transformers with Transformer-XL segment memory.

The public surface (see docs/models.md): ``build_model``, the family classes, ``num_params``,
``flops_per_token``, incremental decoding (``decode_step``; sampling on top of it is
``pretrain.generate.sampling``), and ``shift_right`` for seq2seq decoder inputs.
"""

from pretrain.model.build import FAMILIES, build_model
from pretrain.model.decoding import decode_step
from pretrain.model.families import Decoder, Encoder, EncoderDecoder, GatherFn, LanguageModel
from pretrain.model.size import flops_per_token, num_params
from pretrain.objectives import shift_right

__all__ = [
    "FAMILIES",
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "GatherFn",
    "LanguageModel",
    "build_model",
    "decode_step",
    "flops_per_token",
    "num_params",
    "shift_right",
]
