"""`pretrain generate`: continue a prompt with a decoder checkpoint or export.

Recipe: load the model and its tokenizer (an export directory, or a checkpoint consolidated on
the fly with its tokenizer hash-checked) → encode the prompt → sample incrementally with the
memory as the cache (`pretrain.generate.sampling`) → decode and print.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.generate.sampling import SamplingConfig, sample
from pretrain.model import Decoder, LanguageModel
from pretrain.model.build import DTYPES
from pretrain.pretrained import is_export, load_pretrained


@dataclass
class Generator:
    model: LanguageModel
    tokenizer: Tokenizer


def load_generator(
    source: str | Path,
    *,
    step: int | None = None,
    precision: str = "fp32",
    tokenizer_path: str | None = None,
) -> Generator:
    """An export directory (no DeepSpeed needed) or a checkpoint (consolidated here)."""
    if is_export(source):
        pretrained = load_pretrained(source, dtype=DTYPES[precision])
        tokenizer = pretrained.tokenizer
        if tokenizer_path is not None:
            from pretrain.checkpoint.tokenizer import load_checked

            tokenizer = load_checked(tokenizer_path, pretrained.info.get("tokenizer_hash"))
        if tokenizer is None:
            raise ValueError(f"{source} holds no tokenizer; pass --tokenizer")
        return Generator(pretrained.model, tokenizer)
    from pretrain.checkpoint.reading import load_model, open_checkpoint
    from pretrain.checkpoint.tokenizer import (
        data_manifest_url,
        manifest_tokenizer,
        training_manifest,
    )

    checkpoint = open_checkpoint(source, step)
    manifest = training_manifest(data_manifest_url(checkpoint.config.data))
    tokenizer = manifest_tokenizer(manifest, tokenizer_path)
    return Generator(load_model(checkpoint, precision), tokenizer)


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts a new document (documents are joined with eos
    in the training streams, so eos is what precedes a document's first token)."""
    ids = tokenizer.encode(prompt)
    return ids if ids else [tokenizer.special_ids.eos]


def generate_text(
    generator: Generator,
    prompt: str,
    sampling: SamplingConfig,
    *,
    num_samples: int = 1,
    cache_len: int | None = None,
) -> list[list[int]]:
    """New token ids per sample; every sample continues the same prompt."""
    model = generator.model
    if not isinstance(model, Decoder):
        raise ValueError(f"generate needs a decoder; this model is a {model.config.family}")
    ids = prompt_ids(generator.tokenizer, prompt)
    device = model.tok_emb.weight.device
    prompt_tensor = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    new = sample(model, prompt_tensor, sampling, cache_len=cache_len)
    return [row.tolist() for row in new]


def main(args: argparse.Namespace) -> int:
    generator = load_generator(
        args.source, step=args.step, precision=args.precision, tokenizer_path=args.tokenizer
    )
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_id=generator.tokenizer.special_ids.eos if args.stop_at_eos else None,
        vocab_size=generator.tokenizer.vocab_size,
    )
    samples = generate_text(
        generator, args.prompt, sampling, num_samples=args.num_samples, cache_len=args.cache_len
    )
    texts = [generator.tokenizer.decode(ids) for ids in samples]
    if args.json:
        print(json.dumps([{"ids": i, "text": t} for i, t in zip(samples, texts, strict=True)]))
    else:
        for index, text in enumerate(texts):
            if len(texts) > 1:
                print(f"--- sample {index + 1} ---")
            print(args.prompt + text, flush=True)
    return 0
