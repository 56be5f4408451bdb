"""The exported model format: one directory, loadable with one call and no DeepSpeed.

```
OUT/model.safetensors     the consolidated weights (fp32 unless exported otherwise)
OUT/model_config.yaml     the resolved ModelConfig (strictly validated on load)
OUT/tokenizer/            a copy of the tokenizer artifact the model was trained with
OUT/export.json           provenance: checkpoint step, training run id, dataset fingerprint,
                          tokenizer hash, format version
```

    >>> from pretrain.pretrained import load_pretrained
    >>> pretrained = load_pretrained("exports/shakespeare_xl")       # doctest: +SKIP
    >>> logits, mems = pretrained.model(tokens)                      # doctest: +SKIP

This module imports neither DeepSpeed nor MLflow (a test proves it), so an exported model runs
wherever torch does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from data_pipeline.configuration import ConfigError, load_config, save_config
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import ModelConfig
from pretrain.model import LanguageModel, build_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.yaml"
TOKENIZER_DIR = "tokenizer"
INFO_FILE = "export.json"


class ExportFormatError(ValueError):
    """A directory that is not an export, or one this version cannot read."""


@dataclass
class Pretrained:
    model: LanguageModel  # eval mode
    config: ModelConfig
    tokenizer: Tokenizer | None  # None when the export was written without one
    info: dict[str, Any]


def is_export(path: str | Path) -> bool:
    path = Path(path)
    return (path / INFO_FILE).is_file() and (path / CONFIG_FILE).is_file()


def save_pretrained(
    model: LanguageModel,
    out: str | Path,
    *,
    tokenizer_dir: str | None,
    info: dict[str, Any],
) -> Path:
    """Write ``model`` (its config, weights and the tokenizer artifact) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # save_model writes each tied tensor once and load_model re-ties it.
    save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    save_config(model.config, out / CONFIG_FILE)
    if tokenizer_dir is not None:
        target = out / TOKENIZER_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tokenizer_dir, target)
    record = {"format": "mnemos", "format_version": FORMAT_VERSION, **info}
    (out / INFO_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return out


def read_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_export(path):
        raise ExportFormatError(
            f"{path} is not an exported model (no {INFO_FILE} and {CONFIG_FILE}); "
            "create one with `pretrain export CHECKPOINT OUT`"
        )
    try:
        info: dict[str, Any] = json.loads((path / INFO_FILE).read_text())
        if not isinstance(info, dict):
            raise TypeError(f"holds a {type(info).__name__}, not a mapping")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise ExportFormatError(f"{path / INFO_FILE} is unreadable or corrupt: {err}") from None
    if info.get("format") != "mnemos" or info.get("format_version") != FORMAT_VERSION:
        raise ExportFormatError(
            f"{path}: export format {info.get('format')!r} version "
            f"{info.get('format_version')!r} is not mnemos version {FORMAT_VERSION}"
            + (
                " (a Hugging Face export: load it with transformers)"
                if info.get("format") == "hf"
                else ""
            )
        )
    return info


def load_pretrained(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Pretrained:
    """The exported model (eval mode), its config, and its tokenizer, from one directory."""
    path = Path(path)
    info = read_info(path)
    try:
        config = load_config(ModelConfig, path / CONFIG_FILE)
    except ConfigError as err:
        raise ExportFormatError(f"{path}: {err}") from None
    model = build_model(config)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportFormatError(f"{weights} is missing: the export is incomplete")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as err:  # safetensors' own errors (a cut or overwritten file)
        raise ExportFormatError(
            f"{weights} is unreadable ({type(err).__name__}: {err}): export again"
        ) from None
    if missing or unexpected:
        raise ExportFormatError(
            f"{path / WEIGHTS_FILE} does not fit {CONFIG_FILE}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model = model.to(device=device, dtype=dtype).eval() if dtype else model.to(device).eval()
    tokenizer = None
    if (path / TOKENIZER_DIR).is_dir():
        try:
            tokenizer = Tokenizer.load(str(path / TOKENIZER_DIR))
        except (OSError, ValueError, KeyError) as err:
            raise ExportFormatError(
                f"{path / TOKENIZER_DIR} is not a readable tokenizer artifact: {err}"
            ) from None
        expected = info.get("tokenizer_hash")
        if expected and tokenizer.hash != expected:
            raise ExportFormatError(
                f"{path / TOKENIZER_DIR} is not the tokenizer the model was exported with "
                f"(hash {tokenizer.hash[:16]}..., expected {str(expected)[:16]}...)"
            )
    return Pretrained(model, config, tokenizer, info)
