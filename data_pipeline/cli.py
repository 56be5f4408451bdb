"""`data-pipeline`: offline corpus preparation.

data-pipeline train-tokenizer configs/tokenizer/shakespeare_char.yaml
data-pipeline prepare configs/data/shakespeare_char.yaml --workers 2
data-pipeline inspect runs/data/shakespeare_char/manifest.json
data-pipeline verify runs/data/shakespeare_char/manifest.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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
from data_pipeline.readers import BadInputError
from data_pipeline.schemas import PrepareConfig, TokenizerTrainingConfig
from data_pipeline.sources import SourceError

RECIPE_EXAMPLE = "chunk_len=1024 output=runs/data/mine"

EXAMPLES = {
    "train-tokenizer": """examples:
  data-pipeline train-tokenizer configs/tokenizer/shakespeare_char.yaml
  data-pipeline train-tokenizer configs/tokenizer/wikitext2_unigram.yaml vocab_size=4000
  data-pipeline train-tokenizer configs/tokenizer/wikitext2_unigram.yaml kind=hf_bpe \\
      output=runs/tokenizers/wt2_bpe --print-config""",
    "prepare": """examples:
  data-pipeline prepare configs/data/shakespeare_char.yaml
  data-pipeline prepare configs/data/wikitext2.yaml --workers 2 chunk_len=1024
  # a SLURM array of 8 tasks, then one finalize:
  data-pipeline prepare configs/data/wikitext2.yaml --num-tasks 8 --task-index $SLURM_ARRAY_TASK_ID
  data-pipeline finalize configs/data/wikitext2.yaml""",
    "quality": """examples:
  # one machine: prepare runs every stage itself; many (SLURM arrays), stage by stage:
  data-pipeline quality configs/data/wikitext2_quality.yaml --stage scan \\
      --num-tasks 8 --task-index $SLURM_ARRAY_TASK_ID
  data-pipeline quality configs/data/wikitext2_quality.yaml --stage buckets \\
      --num-tasks 4 --task-index $SLURM_ARRAY_TASK_ID
  data-pipeline quality configs/data/wikitext2_quality.yaml --stage clusters""",
    "finalize": """examples:
  data-pipeline finalize configs/data/wikitext2.yaml""",
    "inspect": """examples:
  data-pipeline inspect runs/data/shakespeare_char/manifest.json
  data-pipeline inspect s3://bucket/datasets/wt2/ --chars 1000""",
    "verify": """examples:
  data-pipeline verify runs/data/shakespeare_char/manifest.json
  data-pipeline verify s3://bucket/datasets/wt2/manifest.json   # exit 1 names every bad shard""",
}


def _sub(subs: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subs.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXAMPLES[name],
        formatter_class=HelpFormatter,
    )
    add_verbosity_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-pipeline",
        description="Prepare corpora offline: train a tokenizer, write WebDataset shards.",
        epilog=__doc__,
        formatter_class=HelpFormatter,
    )
    add_console_arguments(parser, "data-pipeline")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(
        subs, "train-tokenizer", "Train a sentencepiece or HF tokenizer into an artifact directory."
    )
    add_config_arguments(
        p,
        config_help="tokenizer config (configs/tokenizer/*.yaml)",
        override_example="vocab_size=4000 kind=hf_bpe",
    )
    p.set_defaults(handler=_train_tokenizer)

    p = _sub(
        subs, "prepare", "Tokenize, pack and shard a corpus (resumable; skips committed units)."
    )
    add_config_arguments(
        p, config_help="data recipe (configs/data/*.yaml)", override_example=RECIPE_EXAMPLE
    )
    p.add_argument(
        "--workers",
        type=int,
        default=usable_cpus(),
        help="worker processes; by default one per CPU this process may run on",
    )
    p.add_argument(
        "--num-tasks",
        type=int,
        default=1,
        help="independent tasks sharing the units (SLURM array size)",
    )
    p.add_argument("--task-index", type=int, default=0, help="this task's index in [0, num-tasks)")
    p.add_argument(
        "--keep-rejected",
        metavar="DIR",
        help="write the documents the quality stages removed, with the reason, to DIR "
        "({unit}.jsonl; local path or URL)",
    )
    p.set_defaults(handler=_prepare)

    p = _sub(
        subs,
        "quality",
        "Run a quality stage (filters, global exact and MinHash dedup) as independent tasks.",
    )
    add_config_arguments(
        p, config_help="data recipe (configs/data/*.yaml)", override_example=RECIPE_EXAMPLE
    )
    p.add_argument(
        "--stage",
        choices=["scan", "buckets", "clusters", "all"],
        required=True,
        help="scan: filters, hashes, signatures per unit; buckets: LSH links per band; "
        "clusters: one task deciding every removal; all: the three here, in order",
    )
    p.add_argument(
        "--workers", type=int, default=usable_cpus(), help="worker processes (scan stage)"
    )
    p.add_argument("--num-tasks", type=int, default=1, help="independent tasks of this stage")
    p.add_argument("--task-index", type=int, default=0, help="this task's index in [0, num-tasks)")
    p.set_defaults(handler=_quality)

    p = _sub(subs, "finalize", "Write manifest.json once every task's units are committed.")
    add_config_arguments(
        p, config_help="data recipe (configs/data/*.yaml)", override_example=RECIPE_EXAMPLE
    )
    p.set_defaults(handler=_finalize)

    p = _sub(subs, "inspect", "Summarize a prepared dataset: tokens, documents, shards, samples.")
    p.add_argument(
        "manifest", metavar="MANIFEST", help="manifest.json path or URL (or its directory)"
    )
    p.add_argument(
        "--chars", type=int, default=300, help="characters of decoded sample text to show"
    )
    p.set_defaults(handler=_inspect)

    p = _sub(subs, "verify", "Check every shard's size, sha256 and samples against the manifest.")
    p.add_argument(
        "manifest", metavar="MANIFEST", help="manifest.json path or URL (or its directory)"
    )
    p.set_defaults(handler=_verify)
    return parser


