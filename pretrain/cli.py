"""`pretrain`: the command-line entry point of the pretraining package.

Each subcommand lives in its own module and is imported only when it runs, so `pretrain --help`
and config checks stay fast and need neither DeepSpeed nor a GPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data_pipeline.config_cli import add_config_arguments, resolve_config
from pretrain.checkpoint_cli import add_checkpoint_commands
from pretrain.config import ExperimentConfig

EPILOG = """examples:
  pretrain train configs/experiments/shakespeare_xl.yaml                 # one process
  torchrun --nproc_per_node=2 -m pretrain.cli train configs/experiments/shakespeare_xl.yaml
  pretrain train configs/experiments/shakespeare_xl.yaml train.max_steps=50 train.lr=3e-4
  pretrain config configs/experiments/shakespeare_xl.yaml train.lr=1e-3 --print-config
  pretrain config configs/experiments/shakespeare_xl.yaml --save-config /tmp/resolved.yaml
"""


def _run_config(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is not None and not args.save_config:
        # Without --print-config or --save-config the check is the product: say it passed.
        print(f"{args.config}: valid ({config.model.family}, {config.model.n_layers} layers)")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is None:
        return 0
    # Imported here: DeepSpeed and the model are heavy, and `pretrain config` needs neither.
    from pretrain.checkpoint.layout import CheckpointError
    from pretrain.loader import LoaderStateError, ManifestError
    from pretrain.train.trainer import NonFiniteLossError, Trainer

    try:
        Trainer(config).train()
    except (CheckpointError, ManifestError, LoaderStateError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


PLAN_EPILOG = """examples:
  pretrain plan configs/experiments/shakespeare_xl.yaml --gpus 8 --gpu-memory 80GB
  pretrain plan EXP.yaml train.micro_batch_size=4 --gpus 64 --gpu-memory 141GB
"""


def _run_plan(args: argparse.Namespace) -> int:
    config = resolve_config(ExperimentConfig, args)
    if config is None:
        return 0
    from pretrain.plan import parse_size, report

    try:
        memory = parse_size(args.gpu_memory)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(report(config, args.gpus, memory))
    return 0


def _add_plan(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = commands.add_parser(
        "plan",
        help="estimate per-GPU memory for each ZeRO stage and suggest a micro-batch",
        description="Estimate per-GPU memory: parameters, gradients and optimizer state under "
        "each ZeRO stage and offload choice, activations with and without activation "
        "checkpointing, and the largest micro-batch that fits.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(plan, config_help="experiment YAML (e.g. configs/experiments/*.yaml)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs in the job (data parallel)")
    plan.add_argument("--gpu-memory", default="80GB", help="memory of one GPU, e.g. 80GB")
    plan.set_defaults(handler=_run_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="Pretrain Transformer language models with DeepSpeed ZeRO-3.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config = commands.add_parser(
        "config",
        help="resolve, validate and print or save an experiment config",
        description="Resolve an experiment config (bases and overrides), validate it, and print "
        "or save the result.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(config, config_help="experiment YAML (e.g. configs/experiments/*.yaml)")
    config.set_defaults(handler=_run_config)
    train = commands.add_parser(
        "train",
        help="train a model (one process, or under torchrun / deepspeed / SLURM)",
        description="Train with DeepSpeed (ZeRO-3 by default). Resumes from the newest committed "
        "checkpoint in checkpoint.dir unless train.resume=never. SIGTERM or SIGUSR1 saves a "
        "checkpoint at the next step and exits with code 75.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(train, config_help="experiment YAML (e.g. configs/experiments/*.yaml)")
    train.set_defaults(handler=_run_train)
    _add_plan(commands)
    # evaluate, export, generate: using checkpoints after training (pretrain/checkpoint_cli.py)
    add_checkpoint_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    _leave_process_group()
    return code


def _leave_process_group() -> None:
    """Tear the process group down once the command is done, not at interpreter exit: gloo's
    threads destroyed during shutdown can abort a rank that has finished its work ("terminate
    called without an active exception", seen once in `pretrain evaluate` over 2 ranks after
    its report was printed), and the launcher then reports the job failed."""
    if "torch" not in sys.modules:  # the command never touched torch (--help, config)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
