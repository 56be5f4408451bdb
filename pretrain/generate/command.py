"""`pretrain generate`: continue a prompt with a decoder checkpoint or export.

Recipe: load the model and its tokenizer (an export directory, or a checkpoint consolidated on
the fly with its tokenizer hash-checked) → encode the prompt → sample incrementally with the
memory as the cache (`pretrain.generate.sampling`) → decode and print.

One sample is printed as it is generated: the prompt, then each token's text as soon as it
forms whole characters (`TextStream`). Several samples, or ``--json``, are printed when done.
SIGINT (Ctrl-C) or SIGTERM stops generation after the token being computed: what was generated
so far is printed (and completed with a newline, or as JSON), a line on stderr says how many
tokens that was, and the exit code is 128 + the signal (130, 143), so a script can tell cut
output from finished output. A reader that closes the pipe (``| head``) ends it quietly.
"""

from __future__ import annotations

import argparse
import collections.abc
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.generate.sampling import SamplingConfig, iter_sample
from pretrain.model import Decoder, LanguageModel
from pretrain.model.build import DTYPES
from pretrain.pretrained import is_export, load_pretrained

logger = logging.getLogger(__name__)


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
    storage_options: dict[str, Any] | None = None,
) -> Generator:
    """An export directory (no DeepSpeed needed) or a checkpoint (consolidated here; local or
    a URL, reached with ``storage_options``)."""
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
    from pretrain.checkpoint.tokenizer import checkpoint_tokenizer

    checkpoint = open_checkpoint(source, step, storage_options=storage_options)
    tokenizer = checkpoint_tokenizer(checkpoint, tokenizer_path)
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
    rows = [
        step.tolist()
        for step in iter_generate(
            generator, prompt, sampling, num_samples=num_samples, cache_len=cache_len
        )
    ]
    if not rows:
        return [[] for _ in range(num_samples)]
    return [list(column) for column in zip(*rows, strict=True)]


def iter_generate(
    generator: Generator,
    prompt: str,
    sampling: SamplingConfig,
    *,
    num_samples: int = 1,
    cache_len: int | None = None,
) -> collections.abc.Generator[torch.Tensor, None, None]:
    """Each new token of every sample, (num_samples,), as soon as it is drawn."""
    model = generator.model
    if not isinstance(model, Decoder):
        raise ValueError(f"generate needs a decoder; this model is a {model.config.family}")
    ids = prompt_ids(generator.tokenizer, prompt)
    device = model.tok_emb.weight.device
    prompt_tensor = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    for token in iter_sample(model, prompt_tensor, sampling, cache_len=cache_len):
        yield token[:, 0].cpu()


class TextStream:
    """Token ids in, text out as soon as it is whole: a token that ends inside a multi-byte
    character (byte-level or byte-fallback vocabularies) is held until the character is
    complete. Each piece is decoded after the few tokens before it, so a tokenizer that drops
    the leading space of a sequence's first word (sentencepiece) does not drop it here, and the
    pieces joined are the text of the whole continuation as it reads after the prompt."""

    def __init__(self, tokenizer: Tokenizer, context: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context[-CONTEXT_TOKENS:])
        self._start = 0  # decoding starts here: the context for the text not yet given out
        self._given = len(self._ids)  # the ids before this are given out as text

    def push(self, token: int) -> str:
        """The text that ``token`` completes ("" while a character is still incomplete)."""
        self._ids.append(int(token))
        before = self._tokenizer.decode(self._ids[self._start : self._given])
        text = self._tokenizer.decode(self._ids[self._start :])
        held = len(self._ids) - self._given
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and held < MAX_HELD):
            return ""  # nothing new yet, or a character not yet complete
        self._start, self._given = self._given, len(self._ids)
        if len(self._ids) > 4 * CONTEXT_TOKENS:  # keep the list short on endless runs
            drop = self._start
            self._ids, self._start, self._given = self._ids[drop:], 0, self._given - drop
        return text[len(before) :]

    def flush(self) -> str:
        """What is left at the end (an incomplete character, as the tokenizer decodes it)."""
        before = self._tokenizer.decode(self._ids[self._start : self._given])
        text = self._tokenizer.decode(self._ids[self._start :])
        self._start = self._given = len(self._ids)
        return text[len(before) :]


CONTEXT_TOKENS = 4
REPLACEMENT = "\ufffd"  # what a decoder makes of a character's first bytes alone
MAX_HELD = 8  # a character has at most 4 bytes: longer, the bytes are not text; give them out


class StopSignals:
    """SIGINT and SIGTERM ask generation to stop after the current token (``received``); a
    second one ends the process at once, as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _quiet_stdout() -> None:
    """The reader went away (``| head``): later writes, and the flush at exit, go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(args: argparse.Namespace) -> int:
    generator = load_generator(
        args.source,
        step=args.step,
        precision=args.precision,
        tokenizer_path=args.tokenizer,
        storage_options=args.storage_options,
    )
    tokenizer = generator.tokenizer
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_id=tokenizer.special_ids.eos if args.stop_at_eos else None,
        vocab_size=tokenizer.vocab_size,
    )
    sampling.validate()  # a wrong setting is an error before any output
    streaming = args.num_samples == 1 and not args.json
    context = prompt_ids(tokenizer, args.prompt)
    streams = [TextStream(tokenizer, context) for _ in range(args.num_samples)]
    # Kept only for output printed at the end: an endless stream holds nothing but its count.
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    pieces: list[list[str]] = [[] for _ in range(args.num_samples)]
    generated = 0
    tokens = iter_generate(
        generator,
        args.prompt,
        sampling,
        num_samples=args.num_samples,
        cache_len=args.cache_len,
    )
    try:
        with StopSignals() as stop:
            # The prompt goes out with the first token, after the settings' checks passed.
            prompt_out = not streaming
            for step in tokens:
                if not prompt_out:
                    sys.stdout.write(args.prompt)
                    prompt_out = True
                generated += 1
                for index, token in enumerate(step.tolist()):
                    piece = streams[index].push(token)
                    if streaming:
                        if piece:
                            sys.stdout.write(piece)
                            sys.stdout.flush()
                    else:
                        rows[index].append(token)
                        pieces[index].append(piece)
                if stop.received is not None:
                    break
        tokens.close()
        if not prompt_out:
            sys.stdout.write(args.prompt)
        for index, stream in enumerate(streams):
            pieces[index].append(stream.flush())
            if streaming:
                sys.stdout.write(pieces[index][-1])
        texts = ["".join(p) for p in pieces]
        if args.json:
            records = [{"ids": i, "text": t} for i, t in zip(rows, texts, strict=True)]
            print(json.dumps(records))
        elif streaming:
            print(flush=True)
        else:
            for index, text in enumerate(texts):
                print(f"--- sample {index + 1} ---")
                print(args.prompt + text, flush=True)
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    if stop.received is not None:
        name = signal.Signals(stop.received).name
        logger.warning(
            "stopped by %s after %d of %d new tokens: the output is what was generated so far",
            name,
            generated,
            sampling.max_new_tokens,
        )
        return 128 + stop.received
    return 0
