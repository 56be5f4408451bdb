"""`pretrain`: the command-line entry point of the pretraining package.

Every subcommand has the same argument style (options and positional ``key=value`` overrides in
any order) and the same error handling (`EXIT_CODES`). A stage's recipe is its ``command.py``
(`pretrain.train.command`, `pretrain.evaluate.command`, ...), imported only when it runs, so
`pretrain --help` and config checks stay fast and need neither DeepSpeed nor a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.config_cli import (
    HelpFormatter,
    add_config_arguments,
    parse_arguments,
    resolve_config,
)
from data_pipeline.console import (
    add_console_arguments,
    add_verbosity_arguments,
    setup_console,
    verbosity,
)
from pretrain.config import ExperimentConfig

# The one error-to-exit-code map of every subcommand: the errors users cause print one line,
# ``error: ...``; anything else is a bug and keeps its traceback. 2: the config or an override
# is wrong (as argparse's own usage errors); 1: the run cannot go on as asked (a missing or
# corrupt checkpoint, data that does not match, a missing or damaged shard, a tokenizer that
# does not match, a format the model cannot take, repeated non-finite losses). Preemption exits
# 75 on its own (`pretrain.train.preemption`); Ctrl-C ends any command with 130 and one line
# (`pretrain generate` first prints what it generated). Classes are named, not imported: an
# error can only come from a module that is loaded, and `pretrain config` must not import torch
# to check its errors.
EXIT_CODES: list[tuple[str, str, int]] = [
    ("data_pipeline.configuration", "ConfigError", 2),
    ("pretrain.checkpoint.layout", "CheckpointError", 1),
    ("pretrain.loader.manifest", "ManifestError", 1),
    ("pretrain.loader.shards", "ShardError", 1),
    ("pretrain.loader.state", "LoaderStateError", 1),
    ("pretrain.train.trainer", "NonFiniteLossError", 1),
    ("pretrain.checkpoint.tokenizer", "TokenizerMismatchError", 1),
    ("pretrain.pretrained", "ExportFormatError", 1),
]
# evaluate, export and generate also report ValueError (e.g. streams that do not divide over
# the processes, memory on learned positions) as the user's error.
VALUE_ERRORS_ARE_USERS = ("evaluate", "export", "generate", "finetune", "make-task")


def exit_code(err: BaseException, command: str) -> int | None:
    """The exit code for ``err`` raised by ``command``, or None when it is a bug."""
    for module_name, class_name, code in EXIT_CODES:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, getattr(module, class_name)):
            return code
    if command in VALUE_ERRORS_ARE_USERS and isinstance(err, ValueError):
        return 1
    return None


EPILOG = """examples:
  pretrain train configs/experiments/shakespeare_xl.yaml                 # one process
  torchrun --nproc_per_node=2 -m pretrain.cli train configs/experiments/shakespeare_xl.yaml
  pretrain train configs/experiments/shakespeare_xl.yaml train.max_steps=50 train.lr=3e-4
  pretrain config configs/experiments/shakespeare_xl.yaml train.lr=1e-3 --print-config
  pretrain config configs/experiments/shakespeare_xl.yaml --print-config train.lr=1e-3
  pretrain config configs/experiments/shakespeare_xl.yaml --save-config /tmp/resolved.yaml
"""

EXPERIMENT_HELP = "experiment YAML (e.g. configs/experiments/*.yaml)"


def _run_config(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is not None and not args.save_config:
        # Without --print-config or --save-config the check is the product: say it passed.
        print(f"{args.config}: valid ({config.model.family}, {config.model.n_layers} layers)")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is None:
        return 0
    from pretrain.plan import report

    sys.stdout.write(report(config, args.gpus, args.gpu_memory))
    return 0


def _memory_size(text: str) -> int:
    from pretrain.plan import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def config_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, config_help=EXPERIMENT_HELP, override_example="train.lr=3e-4 model.n_layers=2"
    )


PLAN_EXAMPLES = """examples:
  pretrain plan configs/experiments/shakespeare_xl.yaml --gpus 8 --gpu-memory 80GB
  pretrain plan EXP.yaml train.micro_batch_size=4 --gpus 64 --gpu-memory 141GB
