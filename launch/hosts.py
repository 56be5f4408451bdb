"""Host names: hostfiles, and whether a name is this machine."""

from __future__ import annotations

import contextlib
import socket
from functools import cache
from pathlib import Path


def hostfile_hosts(path: str | Path) -> list[str]:
    """Hosts of a DeepSpeed/OpenMPI hostfile (``host slots=N``; '#' starts a comment)."""
    hosts = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(line.split()[0])
    return hosts


@cache
def local_addresses() -> frozenset[str]:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    addresses = {"127.0.0.1", "::1"}
    for name in list(names):
        with contextlib.suppress(OSError):  # an unresolvable own name is not an error here
            addresses |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    return frozenset(names | addresses)


def is_local_host(host: str) -> bool:
    return host in local_addresses() or host.startswith("127.")
