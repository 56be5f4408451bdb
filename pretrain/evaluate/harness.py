"""lm-evaluation-harness model type ``mnemos``: a checkpoint or a native export, evaluated by
``lm_eval`` directly (the ``[eval]`` extra installs lm-eval).

    mnemos-lm-eval --model mnemos \\
        --model_args checkpoint=runs/shakespeare_xl/checkpoints --tasks lambada_openai

is ``lm_eval`` with this model registered (``python -m pretrain.evaluate.harness`` is the
same, with lm-eval's own error output). lm-eval 0.4.13 finds models in its in-process registry
only, filled by its own ``lm_eval.models`` and by whatever the running program imported: it
reads no entry points and has no option that imports a module, so the ``lm_eval`` script cannot
know ``mnemos``. ``mnemos-lm-eval`` (`pretrain.cli.lm_eval_main`) is that script with this
import done first. ``import pretrain.evaluate.harness`` does the same for
``lm_eval.simple_evaluate(model="mnemos", ...)``.

Text is scored as ``pretrain evaluate`` scores it: segments of ``seq_len`` tokens with
Transformer-XL memory of ``mem_len`` carried from each to the next (the checkpoint's settings
unless given). ``loglikelihood_rolling`` reads its documents as one stream, in the order given,
each document's tokens followed by eos, which is how the data pipeline stores a split; every
token after the stream's first is predicted, memory carried across documents, and each
prediction is credited to the document it belongs to. A task over a validation split's
documents therefore gives the perplexity `pretrain evaluate --streams 1 --batches 0` reports.
``loglikelihood`` scores a continuation after its context (eos when the context is empty);
``generate_until`` decodes greedily through the cache. Decoders only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models first: it loads them only into an empty registry)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import Tensor

from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint.reading import consolidated_state_dict, model_from_state, open_checkpoint
from pretrain.checkpoint.tokenizer import checkpoint_tokenizer
from pretrain.model import Decoder, decode_step
from pretrain.pretrained import is_export, load_pretrained

logger = logging.getLogger(__name__)


def _load(path: str, step: int | None) -> tuple[Decoder, Tokenizer, int]:
    """The model (fp32, eval mode), its tokenizer, and the segment length it was trained with
    (a native export does not record one: its max_seq_len)."""
    if is_export(path):
        pretrained = load_pretrained(path)
        if pretrained.tokenizer is None:
            raise ValueError(f"{path}: the export has no tokenizer/ to read text with")
        model, tokenizer, seq_len = (
            pretrained.model,
            pretrained.tokenizer,
            pretrained.config.max_seq_len,
        )
    else:
        checkpoint = open_checkpoint(path, step, [])
        config = checkpoint.config
        tokenizer = checkpoint_tokenizer(checkpoint)
        state = consolidated_state_dict(checkpoint)
        model = model_from_state(config, state, torch.float32).eval()
        seq_len = config.train.seq_len
    if not isinstance(model, Decoder):
        raise ValueError(
            f"{path}: lm-eval scores text with decoders; this is a {model.config.family}"
        )
    return model, tokenizer, seq_len


@register_model("mnemos")
class MnemosLM(LM):
    def __init__(
        self,
        checkpoint: str,
        step: int | None = None,
        seq_len: int | None = None,
        mem_len: int | None = None,
        max_gen_toks: int = 256,
        eos_after_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, trained_seq_len = _load(str(Path(checkpoint)), step)
        self.seq_len = int(seq_len or trained_seq_len)
        self.mem_len = self.model.config.mem_len if mem_len is None else int(mem_len)
        self.max_gen_toks = int(max_gen_toks)
        self.eos = self.tokenizer.special_ids.eos
        # A split's stream is cut into whole chunks, so it can end inside a document, with no
        # eos: False reproduces such a stream exactly.
        self.eos_after_last = eos_after_last in (True, "True", "true", "1")
        logger.info("mnemos %s: seq_len %d, mem_len %d", checkpoint, self.seq_len, self.mem_len)

    @torch.no_grad()
    def _stream(self, tokens: list[int]) -> tuple[Tensor, Tensor]:
        """Log-probability of every token after the first, and whether it was the argmax:
        (n - 1,) each, computed in segments with memory as `pretrain evaluate` does."""
        ids = torch.tensor(tokens, dtype=torch.long)[None]
        logprobs, greedy = [], []
        mems: list[Tensor] | None = None
        for start in range(0, ids.size(1) - 1, self.seq_len):
            inputs = ids[:, start : start + self.seq_len]
            targets = ids[:, start + 1 : start + 1 + self.seq_len]
            inputs = inputs[:, : targets.size(1)]
            logits, new_mems = self.model(inputs, mems, mem_len=self.mem_len)
            mems = new_mems or None
            log_softmax = logits.float().log_softmax(-1)[0]  # (t, V)
            logprobs.append(log_softmax.gather(-1, targets[0, :, None])[:, 0])
            greedy.append(log_softmax.argmax(-1) == targets[0])
        if not logprobs:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
        return torch.cat(logprobs).double(), torch.cat(greedy)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            # lm-eval's convention (its TemplateLM): trailing whitespace of the context is
            # scored as part of the continuation.
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            prefix = self.tokenizer.encode(context) if context else [self.eos]
            target = self.tokenizer.encode(continuation)
            logprobs, greedy = self._stream(prefix + target)
            n = len(target)
            results.append((float(logprobs[-n:].sum()) if n else 0.0, bool(greedy[-n:].all())))
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        stream: list[int] = []
        owner: list[int] = []  # the request each stream token belongs to
        for index, request in enumerate(requests):
            (text,) = request.args
            last = index == len(requests) - 1
            tokens = self.tokenizer.encode(text)
            tokens += [self.eos] if self.eos_after_last or not last else []
            stream += tokens
            owner += [index] * len(tokens)
        logprobs, _ = self._stream(stream)
        sums = torch.zeros(len(requests), dtype=torch.float64)
        sums.index_add_(0, torch.tensor(owner[1:], dtype=torch.long), logprobs)
        return [float(s) for s in sums]

    @torch.no_grad()
    def generate_until(self, requests: list[Any]) -> list[str]:
        results = []
        size = max(self.mem_len, self.model.config.max_seq_len)
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = self.tokenizer.encode(context) or [self.eos]
            logits, cache = decode_step(self.model, torch.tensor([prompt]), None, cache_len=size)
            out: list[int] = []
            for _ in range(limit):
                token = int(logits[0, -1, : self.tokenizer.vocab_size].argmax())
                if token == self.eos:
                    break
                out.append(token)
                text = self.tokenizer.decode(out)
                if any(stop in text for stop in until):
                    break
                logits, cache = decode_step(
                    self.model, torch.tensor([[token]]), cache, cache_len=size
                )
            text = self.tokenizer.decode(out)
            for stop in until:
                text = text.split(stop)[0]
            results.append(text)
        return results


if __name__ == "__main__":  # lm-eval's command line as it is (mnemos-lm-eval adds error lines)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