def usable_cpus() -> int:
    """CPUs this process may use (its affinity: a SLURM allocation or a taskset), not all of
    the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _fail(err: Exception | str) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 1


def _train_tokenizer(args: argparse.Namespace) -> int:
    cfg = resolve_config(TokenizerTrainingConfig, args)
    if cfg is None:
        return 0
    from data_pipeline.tokenizer_training import train_tokenizer

    try:
        train_tokenizer(cfg)
    except (BadInputError, SourceError, ValueError, OSError) as err:
        return _fail(err)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    cfg = resolve_config(PrepareConfig, args)
    if cfg is None:
        return 0
    from data_pipeline.prepare import prepare

    try:
        prepare(
            cfg,
            workers=args.workers,
            num_tasks=args.num_tasks,
            task_index=args.task_index,
            keep_rejected=args.keep_rejected,
        )
    except (BadInputError, SourceError, ValueError, OSError, RuntimeError) as err:
        return _fail(err)
    return 0


def _quality(args: argparse.Namespace) -> int:
    cfg = resolve_config(PrepareConfig, args)
    if cfg is None:
        return 0
    from data_pipeline import quality

    if not 0 <= args.task_index < args.num_tasks:
        return _fail(ValueError(f"--task-index must be in [0, {args.num_tasks})"))
    if not cfg.quality.enabled:
        return _fail(ValueError("the recipe has no quality section (filters, dedup)"))
    tasks = {"num_tasks": args.num_tasks, "task_index": args.task_index}
    try:
        if args.stage in ("scan", "all"):
            quality.scan(cfg, workers=args.workers, **tasks)
        if args.stage in ("buckets", "all"):
            quality.buckets(cfg, **tasks)
        if args.stage in ("clusters", "all"):
            quality.clusters(cfg)
    except (BadInputError, SourceError, ValueError, OSError, RuntimeError) as err:
        return _fail(err)
    return 0


def _finalize(args: argparse.Namespace) -> int:
    cfg = resolve_config(PrepareConfig, args)
    if cfg is None:
        return 0
    from data_pipeline.prepare import finalize

    try:
        finalize(cfg)
    except (ValueError, OSError, RuntimeError) as err:
        return _fail(err)
    return 0


def _fail_reading(location: str, err: Exception) -> int:
    """A manifest that cannot be read as one: the error names it (a file-not-found already
    does; a JSON or key error says only what was wrong inside)."""
    if isinstance(err, OSError) and location in str(err):
        return _fail(err)
    what = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
    return _fail(f"{location}: not a manifest written by `data-pipeline prepare` ({what})")


def _inspect(args: argparse.Namespace) -> int:
    from data_pipeline.inspection import summarize

    try:
        print(summarize(args.manifest, args.chars))
    except (OSError, ValueError, KeyError, TypeError) as err:
        return _fail_reading(args.manifest, err)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from data_pipeline.verify import verify

    try:
        bad = verify(args.manifest)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return _fail_reading(args.manifest, err)
    for name, problems in sorted(bad.items()):
        print(f"BAD {name}: {'; '.join(problems)}")
    if bad:
        print(f"{len(bad)} bad shard(s)", file=sys.stderr)
        return 1
    print("all shards verified")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    setup_console(verbosity(args))
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
