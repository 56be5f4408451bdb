"""What every rendered launch script shares: the job, the shell header, the trainer command.

A script is plain bash that a person can read, edit and run by hand; `pretrain-launch` writes
it to a file, prints it with ``--dry-run`` and otherwise runs exactly that file.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from launch.config import ClusterConfig

# torchrun forwards these to its workers (the trainer checkpoints on TERM/USR1 and exits 75).
# Set through the environment: PET_* is read by torchrun >= 2.8 (where the flag exists),
# TORCHELASTIC_* by the earlier releases that had no flag; older ones ignore both harmlessly.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclass
class Job:
    """One launch: a cluster profile, an experiment and its overrides, run from ``workdir``."""

    cluster: ClusterConfig
    experiment: str  # path of the experiment YAML
    overrides: list[str] = field(default_factory=list)
    workdir: Path = field(default_factory=Path.cwd)
    verbosity: int = 0  # pretrain-launch's -q/-v, passed on to every rank

    def train_args(self) -> list[str]:
        """``-m pretrain.cli train CONFIG k=v ...`` as a launcher passes it on."""
        args = ["pretrain.cli", "train", self.experiment, *self.overrides]
        if self.verbosity:
            args.append("-" + ("v" if self.verbosity > 0 else "q") * abs(self.verbosity))
        if self.cluster.dist_timeout_s is not None:
            args.append(f"engine.dist_timeout_s={self.cluster.dist_timeout_s}")
        return args

    @property
    def output_dir(self) -> Path:
        out = Path(self.cluster.output_dir)
        return out if out.is_absolute() else self.workdir / out


def quote(args: Iterable[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def word(arg: str) -> str:
    """Quote for bash; an argument naming a shell variable ($SLURM_JOB_ID) keeps it expandable."""
    if "$" in arg:
        return '"' + arg.replace('"', '\\"') + '"'
    return shlex.quote(arg)


def continued(args: list[str], indent: str = "  ") -> str:
    """A long command with one option per line: easier to read and to diff than one line."""
    lines: list[list[str]] = [[]]
    for index, arg in enumerate(args):
        if index > 1 and arg.startswith("-"):
            lines.append([])
        lines[-1].append(word(arg))
    return (" \\\n" + indent).join(" ".join(line) for line in lines)


def header(job: Job, title: str, directives: Iterable[str] = ()) -> list[str]:
    """Shebang, #SBATCH-style directives, a comment, and the environment every backend sets."""
    lines = ["#!/usr/bin/env bash", *directives]
    lines += [
        f"# {title}",
        f"# Rendered by pretrain-launch (backend {job.cluster.backend}, "
        f"job {job.cluster.job_name}).",
        "# Run it as is, or edit and run it by hand: it depends on nothing but this checkout.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(job.workdir))}",
    ]
    lines += job.cluster.env_setup
    env = {"PYTHONUNBUFFERED": "1", **job.cluster.env}
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return lines


def signal_env(shutdown_timeout_s: int) -> list[str]:
    """Make torchrun forward USR1 to the ranks and give them time to save a checkpoint."""
    return [
        "# torchrun passes these signals on to the ranks and waits this long before SIGKILL.",
        f"export PET_SIGNALS_TO_HANDLE={FORWARDED_SIGNALS}",
        f"export TORCHELASTIC_SIGNALS_TO_HANDLE={FORWARDED_SIGNALS}",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={shutdown_timeout_s}",
    ]


def torchrun_args(job: Job, *, rdzv: list[str]) -> list[str]:
    c = job.cluster
    return [
        c.python,
        "-m",
        "torch.distributed.run",
        *rdzv,
        f"--nproc_per_node={c.nproc_per_node}",
        f"--max_restarts={c.max_restarts}",
        "-m",
        *job.train_args(),
    ]


def render_text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"
