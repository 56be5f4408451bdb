"""Checks before a launch, each failing with a message that says what to fix.

Run by `pretrain-launch` on the submitting machine, and by the SLURM script on every node of the
allocation (``python -m launch.preflight EXPERIMENT [k=v ...]``), where the checkpoint directory
is what differs between nodes (a missing shared mount is the classic cause of a lost run).
Imports no torch: a check must take a second, not the time of a DeepSpeed import.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipeline.configuration import ConfigError, load_config
from launch.config import ClusterConfig
from launch.hosts import hostfile_hosts, is_local_host
from pretrain.config import ExperimentConfig


class PreflightError(Exception):
    """One or more checks failed; the message lists every failure, one per line."""


def experiment(path: str, overrides: Sequence[str]) -> ExperimentConfig:
    try:
        return load_config(ExperimentConfig, path, list(overrides))
    except ConfigError as err:
        raise PreflightError(f"config: {err}") from None


def check_manifest(
    url: str, train_split: str = "train", storage_options: dict[str, Any] | None = None
) -> str | None:
    if not url:
        return (
            "data.manifest is not set: point it at the manifest.json of `data-pipeline prepare` "
            "(or list several in data.mixture)"
        )
    try:
        import fsspec

        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            manifest = json.loads(handle.read())
    except (OSError, ValueError, ImportError) as err:
        return f"data manifest {url} is not readable: {type(err).__name__}: {err}"
    if not isinstance(manifest, dict) or "splits" not in manifest:
        return f"data manifest {url} is not a manifest written by `data-pipeline prepare`"
    split = manifest["splits"].get(train_split)
    if not isinstance(split, dict) or not split.get("samples"):
        return (
            f"data manifest {url} holds no training samples in split {train_split!r} "
            "(data.train_split): prepare kept nothing there; its skip summary says why"
        )
    return None


def check_writable(directory: str) -> str | None:
    """Create the directory and a probe file in it; object-store URLs are left to the run."""
    if "://" in directory:
        return None
    probe = Path(directory) / f".preflight-{socket.gethostname()}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        return (
            f"checkpoint.dir {directory} is not writable on {socket.gethostname()}: {err}"
            " (is the shared file system mounted on this node?)"
        )
    return None


def check_host(host: str) -> str | None:
    try:
        socket.getaddrinfo(host, None)
    except OSError as err:
        return f"rendezvous host {host!r} does not resolve from {socket.gethostname()}: {err}"
    return None


def check_port_free(host: str, port: int) -> str | None:
    """The rendezvous host binds the port: something already listening there would be joined
    (a stale job's store) or block the bind. SO_REUSEADDR, as the store itself binds: the
    connections of a job that just ended (TIME_WAIT) do not hold the port, a listener does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("" if not host.startswith("127.") else host, port))
        except OSError as err:
            return (
                f"rendezvous port {port} on {host} is in use ({err.strerror}): a stale job or "
                "another service holds it; pick another rdzv_port (--rdzv-endpoint HOST:PORT)"
            )
    return None


def check_ssh(host: str) -> str | None:
    import subprocess

    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host, "true"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"host {host} from the hostfile is not reachable over ssh: {err}"
    if result.returncode != 0:
        return (
            f"host {host} from the hostfile is not reachable over passwordless ssh "
            f"(the DeepSpeed launcher needs it): {result.stderr.strip()}"
        )
    return None


def node_checks(config: ExperimentConfig) -> list[str]:
    """What must hold on every node: the data is readable, checkpoints can be written."""
    manifests = [s.manifest for s in config.data.mixture] or [config.data.manifest]
    options = config.data.storage_options
    found = [check_manifest(url, config.data.train_split, options) for url in manifests]
    found.append(check_writable(config.checkpoint.dir))
    return [f for f in found if f]


def cluster_checks(cluster: ClusterConfig) -> list[str]:
    """What the submitting node can check about the others."""
    c = cluster
    found: list[str | None] = []
    if c.backend == "torchrun":
        found.append(check_host(c.rdzv_host))
        if c.node_rank == 0 and is_local_host(c.rdzv_host):
            found.append(check_port_free(c.rdzv_host, c.rdzv_port))
    if c.backend == "deepspeed":
        found.append(check_host(c.rdzv_host))
        if is_local_host(c.rdzv_host):
            found.append(check_port_free(c.rdzv_host, c.rdzv_port))
        if c.hostfile:
            if not Path(c.hostfile).is_file():
                found.append(f"hostfile {c.hostfile} does not exist")
            else:
                for host in hostfile_hosts(c.hostfile):
                    found.append(None if is_local_host(host) else check_ssh(host))
    return [f for f in found if f]


def run(cluster: ClusterConfig | None, path: str, overrides: Sequence[str]) -> ExperimentConfig:
    """All checks that apply here; raises PreflightError listing every failure."""
    config = experiment(path, overrides)
    problems = node_checks(config) + (cluster_checks(cluster) if cluster else [])
    if problems:
        raise PreflightError("\n".join(f"preflight: {p}" for p in problems))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m launch.preflight EXPERIMENT [KEY=VALUE ...]")
        return 0 if args else 2
    try:
        config = run(None, args[0], args[1:])
    except PreflightError as err:
        for line in str(err).splitlines():
            print(f"error: {socket.gethostname()}: {line}", file=sys.stderr, flush=True)
        return 1
    with contextlib.suppress(OSError):
        print(
            f"preflight ok on {socket.gethostname()}: {config.checkpoint.dir} writable", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
