"""The command-line face of the config system, shared by `data-pipeline`, `pretrain` and
`pretrain-launch`: a CONFIG path, dotted ``key=value`` overrides, ``--print-config`` and
``--save-config``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TypeVar

from data_pipeline.configuration import ConfigError, load_config, save_config, to_yaml

T = TypeVar("T")

OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and each option's default shown in its help (where it has one
    worth showing: not for flags, which are off, nor for options that are unset by default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and not any(default is unset for unset in (None, False, argparse.SUPPRESS))
            and default != []  # an option that appends starts empty: nothing to show
            and "(default" not in text  # the help already says it, in its own words
        ):
            text += " (default: %(default)s)"
        return text


def add_config_arguments(
    parser: argparse.ArgumentParser, *, config_help: str, override_example: str
) -> None:
    """CONFIG, KEY=VALUE overrides (``override_example`` shows the command's own keys), and
    ``--print-config``/``--save-config``."""
    parser.add_argument("config", metavar="CONFIG", help=config_help)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"dotted overrides, e.g. {override_example} (type-checked like the file)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config as YAML and exit",
    )
    parser.add_argument(
        "--save-config", metavar="PATH", help="also write the resolved config to PATH"
    )


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse with overrides and options in any order (``prepare CONFIG --workers 2 k=v``).

    argparse hands a subcommand's ``nargs="*"`` positional only the run of words right after
    CONFIG, so an override after an option is left over; those are appended, in order, to the
    overrides. Anything else left over is the usual usage error.
    """
    args, rest = parser.parse_known_args(argv)
    strays = [word for word in rest if not OVERRIDE.match(word)]
    if strays or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(strays or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


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
        try:
            save_config(config, args.save_config)
        except OSError as err:
            where = args.save_config
            print(f"error: --save-config {where}: cannot write it ({err})", file=sys.stderr)
            raise SystemExit(1) from None
    if args.print_config:
        sys.stdout.write(to_yaml(config))
        return None
    return config
