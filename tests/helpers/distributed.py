"""Run a function or a CLI under ``torchrun --nproc_per_node=N`` on CPU and collect each rank's
result and output.

Everything is real: torchrun starts N processes, they rendezvous over TCP on 127.0.0.1 and talk
over gloo, DeepSpeed runs with ``DS_ACCELERATOR=cpu``. Each call has a timeout: a hang kills the
whole process group and fails the test with every rank's output, instead of stalling CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.distributed.process_group import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RankResult:
    rank: int
    value: Any  # what the function returned (None for CLI runs)
    output: str  # the rank's stdout and stderr, as the process wrote them


@dataclass
class DistributedRun:
    returncode: int
    ranks: list[RankResult]
    launcher_output: str  # torchrun's own stdout/stderr

    def describe(self) -> str:
        parts = [f"torchrun exited {self.returncode}", "--- torchrun ---", self.launcher_output]
        for r in self.ranks:
            parts += [f"--- rank {r.rank} ---", r.output]
        return "\n".join(parts)


class DistributedRunError(AssertionError):
    def __init__(self, message: str, run: DistributedRun) -> None:
        self.run = run
        super().__init__(f"{message}\n{run.describe()}")


def distributed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DS_ACCELERATOR": "cpu",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",  # 2 cores, 2 ranks: oversubscribing threads only slows
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    env.update(extra or {})
    return env


def _torchrun(nproc: int, log_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--log-dir={log_dir}",
        "--redirects=3",  # each rank's stdout and stderr go to files under log_dir
        *extra_args,
    ]


def _rank_outputs(log_dir: Path, nproc: int) -> list[str]:
    """Collect stdout+stderr for each local rank from torchrun's log directory."""
    outputs = []
    for rank in range(nproc):
        text = []
        for name in ("stdout.log", "stderr.log"):
            for path in sorted(log_dir.glob(f"**/attempt_*/{rank}/{name}")):
                text.append(path.read_text(errors="replace"))
        outputs.append("".join(text))
    return outputs


class RunningJob:
    """A torchrun job started in its own process group: wait for it, or kill it and every rank."""

    def __init__(
        self,
        cmd: list[str],
        *,
        nproc: int,
        log_dir: Path,
        env: Mapping[str, str] | None,
        cwd: Path | None,
    ) -> None:
        self.cmd, self.nproc, self.log_dir = cmd, nproc, log_dir
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=distributed_env(env),
            cwd=cwd or REPO_ROOT,
            start_new_session=True,  # so a timeout can kill torchrun and every rank together
        )

    def rank_pids(self) -> list[int]:
        """PIDs of the rank processes (torchrun's children)."""
        import psutil

        return [child.pid for child in psutil.Process(self.proc.pid).children()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal torchrun and every rank. torchrun starts each rank in a session of its own,
        so killing torchrun's process group alone would leave the ranks running."""
        import psutil

        try:
            ranks = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            ranks = []
        for process in [*ranks]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> DistributedRun:
        try:
            launcher_output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            launcher_output, _ = self.proc.communicate()
            outputs = _rank_outputs(self.log_dir, self.nproc)
            run = DistributedRun(
                -9, [RankResult(r, None, o) for r, o in enumerate(outputs)], launcher_output
            )
            command = " ".join(self.cmd)
            raise DistributedRunError(f"timed out after {timeout:.0f} s: {command}", run) from None
        outputs = _rank_outputs(self.log_dir, self.nproc)
        return DistributedRun(
            self.proc.returncode,
            [RankResult(r, None, o) for r, o in enumerate(outputs)],
            launcher_output,
        )


def run_distributed(
    target: str,
    *args: Any,
    workdir: Path,
    nproc: int = 2,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> DistributedRun:
    """Call ``target`` ("package.module:function") on every rank with ``args``.

    The function runs after a gloo process group is initialised; it may return tensors, numbers,
    strings, lists and dicts of those, which come back per rank in ``RankResult.value``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir = workdir / "torchrun-logs"
    args_path = workdir / "args.pt"
    torch.save(list(args), args_path)
    cmd = [
        *_torchrun(nproc, log_dir),
        "-m",
        "tests.helpers.rank_entry",
        target,
        str(args_path),
        str(workdir),
    ]
    run = RunningJob(cmd, nproc=nproc, log_dir=log_dir, env=env, cwd=None).wait(timeout)
    for rank in run.ranks:
        result_path = workdir / f"result-rank{rank.rank}.pt"
        if result_path.exists():
            rank.value = torch.load(result_path, weights_only=True)
    if check and run.returncode != 0:
        raise DistributedRunError(f"{target} failed", run)
    return run


def start_cli_distributed(
    module_args: Sequence[str],
    *,
    workdir: Path,
    nproc: int = 2,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> RunningJob:
    """Start ``python -m MODULE ARGS...`` under torchrun without waiting for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir = workdir / f"torchrun-logs-{len(list(workdir.glob('torchrun-logs-*')))}"
    cmd = [*_torchrun(nproc, log_dir), "-m", *module_args]
    return RunningJob(cmd, nproc=nproc, log_dir=log_dir, env=env, cwd=cwd)


def run_cli_distributed(
    module_args: Sequence[str],
    *,
    workdir: Path,
    nproc: int = 2,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> DistributedRun:
    """Run ``python -m MODULE ARGS...`` under torchrun, e.g. ``["pretrain.cli", "train", cfg]``."""
    job = start_cli_distributed(module_args, workdir=workdir, nproc=nproc, env=env, cwd=cwd)
    run = job.wait(timeout)
    if check and run.returncode != 0:
        raise DistributedRunError(f"{' '.join(module_args)} failed", run)
    return run


def run_cli_on_nodes(
    module_args: Sequence[str],
    *,
    workdir: Path,
    nodes: int = 2,
    wrap: Mapping[int, Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> list[DistributedRun]:
    """Run ``python -m MODULE ARGS...`` as a job of ``nodes`` nodes with one process each, all on
    this machine: one torchrun agent per node, static rendezvous on 127.0.0.1, as a multi-node
    launch does. ``wrap[i]`` goes in front of node i's command (e.g. `unshare` to give it a disk
    of its own). One `DistributedRun` per node, in node order."""
    workdir.mkdir(parents=True, exist_ok=True)
    attempt = len(list(workdir.glob("nodes-*")))
    port = free_port()
    jobs = []
    for node in range(nodes):
        log_dir = workdir / f"nodes-{attempt}" / f"node{node}"
        cmd = [
            *(wrap or {}).get(node, ()),
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={nodes}",
            "--nproc_per_node=1",
            f"--node-rank={node}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            f"--log-dir={log_dir}",
            "--redirects=3",
            "-m",
            *module_args,
        ]
        jobs.append(RunningJob(cmd, nproc=1, log_dir=log_dir, env=env, cwd=None))
    return [job.wait(timeout) for job in jobs]
