"""The MLflow ``python_function`` model of an export that transformers' MLflow flavor cannot
hold: a native export, and a ``--format hf`` encoder-decoder (transformers 5 has no
sequence-to-sequence pipeline for the flavor to name).

MLflow saves this file itself into the model ("models from code", `pretrain.export.mlflow_model`),
so the logged model does not depend on pickled classes. The export directory travels as the
artifact ``export``. ``predict`` takes a list of texts and returns, for each, a decoder's greedy
continuation (the text after it) or an encoder-decoder's greedy output, of up to
``max_new_tokens`` (a parameter, default 32). A native encoder has no text to write: load it
with ``unwrap_python_model().pretrained``.
A Hugging Face export needs torch and transformers where it is loaded; a native export needs
mnemos (``pretrain.pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

DEFAULT_NEW_TOKENS = 32


def _texts(model_input: Any) -> list[str]:
    """The texts of a list, or of a DataFrame's one column (what pyfunc makes of a list under
    the model's signature)."""
    if hasattr(model_input, "iloc"):
        return [str(text) for text in model_input.iloc[:, 0]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(text) for text in _texts(model_input)]


class MnemosExport(PythonModel):
    """A native or Hugging Face export behind pyfunc's ``predict``."""

    def load_context(self, context: PythonModelContext) -> None:
        directory = Path(context.artifacts["export"])
        self.format = json.loads((directory / "export.json").read_text())["format"]
        if self.format == "hf":
            import transformers

            self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
                directory, trust_remote_code=True
            ).eval()
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                directory, trust_remote_code=True
            )
        else:
            from pretrain.pretrained import load_pretrained

            self.pretrained = load_pretrained(directory)

    # No type hints: MLflow would take its signature from them, which cannot declare the
    # max_new_tokens parameter (mlflow_model.py gives the signature).
    def predict(self, context, model_input, params=None):
        new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_NEW_TOKENS))
        continue_text = self._seq2seq if self.format == "hf" else self._native
        return [continue_text(text, new_tokens) for text in _texts(model_input)]

    def _seq2seq(self, text: str, new_tokens: int) -> str:
        ids = torch.tensor([self.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        return str(self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True))

    def _native(self, text: str, new_tokens: int) -> str:
        from pretrain.generate.sampling import SamplingConfig, sample, sample_seq2seq
        from pretrain.model import Decoder, EncoderDecoder

        model, tokenizer = self.pretrained.model, self.pretrained.tokenizer
        if not isinstance(model, Decoder | EncoderDecoder) or tokenizer is None:
            raise ValueError(
                "predict writes text with a decoder or an encoder-decoder and its tokenizer; "
                f"load this {self.pretrained.config.family} with "
                "unwrap_python_model().pretrained instead"
            )
        special = tokenizer.special_ids
        ids = torch.tensor([tokenizer.encode(text)])
        if isinstance(model, Decoder):
            greedy = SamplingConfig(
                max_new_tokens=new_tokens, temperature=0.0, vocab_size=tokenizer.vocab_size
            )
            return tokenizer.decode(sample(model, ids, greedy)[0].tolist())
        # The encoder-decoder's output for the text, up to eos (as a fine-tuned one is scored).
        greedy = SamplingConfig(
            max_new_tokens=new_tokens,
            temperature=0.0,
            stop_id=special.eos,
            vocab_size=tokenizer.vocab_size,
        )
        out = sample_seq2seq(model, ids, greedy, start_id=special.pad)[0].tolist()
        return tokenizer.decode(out[: out.index(special.eos)] if special.eos in out else out)


mlflow.models.set_model(MnemosExport())
