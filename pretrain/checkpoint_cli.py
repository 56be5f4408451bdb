"""The `pretrain evaluate`, `export` and `generate` subcommands: using checkpoints after training.

Registered by `pretrain.cli`. Nothing heavy is imported until a command runs, so `pretrain
--help` stays fast. Expected failures (a missing step, an uncommitted or corrupt checkpoint, a
directory that is not one, a tokenizer that does not match, a format the model cannot take)
print one line, ``error: ...``, and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _guarded(name: str) -> Handler:
    """Run ``pretrain.<name>.main`` and turn the errors users cause into one-line messages."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        from pretrain.checkpoint.layout import CheckpointError
        from pretrain.checkpoint.tokenizer import TokenizerMismatchError
        from pretrain.export.hf import UnsupportedExportError
        from pretrain.loader import ManifestError
        from pretrain.pretrained import ExportFormatError

        module: Any = importlib.import_module(f"pretrain.{name}.command")
        try:
            code: int = module.main(args)
        except (
            CheckpointError,
            ManifestError,
            TokenizerMismatchError,
            UnsupportedExportError,
            ExportFormatError,
            ValueError,
        ) as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 1
        return code

    return handler


EVALUATE_EXAMPLES = """examples:
  pretrain evaluate runs/shakespeare_xl/checkpoints                 # newest committed step
  pretrain evaluate runs/shakespeare_xl/checkpoints --step 200 --json
  pretrain evaluate runs/shakespeare_xl/checkpoints train.eval_batches=0   # the whole split
  pretrain evaluate runs/shakespeare_xl/checkpoints --mem-len 256 --seq-len 64
  pretrain evaluate runs/shakespeare_xl/checkpoints --mem-len-sweep 0,64,128,256
  pretrain evaluate CKPT --data runs/data/other/manifest.json --split validation
  torchrun --nproc_per_node=2 -m pretrain.cli evaluate runs/shakespeare_xl/checkpoints
"""


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.dir or a step dir")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, e.g. train.eval_batches=0 "
        "model.mem_len=128 tracking.uri=sqlite:///mlflow.db",
    )
    parser.add_argument("--step", type=int, help="evaluate this step (default: the newest)")
    parser.add_argument(
        "--data",
        metavar="MANIFEST",
        help="another dataset's manifest.json (default: the checkpoint's data.manifest)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split to score (default: the checkpoint's data.validation_split)",
    )
    parser.add_argument("--seq-len", type=int, help="segment length (train.seq_len)")
    parser.add_argument("--mem-len", type=int, help="Transformer-XL memory length (model.mem_len)")
    parser.add_argument(
        "--mem-len-sweep",
        nargs="?",
        const="auto",
        metavar="N,N,...",
        help="score at several memory lengths (default list: 0 and 1/2, 1, 2, "
        "4 times the training mem_len)",
    )
    parser.add_argument(
        "--batches", type=int, help="segments per stream; 0 = whole split (train.eval_batches)"
    )
    parser.add_argument(
        "--streams",
        type=int,
        help="parallel streams over the split (default: "
        "the training run's world size x micro_batch_size)",
    )
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        help="default: the checkpoint's engine.precision",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


EXPORT_EXAMPLES = """examples:
  pretrain export runs/shakespeare_xl/checkpoints exports/shakespeare_xl
  pretrain export runs/shakespeare_xl/checkpoints exports/xl_step200 --step 200
  pretrain export runs/gpt2_small/checkpoints exports/gpt2_hf --format hf
  pretrain export runs/shakespeare_xl/checkpoints exports/xl --register shakespeare-xl
  python -c "from pretrain.pretrained import load_pretrained; print(load_pretrained('exports/xl'))"
"""


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.dir or a step dir")
    parser.add_argument("out", metavar="OUT", help="directory to write the export to")
    parser.add_argument("--step", type=int, help="export this step (default: the newest)")
    parser.add_argument(
        "--format",
        choices=["native", "hf"],
        default="native",
        help="native: load_pretrained(OUT), no DeepSpeed needed (default); hf: Hugging Face "
        "GPT-2 / Llama layout for transformers, vLLM, lm-evaluation-harness",
    )
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights' dtype"
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="the tokenizer artifact, when the "
        "path recorded in the dataset's manifest is not valid here",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="also register the export in MLflow's "
        "model registry as NAME (the checkpoint's tracking store)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, e.g. tracking.uri=...",
    )


GENERATE_EXAMPLES = """examples:
  pretrain generate runs/shakespeare_xl/checkpoints --prompt "ROMEO:" --seed 1
  pretrain generate exports/shakespeare_xl --prompt "ROMEO:" --max-new-tokens 300 \\
      --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7
  pretrain generate exports/shakespeare_xl --prompt "KING:" --temperature 0   # greedy
"""


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="CHECKPOINT_OR_EXPORT",
        help="checkpoint.dir, a step dir, or a `pretrain export` directory",
    )
    parser.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample from the nucleus of probability p")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same text")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations")
    parser.add_argument(
        "--cache-len",
        type=int,
        help="memory kept as the cache (default: "
        "max(mem_len, max_seq_len); learned positions: max_seq_len)",
    )
    parser.add_argument("--stop-at-eos", action="store_true", help="stop at end of document")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="fp32")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer artifact override")
    parser.add_argument("--json", action="store_true", help="print JSON (ids and text)")


COMMANDS: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None], str]] = [
    (
        "evaluate",
        "score a checkpoint (any world size; CPU, one process is fine)",
        "Evaluate a committed checkpoint on a validation split: loss, perplexity, bits per byte "
        "and tokens for decoders, masked-token loss and accuracy for encoders, span loss for "
        "encoder-decoders. Transformer-XL memory is carried along each stream; --mem-len-sweep "
        "scores several memory lengths. Metrics go to the terminal (or --json) and to MLflow, "
        "in a run tagged with the training run's id.",
        evaluate_arguments,
        EVALUATE_EXAMPLES,
    ),
    (
        "export",
        "write a checkpoint as a standalone model (safetensors + config + tokenizer)",
        "Consolidate a ZeRO checkpoint into one model directory loadable with "
        "pretrain.pretrained.load_pretrained(OUT) without DeepSpeed, or with --format hf into "
        "a Hugging Face GPT-2 or Llama checkpoint. Optionally register it in MLflow.",
        export_arguments,
        EXPORT_EXAMPLES,
    ),
    (
        "generate",
        "sample text from a decoder checkpoint or export",
        "Continue a prompt with a decoder: greedy or sampled (temperature, top-k, top-p), "
        "deterministic for a seed, decoded incrementally with the Transformer-XL memory as "
        "the cache.",
        generate_arguments,
        GENERATE_EXAMPLES,
    ),
]


def add_checkpoint_commands(commands: Any) -> None:
    """Add evaluate, export and generate to ``commands`` (argparse subparsers)."""
    for name, summary, description, add, examples in COMMANDS:
        parser = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add(parser)
        _intermix(parser)
        parser.set_defaults(handler=_guarded(name))


def _intermix(parser: argparse.ArgumentParser) -> None:
    """Let ``key=value`` overrides come after options (``CKPT --step 8 train.seq_len=32``).
    Plain argparse gives the ``nargs='*'`` positional its (empty) share at the first positional
    and then rejects later ones; intermixed parsing collects positionals wherever they are."""
    inside = False

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        nonlocal inside
        if inside:  # parse_known_intermixed_args calls back into parse_known_args
            return argparse.ArgumentParser.parse_known_args(parser, args, namespace)
        inside = True
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            inside = False

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
