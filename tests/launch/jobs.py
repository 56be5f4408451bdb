"""Running `pretrain-launch` for real in tests: start it in its own session, find its ranks,
kill exactly what a scenario needs, and check that --dry-run printed the script it executed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pretrain.checkpoint import layout as ckpt
from tests.helpers.distributed import REPO_ROOT, distributed_env
from tests.helpers.trained_runs import experiment_file

STEPS = 6
# Evaluation only at the end, a checkpoint every 2 steps: short runs with something to resume.
OVERRIDES = [f"train.max_steps={STEPS}", "train.eval_every=100", "checkpoint.every_steps=2"]


def experiment(tmp_path: Path, manifest: Path) -> Path:
    return experiment_file(tmp_path, manifest)


def launch_cmd(profile: str, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", profile, str(config), *OVERRIDES, *extra]


def dry_run(profile: str, config: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [*launch_cmd(profile, config, *extra), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=distributed_env(env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Launch:
    """`pretrain-launch` running in a session of its own, its output in a file."""

    def __init__(
        self, profile: str, config: Path, *extra: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.expected = dry_run(profile, config, *extra, env=env)
        self.log = log
        self.cmd = launch_cmd(profile, config, *extra)
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=distributed_env(env),
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def script(self) -> Path:
        """The script pretrain-launch said it runs."""
        for line in self.output().splitlines():
            if " INFO running " in line:
                return Path(line.split(" INFO running ", 1)[1].strip())
        raise AssertionError(f"no script path in the output:\n{self.output()}")

    def assert_dry_run_matches(self) -> None:
        assert self.script().read_text() == self.expected

    def tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)]
        return []

    def rank_pid(self, rank: int) -> int:
        for process in self.tree()[1:]:
            with contextlib.suppress(psutil.Error):
                if process.environ().get("RANK") == str(rank) and "pretrain.cli" in " ".join(
                    process.cmdline()
                ):
                    return process.pid
        raise AssertionError(f"rank {rank} is not a process of this launch")

    def kill_all(self) -> None:
        for process in reversed(self.tree()):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            self.proc.wait(10)
            raise AssertionError(
                f"{' '.join(self.cmd)} still running after {timeout:.0f} s:\n{self.output()}"
            ) from None


def wait_for_checkpoint(
    checkpoints: Path, step: int, *launches: Launch, timeout: float = 240
) -> None:
    marker = ckpt.step_dir(checkpoints, step) / ckpt.MARKER
    deadline = time.monotonic() + timeout
    while not marker.exists():
        ended = [launch for launch in launches if launch.proc.poll() is not None]
        if ended:
            raise AssertionError(f"a launch ended before step {step}:\n{ended[0].output()}")
        if time.monotonic() > deadline:
            for launch in launches:
                launch.kill_all()
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.1)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
