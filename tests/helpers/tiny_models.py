"""Small real artifacts made in-process, in a second or two: a tokenizer trained by the real
`train_tokenizer`, an export of a randomly initialised decoder written by the real
`save_pretrained`, and a checkpoint directory committed by the real commit protocol (its
DeepSpeed shards stand-ins: enough for every check that runs before weights are read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipeline.configuration import load_config, save_config
from data_pipeline.schemas import TokenizerTrainingConfig
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.tokenizer_training import train_tokenizer
from pretrain.checkpoint import layout as ckpt
from pretrain.config import ExperimentConfig, ModelConfig
from pretrain.model import build_model
from pretrain.pretrained import save_pretrained

# Text with characters of 1 to 4 UTF-8 bytes: a byte-level vocabulary this small splits the
# rare ones into several byte tokens.
TEXT = (
    "To be, or not to be: that is the question. Café crème, naïve façade. "
    "日本語のテキスト。Ελληνικά γράμματα. Emoji 🙂 and 🚀 too.\n"
) * 40


def tiny_tokenizer(
    root: Path, kind: str = "hf_bpe", vocab_size: int = 300, text: str = TEXT
) -> Tokenizer:
    """A ``kind`` tokenizer of ``vocab_size`` trained on ``text`` (default: the mixed-script
    `TEXT`), with two sentinels."""
    corpus = root / "tokenizer_corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    recipe = root / f"{kind}.yaml"
    recipe.write_text(
        f"name: {kind}\noutput: {root / kind}\nkind: {kind}\nvocab_size: {vocab_size}\n"
        f"source:\n  paths: [{corpus}]\n  format: text\n  text_mode: file\n"
        "special_tokens:\n  num_sentinels: 2\n"
    )
    return train_tokenizer(load_config(TokenizerTrainingConfig, recipe))


def tiny_export(root: Path, tokenizer: Tokenizer) -> Path:
    """A relative-position decoder with memory (so generation has no length limit), random
    weights, exported with ``tokenizer``."""
    config = ModelConfig(
        family="decoder",
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=32,
        position="relative",
        mem_len=16,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    out = root / "export"
    info = {"name": "tiny", "step": 0, "tokenizer_hash": tokenizer.hash}
    save_pretrained(model, out, tokenizer_dir=tokenizer.path, info=info)
    return out


def committed_checkpoint(
    root: Path,
    experiment: Path,
    steps: tuple[int, ...] = (2, 4),
    extra: dict[str, Any] | None = None,
) -> Path:
    """``root/checkpoints`` with committed steps that pass verification, each holding the
    experiment's resolved config, stand-in shards and a trainer state; ``extra`` goes into
    each commit marker."""
    config = load_config(ExperimentConfig, experiment)
    checkpoints = root / "checkpoints"
    for step in steps:
        directory = ckpt.step_dir(checkpoints, step)
        directory.mkdir(parents=True)
        (directory / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 100)
        ckpt.save_trainer_state(ckpt.trainer_state_path(directory, 0), {"step": step})
        save_config(config, directory / ckpt.CONFIG_FILE)
        ckpt.commit(directory, step=step, world_size=1, extra={"timeline": "t0", **(extra or {})})
    return checkpoints
