"""mnemos models as ``transformers`` models: the three families behind the Auto classes.

Written into the export folder with copies of ``pretrain/model``'s modules (see
`pretrain.export.package`): the wrappers here hold our own `Decoder`, `Encoder` and
`EncoderDecoder` (under the attribute ``mnemos``), so the mathematics is the training code's,
not a second implementation of it.

Transformer-XL memory is the cache (`MnemosMemory`): the hidden states entering every layer.
A forward with ``use_cache=True`` returns the memory of the model's ``mem_len`` (what training
and ``pretrain evaluate`` carry from one segment to the next); passing it back as ``cache``
with the next segment gives exactly our segment-by-segment forward. ``generate()`` starts a
cache of our decoding length (`default_cache_len`) and feeds one token per step, as
``pretrain generate`` does.

Padding: the encoder and the encoder-decoder take ``attention_mask`` as our models do (padded
keys are never attended), so a padded batch gives each row's own logits at its real tokens, and
``generate()`` of the encoder-decoder takes padded sources. A decoder accepts right padding
(pads come after every real token, so they change no real token's logits); other zeros in its
``attention_mask`` are refused. Memory computed over padding holds the pads' states, so such a
cache is refused when passed back: carry memory across unpadded segments only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from pretrain.export.remote.configuration_mnemos import MnemosConfig
from pretrain.model.decoding import default_cache_len
from pretrain.model.families import Decoder, Encoder, EncoderDecoder


class MnemosMemory:
    """Transformer-XL memory as a cache: per layer (B, M, d) hidden states, cut to ``mem_len``,
    and how many tokens it has seen (``generate()`` feeds only the ones after those)."""

    def __init__(
        self,
        mem_len: int,
        mems: list[Tensor] | None = None,
        seen: int = 0,
        padded: bool = False,
    ) -> None:
        self.mem_len = mem_len
        self.mems = mems
        self.seen = seen
        self.padded = padded  # computed over a padded batch: holds the pads' states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.mems is not None:
            self.mems = [m.index_select(0, beam_idx.to(m.device)) for m in self.mems]


@dataclass
class MnemosOutput(ModelOutput):
    """Logits (and loss), with the memory to pass back as ``cache`` for the next segment."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: MnemosMemory | None = None


@dataclass
class MnemosEncoderOutput(ModelOutput):
    last_hidden_state: Tensor | None = None
    cache: MnemosMemory | None = None


@dataclass
class MnemosSeq2SeqOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_cache: MnemosMemory | None = None  # the encoder's memory, for the next segment


def _padding(
    attention_mask: Tensor | None, cache: MnemosMemory | None, *, causal: bool
) -> Tensor | None:
    """The mask to give our model: None when nothing is padded (the fast path). A decoder takes
    right padding only, which its causal attention never reads for a real token."""
    if cache is not None and cache.padded:
        raise ValueError(
            "this cache was computed over a padded batch and holds the pads' states: carry "
            "memory across unpadded segments only"
        )
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if causal:
        # Right padding: along each row the mask never goes from 0 back to 1.
        if not bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
            raise ValueError(
                "a mnemos decoder takes unpadded rows or right padding in attention_mask"
            )
        return None
    return attention_mask.bool()


class MnemosPreTrainedModel(PreTrainedModel):
    config_class = MnemosConfig
    base_model_prefix = "mnemos"
    supports_gradient_checkpointing = False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is our memory (MnemosMemory), not key/value pairs

    def _init_weights(self, module: Any) -> None:
        # Our own init_weights runs at construction (`_build`); weights read from the export
        # replace it.
        pass

    def _start(self, cache: MnemosMemory | None, use_cache: bool | None) -> MnemosMemory | None:
        spec = self.config.model_config()
        if cache is None and (use_cache if use_cache is not None else self.config.use_cache):
            cache = MnemosMemory(spec.mem_len) if spec.mem_len else None
        return cache

    @staticmethod
    def _advance(
        cache: MnemosMemory | None, mems: list[Tensor], seen: int, padded: bool = False
    ) -> MnemosMemory | None:
        if cache is None:
            return None
        return MnemosMemory(cache.mem_len, mems, cache.seen + seen, padded)


