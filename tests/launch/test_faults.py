"""Real multi-process and multi-node launches through `pretrain-launch`, with real faults.

Two nodes are two `torchrun --nnodes=2` agents on 127.0.0.1 (one process each) joined by a c10d
rendezvous, exactly as on two machines. Every launch first runs with --dry-run and the test
checks that the script then executed is byte for byte what the dry run printed. Results are
compared weight by weight with one uninterrupted 2-process run of the same experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import layout as ckpt
from tests.helpers.distributed import REPO_ROOT, distributed_env
from tests.launch.jobs import STEPS, Launch, experiment, kill, wait_for_checkpoint
from tests.train.runs import assert_same_weights, weights

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FAIL_WITHIN_S = 90  # a dead peer must end the job this fast (gloo errors out at once)
HUNG_TIMEOUT_S = 20  # engine.dist_timeout_s for the hung-rank test
TORCHRUN_GRACE_S = 30  # torchrun waits this long after SIGTERM before SIGKILL (a stopped rank)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def profile(tmp_path: Path, backend: str, **keys: object) -> str:
    lines = [f"backend: {backend}", f"output_dir: {tmp_path / 'launch'}", "dist_timeout_s: 60"]
    lines += [f"{k}: {v}" for k, v in keys.items()]
    lines += ["env:", "  DS_ACCELERATOR: cpu", '  OMP_NUM_THREADS: "1"']
    path = tmp_path / f"{backend}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def two_nodes(tmp_path: Path, config: Path, tag: str) -> list[Launch]:
    cluster = profile(tmp_path, "torchrun", nnodes=2, nproc_per_node=1)
    endpoint = f"127.0.0.1:{free_port()}"
    return [
        Launch(
            cluster,
            config,
            f"--node-rank={node}",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={tag}",
            log=tmp_path / f"{tag}-node{node}.log",
        )
        for node in (0, 1)
    ]


@pytest.fixture(scope="module")
def reference(
    char_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    """One uninterrupted run with the local backend (2 processes on this machine)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = experiment(tmp, char_manifest)
    run = Launch(profile(tmp, "local", nproc_per_node=2), config, log=tmp / "local.log")
    assert run.wait(300) == 0, run.output()
    run.assert_dry_run_matches()
    return weights(tmp / "checkpoints", STEPS)


