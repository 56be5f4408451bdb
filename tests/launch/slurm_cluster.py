"""A real one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd started as
background processes from a generated config, stopped by their own pids.

Everything lives under one temporary directory (config, state, spool, logs, munge key and
socket), so nothing outside it is touched and several test sessions cannot collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROGRAMS = (
    *("munged", "mungekey", "slurmctld", "slurmd"),
    *("sbatch", "srun", "scontrol", "sinfo", "scancel"),
)


class SlurmStartError(RuntimeError):
    """The daemons did not come up; the message carries their logs."""


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if not _which(name)]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 1024


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]  # SLURM_CONF and MUNGE socket for client commands
    processes: list[subprocess.Popen[bytes]]

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )

    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key=value pairs (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job_state(job_id)
            if fields.get("JobState") in states:
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} not in {states} after {timeout:.0f} s: {fields}\n{self.logs()}"
                )
            time.sleep(0.5)

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(
                    f"--- {name} (tail) ---\n" + "\n".join(path.read_text().splitlines()[-30:])
                )
        return "\n".join(parts)


def _config(root: Path, cpus: int) -> str:
    # cred_expire is also how long a requeued job waits before it may start again (default
    # 120 s); 10 s keeps the preemption test short.
    ctld, slurmd = free_port(), free_port()
    host = socket.gethostname()
    return f"""ClusterName=mnemos-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/builtin
SchedulerParameters=defer_batch
MinJobAge=600
KillWait=30
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


@contextlib.contextmanager
def slurm_cluster(root: Path, timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged + slurmctld + slurmd under ``root``; yield once the node is idle."""
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 2
    conf = root / "slurm.conf"
    conf.write_text(_config(root, cpus))
    key, socket_path = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    key.chmod(0o400)
    (root / "munge").chmod(0o755)  # clients need to reach the socket inside
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen[bytes]] = []
    log = (root / "log" / "daemons.out").open("ab")

    def start(*cmd: str) -> None:
        processes.append(
            subprocess.Popen(list(cmd), env=env, stdout=log, stderr=log, start_new_session=True)
        )

    munged_args = [
        f"--key-file={key}",
        f"--socket={socket_path}",
        f"--pid-file={root / 'munge' / 'munged.pid'}",
        f"--log-file={root / 'log' / 'munged.log'}",
        f"--seed-file={root / 'munge' / 'munged.seed'}",
        "--foreground",
        "--force",
    ]
    start(_which("munged") or "munged", *munged_args)
    cluster = SlurmCluster(root, env, processes)
    try:
        _wait_for(lambda: socket_path.exists(), timeout, "munged socket", cluster)
        start(_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(conf))
        start(_which("slurmd") or "slurmd", "-D", "-f", str(conf))

        def idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%t").stdout
            return out.strip() in ("idle", "mix")

        _wait_for(idle, timeout, "an idle node", cluster)
        yield cluster
    finally:
        if all(p.poll() is None for p in processes[1:]):
            # A job a failed test left behind: its steps are slurmd's children, not ours.
            cluster.run("scancel", "--full", "--partition=debug")
            time.sleep(1)
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        log.close()


def _wait_for(ready: object, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if any(p.poll() is not None for p in cluster.processes):
            raise SlurmStartError(
                f"a SLURM daemon exited while waiting for {what}:\n{_tails(cluster)}"
            )
        if time.monotonic() > deadline:
            raise SlurmStartError(f"no {what} after {timeout:.0f} s:\n{_tails(cluster)}")
        time.sleep(0.3)


def _tails(cluster: SlurmCluster) -> str:
    parts = [cluster.logs()]
    for name in ("daemons.out", "munged.log"):
        path = cluster.root / "log" / name
        if path.exists():
            parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


def cluster_or_skip(root: Path) -> Iterator[SlurmCluster]:
    """A module fixture's body: a running one-node cluster under ``root``, or a skip that says
    why (programs missing, not root, or the daemons' own words when they do not start). Only
    the start failing is a skip; a test failing is not."""
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"SLURM programs not installed: {', '.join(missing)} "
            "(apt-get install slurm-wlm munge; .ci/run installs them)"
        )
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs slurmd as root (SlurmUser=root); not root here")
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(slurm_cluster(root))
        except SlurmStartError as err:
            pytest.skip(f"could not start a local SLURM cluster: {err}")
        yield running