class MnemosForCausalLM(MnemosPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"mnemos.lm_head.weight": "mnemos.tok_emb.weight"}

    def __init__(self, config: MnemosConfig) -> None:
        super().__init__(config)
        self.mnemos = Decoder(config.model_config())
        self.mnemos.init_weights()
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.mnemos.tok_emb

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.mnemos.lm_head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: MnemosMemory | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> MnemosOutput:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        _padding(attention_mask, cache, causal=True)
        padded = attention_mask is not None and not bool(attention_mask.all())
        cache = self._start(cache, use_cache)
        if cache is None:
            logits, _ = self.mnemos(input_ids, None, mem_len=0)
        else:
            logits, mems = self.mnemos(input_ids, cache.mems, mem_len=cache.mem_len)
            cache = self._advance(cache, mems, input_ids.size(1), padded)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return MnemosOutput(loss=loss, logits=logits, cache=cache)

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: MnemosMemory | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if cache is None:  # the prefill: a cache as long as `pretrain generate` keeps
            cache = MnemosMemory(default_cache_len(self.mnemos))
        return {
            "input_ids": input_ids[:, cache.seen :],
            "cache": cache,
            "attention_mask": attention_mask,
            "use_cache": True,
        }


class MnemosForMaskedLM(MnemosPreTrainedModel):
    _tied_weights_keys = {"mnemos.head.out.weight": "mnemos.tok_emb.weight"}

    def __init__(self, config: MnemosConfig) -> None:
        super().__init__(config)
        self.mnemos = Encoder(config.model_config())
        self.mnemos.init_weights()
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.mnemos.tok_emb

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.mnemos.head.out

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: MnemosMemory | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> MnemosOutput:
        mask = _padding(attention_mask, cache, causal=False)
        cache = self._start(cache, use_cache)
        if cache is None:
            logits, _ = self.mnemos(input_ids, None, mem_len=0, attention_mask=mask)
        else:
            logits, mems = self.mnemos(
                input_ids, cache.mems, mem_len=cache.mem_len, attention_mask=mask
            )
            cache = self._advance(cache, mems, input_ids.size(1), mask is not None)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
            )
        return MnemosOutput(loss=loss, logits=logits, cache=cache)


class _EncoderView:
    """What ``generate()`` calls as the encoder: our model's ``encode``. A plain object, not a
    module, so the weights are not registered twice."""

    main_input_name = "input_ids"

    def __init__(self, owner: MnemosForSeq2SeqLM) -> None:
        self.owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> MnemosEncoderOutput:
        return self.forward(*args, **kwargs)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: MnemosMemory | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> MnemosEncoderOutput:
        owner = self.owner
        mask = _padding(attention_mask, cache, causal=False)
        cache = owner._start(cache, use_cache)
        if cache is None:
            out, _ = owner.mnemos.encode(input_ids, None, 0, attention_mask=mask)
        else:
            out, mems = owner.mnemos.encode(
                input_ids, cache.mems, cache.mem_len, attention_mask=mask
            )
            cache = owner._advance(cache, mems, input_ids.size(1), mask is not None)
        return MnemosEncoderOutput(last_hidden_state=out, cache=cache)


class MnemosForSeq2SeqLM(MnemosPreTrainedModel, GenerationMixin):
    """T5-style encoder-decoder. The decoder keeps no memory: each generation step runs it over
    the whole output so far against the encoder's output (our model's ``decode``)."""

    _tied_weights_keys = {"mnemos.lm_head.weight": "mnemos.tok_emb.weight"}

    def __init__(self, config: MnemosConfig) -> None:
        super().__init__(config)
        self.mnemos = EncoderDecoder(config.model_config())
        self.mnemos.init_weights()
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.mnemos.tok_emb

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.mnemos.lm_head

    def get_encoder(self, modality: str | None = None) -> Any:
        return _EncoderView(self)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        encoder_outputs: Any = None,
        labels: Tensor | None = None,
        cache: MnemosMemory | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> MnemosSeq2SeqOutput:
        if encoder_outputs is None:
            assert input_ids is not None, "give input_ids or encoder_outputs"
            encoder_outputs = _EncoderView(self)(input_ids, attention_mask, cache, use_cache)
        if decoder_input_ids is None:
            assert labels is not None, "give decoder_input_ids or labels"
            start = self.config.decoder_start_token_id
            first = labels.new_full((labels.size(0), 1), start)
            decoder_input_ids = torch.cat([first, labels[:, :-1]], dim=1)
            decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, start)
        encoder_out = encoder_outputs[0]
        source_mask = _padding(attention_mask, None, causal=False)
        logits = self.mnemos.decode(decoder_input_ids, encoder_out, source_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
            )
        return MnemosSeq2SeqOutput(
            loss=loss,
            logits=logits,
            encoder_last_hidden_state=encoder_out,
            encoder_cache=getattr(encoder_outputs, "cache", None),
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        encoder_outputs: Any = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # The source's mask again at every step: the decoder must not attend the source's pads.
        return {
            "decoder_input_ids": input_ids,
            "encoder_outputs": encoder_outputs,
            "attention_mask": attention_mask,
        }
