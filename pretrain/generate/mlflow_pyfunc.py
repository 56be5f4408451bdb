"""The MLflow ``python_function`` model of an export that transformers' MLflow flavor cannot
hold: a native export, and a ``--format hf`` encoder-decoder (transformers 5 has no
sequence-to-sequence pipeline for the flavor to name).

MLflow saves this file itself into the model ("models from code", `pretrain.export.mlflow_model`),
so the logged model does not depend on pickled classes. The export directory travels as the
artifact ``export``. ``predict`` takes a list of texts and returns each one's greedy
continuation (the text after it) of up to ``max_new_tokens`` (a parameter, default 32).
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
        from pretrain.generate.sampling import SamplingConfig, sample
        from pretrain.model import Decoder

        model, tokenizer = self.pretrained.model, self.pretrained.tokenizer
        if not isinstance(model, Decoder) or tokenizer is None:
            raise ValueError(
                "predict continues text with a decoder and its tokenizer; load this "
                f"{self.pretrained.config.family} with unwrap_python_model().pretrained instead"
            )
        greedy = SamplingConfig(
            max_new_tokens=new_tokens, temperature=0.0, vocab_size=tokenizer.vocab_size
        )
        new = sample(model, torch.tensor([tokenizer.encode(text)]), greedy)
        return tokenizer.decode(new[0].tolist())


mlflow.models.set_model(MnemosExport())