def test_two_nodes_train_lose_a_rank_and_resume(
    char_manifest: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    config = experiment(tmp_path, char_manifest)
    nodes = two_nodes(tmp_path, config, "first")
    wait_for_checkpoint(tmp_path / "checkpoints", 2, *nodes)
    for node in nodes:
        node.assert_dry_run_matches()
    victim = next(node for node in nodes if _has_rank(node, 1))
    killed_at = time.monotonic()
    kill(victim.rank_pid(1))
    codes = [node.wait(FAIL_WITHIN_S) for node in nodes]
    elapsed = time.monotonic() - killed_at
    assert all(code != 0 for code in codes), [n.output() for n in nodes]
    assert elapsed < FAIL_WITHIN_S
    # torchrun's failure summary names the dead rank, its host and the signal.
    summary = victim.output()
    assert re.search(r"rank\s*:\s*1 ", summary), summary
    assert re.search(r"host\s*:\s*\S+", summary), summary
    assert "Signal 9 (SIGKILL)" in summary
    committed = ckpt.committed_steps(tmp_path / "checkpoints")
    assert committed and committed[-1] < STEPS

    again = two_nodes(tmp_path, config, "second")
    assert [node.wait(300) for node in again] == [0, 0], [n.output() for n in again]
    outputs = "".join(node.output() for node in again)
    assert f"resumed from step {committed[-1]}" in outputs
    assert_same_weights(weights(tmp_path / "checkpoints", STEPS), reference)


def test_dead_rank_with_max_restarts_restarts_and_resumes(
    char_manifest: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    config = experiment(tmp_path, char_manifest)
    cluster = profile(tmp_path, "local", nproc_per_node=2)
    job = Launch(cluster, config, "--max-restarts=1", log=tmp_path / "local.log")
    wait_for_checkpoint(tmp_path / "checkpoints", 2, job)
    kill(job.rank_pid(1))
    assert job.wait(300) == 0, job.output()
    job.assert_dry_run_matches()
    out = job.output()
    # torchrun reports the dead worker (its restart notice is an INFO line it does not print),
    # the restarted ranks resume from a checkpoint, and the job succeeds.
    assert "failed (exitcode: -9) local_rank: 1" in out, out
    assert re.search(r"resumed from step [24]", out), out
    assert_same_weights(weights(tmp_path / "checkpoints", STEPS), reference)


def test_restarted_attempt_never_reads_the_dead_attempts_addresses(tmp_path: Path) -> None:
    """torchrun keeps one rendezvous store for every restart attempt; the restarted group must
    not pick up the dead attempt's peer addresses from it (restart_probe.py sets up the race)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max_restarts=1",
        "-m",
        "tests.launch.restart_probe",
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=distributed_env(),
        timeout=240,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for rank in (0, 1):
        assert f"attempt 1 rank {rank}: all_reduce 2" in out, out


def test_hung_rank_fails_the_job_naming_rank_and_host(char_manifest: Path, tmp_path: Path) -> None:
    """SIGSTOP one rank mid-run: the job fails within the collective timeout plus torchrun's
    grace period, and the output names the silent rank and its host."""
    config = experiment(tmp_path, char_manifest)
    cluster = profile(tmp_path, "local", nproc_per_node=2)
    job = Launch(cluster, config, f"--dist-timeout={HUNG_TIMEOUT_S}", log=tmp_path / "hung.log")
    wait_for_checkpoint(tmp_path / "checkpoints", 2, job)
    pid = job.rank_pid(1)
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        code = job.wait(HUNG_TIMEOUT_S + TORCHRUN_GRACE_S + FAIL_WITHIN_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - stopped_at
    out = job.output()
    assert code != 0, out
    assert elapsed < HUNG_TIMEOUT_S + TORCHRUN_GRACE_S + FAIL_WITHIN_S, out
    host = socket.gethostname()
    assert re.search(rf"rank 0: rank 1 \({re.escape(host)} pid {pid}\) has not responded", out), out
    assert f"Timed out waiting {HUNG_TIMEOUT_S * 1000}ms" in out, out


def test_killing_one_nodes_agent_ends_the_other_node(char_manifest: Path, tmp_path: Path) -> None:
    config = experiment(tmp_path, char_manifest)
    nodes = two_nodes(tmp_path, config, "agents")
    wait_for_checkpoint(tmp_path / "checkpoints", 2, *nodes)
    killed_at = time.monotonic()
    nodes[1].kill_all()  # the agent and its rank: the whole node is gone
    code = nodes[0].wait(FAIL_WITHIN_S)
    assert code != 0, nodes[0].output()
    assert time.monotonic() - killed_at < FAIL_WITHIN_S
    # How the surviving node learns of it depends on who hosts the c10d store: its own rank
    # fails (torchrun's report, held back by pretrain-launch, which says the job failed), or,
    # when the killed node's agent held the store (both agents are on localhost, either may win
    # the rendezvous), its agent loses the store.
    out = nodes[0].output()
    assert any(
        sign in out for sign in ("the job failed (exit code", "RendezvousConnectionError")
    ), out


def _has_rank(launch: Launch, rank: int) -> bool:
    try:
        launch.rank_pid(rank)
    except AssertionError:
        return False
    return True


def test_deepspeed_hostfile_backend_trains(char_manifest: Path, tmp_path: Path) -> None:
    """The DeepSpeed launcher with a hostfile of this machine: no ssh, real training."""
    config = experiment(tmp_path, char_manifest)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    cluster = profile(
        tmp_path, "deepspeed", nproc_per_node=2, hostfile=hostfile, rdzv_port=free_port()
    )
    job = Launch(cluster, config, "--include=localhost:0,1", log=tmp_path / "ds.log")
    assert job.wait(300) == 0, job.output()
    job.assert_dry_run_matches()
    assert "--include=localhost:0,1" in job.script().read_text()
    assert ckpt.committed_steps(tmp_path / "checkpoints")[-1] == STEPS
