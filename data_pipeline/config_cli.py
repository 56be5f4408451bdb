"""The command-line face of the config system, shared by `data-pipeline`, `pretrain` and
`pretrain-launch`: a CONFIG path, dotted ``key=value`` overrides, ``--print-config`` and
``--save-config``."""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from data_pipeline.configuration import ConfigError, load_config, save_config, to_yaml

T = TypeVar("T")

OVERRIDES_HELP = (
    "dotted overrides, e.g. train.lr=3e-4 model.n_layers=2 (type-checked like the file)"
)


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str) -> None:
    parser.add_argument("config", metavar="CONFIG", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config as YAML and exit",
    )
    parser.add_argument(
        "--save-config", metavar="PATH", help="also write the resolved config to PATH"
    )


def resolve_config(schema: type[T], args: argparse.Namespace) -> T | None:
    """Load the config named on the command line.

    Returns None when the command's work is done already (``--print-config``). A bad config
    exits with status 2 and the error, never a traceback: it is the user's input that is wrong.
    """
    try:
        config = load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.save_config:
        save_config(config, args.save_config)
    if args.print_config:
        sys.stdout.write(to_yaml(config))
        return None
    return config
