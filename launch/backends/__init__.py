"""One renderer per backend: each turns a `Job` into a plain bash script (see `launch.script`)."""

from __future__ import annotations

from collections.abc import Callable

from launch.backends import deepspeed, local, slurm, torchrun
from launch.script import Job

RENDERERS: dict[str, Callable[[Job], str]] = {
    "local": local.render,
    "torchrun": torchrun.render,
    "deepspeed": deepspeed.render,
    "slurm": slurm.render,
}


def render(job: Job) -> str:
    return RENDERERS[job.cluster.backend](job)
