"""The console of every CLI (`data-pipeline`, `pretrain`, `pretrain-launch`): one log format, the
``-q``/``-v`` flags, and third-party noise that a user cannot act on filtered where it is raised.

Lines go to stderr as ``TIME LEVEL [rank R] message`` (the rank only when several processes
share the console), so results printed to stdout (``evaluate --json``, ``inspect``, generated
text) stay pure. Lives in `data_pipeline` because every CLI imports it and it must import no torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

# "__main__": a project module run with `python -m` (torchrun's `-m pretrain.cli`, the tests'
# `-m launch.cli`) or a benchmark script logs under that name, not under its package.
PROJECT_LOGGERS = ("data_pipeline", "pretrain", "launch", "benchmarks", "__main__")
# Libraries whose INFO chatter (DeepSpeed's config dumps, MLflow's database migrations, HTTP
# clients' connection lines) buries the project's own lines; their warnings still show.
THIRD_PARTY_LOGGERS = (
    "DeepSpeed",
    "deepspeed",
    "mlflow",
    "alembic",
    "urllib3",
    "botocore",
    "s3fs",
    "fsspec",
    "filelock",
    "httpx",
    "torch.distributed",
    "transformers",
)

# (category, module where the warning is attributed, message prefix): each is one deprecation
# raised inside a dependency about code the user does not own. The module is the one Python
# names as the warning's origin, which for torch's deprecated collectives is its logging wrapper.
KNOWN_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    # DeepSpeed's ZeRO-3 calls torch's old collective names on every gather (1,000+ lines a run).
    (
        FutureWarning,
        r"torch\.distributed\.c10d_logger",
        r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
    ),
    # MLflow asks for an input example when `pretrain export --register` saves a model; the
    # export writes its signature out instead, and the user has no example to give it. The
    # message starts with a colour escape, hence the leading ".*".
    (UserWarning, r"mlflow\.", r".*An input example was not provided when logging the model"),
)

# DeepSpeed warns on every start that a torch optimizer is "untested" with ZeRO. The trainer
# chooses torch's AdamW on purpose (zero_allow_untested_optimizer), so the line says nothing.
DEEPSPEED_NOISE = ("untested optimizer",)


def package_version() -> str:
    try:
        return version("mnemos")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def add_console_arguments(parser: argparse.ArgumentParser, prog: str) -> None:
    """``--version``, ``-q`` and ``-v`` on a top-level parser."""
    parser.add_argument(
        "--version", action="version", version=f"{prog} (mnemos) {package_version()}"
    )
    add_verbosity_arguments(parser)


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """``-q``/``-v`` on a parser; on subcommands too, so they may follow the subcommand's name."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=argparse.SUPPRESS,
        help="print warnings and errors only (-qq: errors only)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more detail: -v shows the libraries' INFO lines, -vv everything at DEBUG",
    )


def verbosity(args: argparse.Namespace) -> int:
    """-2 .. 2 from the parsed flags (0 when neither was given)."""
    return min(getattr(args, "verbose", 0), 2) - min(getattr(args, "quiet", 0), 2)


def first_process() -> bool:
    """Whether this is the job's first process (rank 0, or the only one): for a line that every
    rank would print alike, such as a summary of data all ranks read whole."""
    return _rank() in (None, 0)


def _rank() -> int | None:
    """This process's rank when the launcher started several (torchrun, SLURM, deepspeed)."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or not world.isdigit() or int(world) <= 1:
        return None
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else None


class _DropLines(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_level = 0  # what setup_console was given, for loggers that libraries rebuild on import


def setup_console(level: int = 0) -> None:
    """Configure logging and warnings for a CLI process. ``level``: -2 errors only, -1 warnings,
    0 the project's INFO lines (the default), 1 the libraries' INFO too, 2 DEBUG everywhere."""
    global _level
    _level = level
    rank = _rank()
    where = f"[rank {rank}] " if rank is not None else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {where}%(message)s", datefmt="%Y-%m-%d %H:%M:%S"
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_third_party_level())
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(_project_level())
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(_third_party_level())
    route_library_loggers()
    logging.captureWarnings(True)  # the project's own warnings.warn() become log lines
    if level < 1:
        for category, module, message in KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _project_level() -> int:
    return {-2: logging.ERROR, -1: logging.WARNING, 2: logging.DEBUG}.get(_level, logging.INFO)


def _third_party_level() -> int:
    return {1: logging.INFO, 2: logging.DEBUG}.get(_level, max(_project_level(), logging.WARNING))


# Libraries that give their logger a handler of their own at import (DeepSpeed's writes to
# stdout) and stop it propagating: re-routed through ours once they are imported.
SELF_CONFIGURED_LOGGERS = ("DeepSpeed", "mlflow")


def route_library_loggers() -> None:
    """Send DeepSpeed's and MLflow's lines through the console's handler (stderr, one format, the
    console's level). Their import installs handlers of its own, so the modules that import them
    call this again right after."""
    for name in SELF_CONFIGURED_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(_third_party_level())
    deepspeed = logging.getLogger("DeepSpeed")
    if _level < 1 and not any(isinstance(f, _DropLines) for f in deepspeed.filters):
        deepspeed.addFilter(_DropLines(DEEPSPEED_NOISE))