"""


def plan_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, config_help=EXPERIMENT_HELP, override_example="train.lr=3e-4 model.n_layers=2"
    )
    parser.add_argument("--gpus", type=_positive, default=1, help="GPUs in the job (data parallel)")
    parser.add_argument(
        "--gpu-memory", type=_memory_size, default="80GB", help="memory of one GPU, e.g. 80GB"
    )


EVALUATE_EXAMPLES = """examples:
  pretrain evaluate runs/shakespeare_xl/checkpoints                 # newest committed step
  pretrain evaluate runs/shakespeare_xl/checkpoints --step 200 --json
  pretrain evaluate runs/shakespeare_xl/checkpoints train.eval_batches=0   # the whole split
  pretrain evaluate runs/shakespeare_xl/checkpoints --mem-len 256 --seq-len 64
  pretrain evaluate runs/shakespeare_xl/checkpoints --mem-len-sweep 0,64,128,256
  pretrain evaluate CKPT --data runs/data/other/manifest.json --split validation
  torchrun --nproc_per_node=2 -m pretrain.cli evaluate runs/shakespeare_xl/checkpoints
  pretrain evaluate s3://bucket/runs/xl/checkpoints --storage-options s3.json
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
        type=_positive,
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
    parser.add_argument(
        "--task",
        nargs="?",
        const="validation",
        metavar="LABELLED",
        help="score a `pretrain finetune` checkpoint on its task: accuracy and macro-F1, or "
        "BLEU, chrF, ROUGE-L and exact match (greedy), beside the baseline; on the task's "
        "validation split, or on the labelled file given",
    )
    storage_options_argument(parser)


FINETUNE_EXAMPLES = """examples:
  pretrain make-task speakers corpora/tinyshakespeare/input.txt runs/tasks/speakers
  pretrain finetune configs/finetune/shakespeare_speakers.yaml
  pretrain finetune configs/finetune/shakespeare_speakers.yaml init=runs/other/checkpoints
  torchrun --nproc_per_node=2 -m pretrain.cli finetune configs/finetune/wikitext_headings.yaml
  pretrain finetune configs/finetune/shakespeare_speakers.yaml weights=random   # from scratch
  pretrain evaluate runs/shakespeare_speakers/checkpoints --task
"""

MAKE_TASK_EXAMPLES = """examples:
  pretrain make-task speakers corpora/tinyshakespeare/input.txt runs/tasks/speakers
  pretrain make-task speakers corpora/tinyshakespeare/input.txt OUT --speakers 8
  pretrain make-task headings corpora/wikitext-2/valid.txt corpora/wikitext-2/test.txt \\
      runs/tasks/headings
"""


def finetune_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser,
        config_help="fine-tuning YAML (e.g. configs/finetune/*.yaml)",
        override_example="train.lr=1e-4 init=runs/x/checkpoints",
    )


def make_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task", choices=["headings", "sources", "speakers"], help="which task to build"
    )
    parser.add_argument("inputs", nargs="+", metavar="CORPUS", help="the corpus file(s)")
    parser.add_argument("out", metavar="OUT", help="folder for train.jsonl, validation.jsonl")
    parser.add_argument(
        "--speakers", type=_positive, default=4, help="speakers: the N most frequent speakers"
    )
    parser.add_argument(
        "--validation-every",
        type=_positive,
        default=10,
        help="one document block in N goes to validation",
    )
    parser.add_argument(
        "--per-source", type=_positive, default=400, help="sources: passages per corpus file"
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.task is not None:
        from pretrain.finetune.scoring import main as score_task

        return score_task(args)
    return _recipe("evaluate")(args)


def _run_make_task(args: argparse.Namespace) -> int:
    from pretrain.finetune.tasks import main as make_task

    return make_task(args)


def _storage_options(text: str) -> dict[str, Any]:
    """--storage-options: a JSON object, or the path of a file holding one (keeps credentials
    off the command line)."""
    source = text if text.lstrip()[:1] in ("{", "[") else None
    if source is None:
        try:
            source = Path(text).read_text()
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {err.strerror}") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not a JSON object: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {type(value).__name__}")
    return value


def storage_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        type=_storage_options,
        default=None,
        metavar="JSON|FILE",
        help="fsspec options for a CHECKPOINT URL (s3://...): endpoint, credentials; a JSON "
        'object (\'{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}\') or '
        "the path of a file holding one",
    )


EXPORT_EXAMPLES = """examples:
  pretrain export runs/shakespeare_xl/checkpoints exports/shakespeare_xl
  pretrain export runs/shakespeare_xl/checkpoints exports/xl_step200 --step 200
  pretrain export runs/gpt2_small/checkpoints exports/gpt2_hf --format hf
  pretrain export runs/shakespeare_xl/checkpoints exports/xl_hf --format hf --dtype bf16
  pretrain export runs/shakespeare_xl/checkpoints exports/xl --register shakespeare-xl
  pretrain export s3://bucket/runs/xl/checkpoints exports/xl --storage-options s3.json
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
        help="native: load_pretrained(OUT), no DeepSpeed needed (default); hf: transformers' "
        "layout (GPT-2 / Llama where exact, else our modelling code, trust_remote_code=True)",
    )
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights' dtype"
    )
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="hf format: split the weights into safetensors shards of at most SIZE "
        "(e.g. 2GB, 500MB), with an index (default: 5GB)",
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
        help="also log the export as an MLflow model (transformers flavor for hf decoders and "
        "encoders, pyfunc otherwise) and register it as NAME in the checkpoint's tracking store",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, e.g. tracking.uri=...",
    )
    storage_options_argument(parser)


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
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, help="tokens to generate per sample"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample from the nucleus of probability p")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same text")
    parser.add_argument(
        "--num-samples", type=_positive, default=1, help="independent continuations"
    )
    parser.add_argument(
        "--cache-len",
        type=_positive,
        help="memory kept as the cache (default: "
        "max(mem_len, max_seq_len); learned positions: max_seq_len)",
    )
    parser.add_argument("--stop-at-eos", action="store_true", help="stop at end of document")
    parser.add_argument(
        "--precision", choices=["bf16", "fp16", "fp32"], default="fp32", help="compute dtype"
    )
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer artifact override")
    parser.add_argument("--json", action="store_true", help="print JSON (ids and text)")
    storage_options_argument(parser)


Handler = Callable[[argparse.Namespace], int]


def _recipe(stage: str) -> Handler:
    """Run ``pretrain.<stage>.command.main``, imported only now."""

    def handler(args: argparse.Namespace) -> int:
        module: Any = importlib.import_module(f"pretrain.{stage}.command")
        code: int = module.main(args)
        return code

    return handler


COMMANDS: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None], str, Handler]] = [
    (
        "config",
        "resolve, validate and print or save an experiment config",
        "Resolve an experiment config (bases and overrides), validate it, and print or save "
        "the result.",
        config_arguments,
        EPILOG,
        _run_config,
    ),
    (
        "train",
        "train a model (one process, or under torchrun / deepspeed / SLURM)",
        "Train with DeepSpeed (ZeRO-3 by default). Resumes from the newest committed "
        "checkpoint in checkpoint.dir that passes verification, and refuses to start when none "
        "does, unless train.resume=never. SIGTERM or SIGUSR1 saves a checkpoint at the next "
        "step and exits with code 75.",
        config_arguments,
        EPILOG,
        _recipe("train"),
    ),
    (
        "plan",
        "estimate per-GPU memory for each ZeRO stage and suggest a micro-batch",
        "Estimate per-GPU memory: parameters, gradients and optimizer state under each ZeRO "
        "stage and offload choice, activations with and without activation checkpointing, and "
        "the largest micro-batch that fits.",
        plan_arguments,
        PLAN_EXAMPLES,
        _run_plan,
    ),
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
        _run_evaluate,
    ),
    (
        "export",
        "write a checkpoint as a standalone model (safetensors + config + tokenizer)",
        "Consolidate a ZeRO checkpoint into one model directory loadable with "
        "pretrain.pretrained.load_pretrained(OUT) without DeepSpeed, or with --format hf into "
        "a Hugging Face GPT-2 or Llama checkpoint. Optionally register it in MLflow.",
        export_arguments,
        EXPORT_EXAMPLES,
        _recipe("export"),
    ),
    (
        "generate",
        "sample text from a decoder checkpoint or export",
        "Continue a prompt with a decoder: greedy or sampled (temperature, top-k, top-p), "
        "deterministic for a seed, decoded incrementally with the Transformer-XL memory as "
        "the cache. One sample is printed as it is generated; Ctrl-C or SIGTERM stops with "
        "what was generated so far (exit code 130 or 143).",
        generate_arguments,
        GENERATE_EXAMPLES,
        _recipe("generate"),
    ),
    (
        "finetune",
        "fine-tune a pretrained checkpoint or export on a labelled task",
        "Fine-tune on a labelled task, on the training engine (DeepSpeed, ZeRO-3 by "
        "default, any launcher): sequence classification (encoder: pooled head; decoder: "
        "last-token head) or seq2seq (encoder-decoder: source -> target; decoder: prompt -> "
        "completion, loss on the completion only). Starts from a pretraining checkpoint of any "
        "world size or a native export; resumes exactly from its own checkpoints; logs to an "
        "MLflow run tagged with the pretraining run.",
        finetune_arguments,
        FINETUNE_EXAMPLES,
        _recipe("finetune"),
    ),
    (
        "make-task",
        "build a labelled task (train/validation jsonl) from a bundled corpus",
        "Build a labelled task from a corpus, deterministically, with no document in both "
        "splits: 'speakers' (who speaks a tinyshakespeare speech, among the most frequent "
        "speakers; classification) or 'headings' (a WikiText section's heading from its first "
        "sentence; seq2seq) or 'sources' (which corpus a passage comes from).",
        make_task_arguments,
        MAKE_TASK_EXAMPLES,
        _run_make_task,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="Pretrain Transformer language models with DeepSpeed ZeRO-3.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_console_arguments(parser, "pretrain")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary, description, add, examples, handler in COMMANDS:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=examples,
            formatter_class=HelpFormatter,
        )
        add(sub)
        add_verbosity_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def one_line(message: str) -> str:
    """``message`` as one line: its lines joined, indentation dropped (an error line must stay
    one line for the launcher and for whoever greps a log)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    text = ""
    for part in parts:
        text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    setup_console(verbosity(args))
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C): pretrain {args.command} stopped", file=sys.stderr)
        code = 130
    except Exception as err:
        code_for_err = exit_code(err, args.command)
        if code_for_err is None:
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
        code = code_for_err
    finally:
        _leave_process_group()
    return code


def lm_eval_main() -> int:
    """``mnemos-lm-eval``: lm-eval's own command line, every option as ``lm_eval`` takes it,
    with the ``mnemos`` model type registered (`pretrain.evaluate.harness`; lm-eval 0.4.13
    reads no entry points for models, so the ``lm_eval`` script cannot know it). Our refusals
    (no such checkpoint, a corrupt export, an encoder) end in one ``error:`` line, as the
    ``pretrain`` commands' do."""
    from lm_eval.__main__ import cli_evaluate

    import pretrain.evaluate.harness  # noqa: F401  (registers the mnemos model type)

    try:
        cli_evaluate()
    except Exception as err:
        code = exit_code(err, "evaluate")
        if code is None:
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
        return code
    return 0


def _leave_process_group() -> None:
    """Tear the process group down once the command is done, not at interpreter exit: gloo's
    threads destroyed during shutdown can abort a rank that has finished its work ("terminate
    called without an active exception"), and the launcher then reports the job failed. This
    frees the group only where nothing else holds it: see the import of `torch.distributed.nn`
    in `pretrain.distributed.engine`."""
    if "torch" not in sys.modules:  # the command never touched torch (--help, config)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
