"""The process group's safety around `torch.distributed`: what makes a job on real clusters fail
fast and restart cleanly rather than hang. No DeepSpeed here; `pretrain.distributed.engine` calls
these around `deepspeed.init_distributed`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def single_process_env() -> None:
    """One process and no launcher: a world of one, still through the real env:// code path."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


# torchrun (c10d rendezvous, the default since torch 2.4) keeps ONE TCPStore for the whole job:
# the agent on the first node hosts it at MASTER_ADDR:MASTER_PORT, and every worker of every
# restart attempt uses it through `env://` without any per-attempt key prefix. The keys the
# first attempt's process groups wrote (gloo's and NCCL's peer addresses, per group) are still
# there when `--max-restarts` starts the second attempt, so a new rank that asks for a peer's
# address before that peer has re-published it reads the dead process's address and fails
# ("Gloo connectFullMesh failed ... Connection refused"); NCCL's unique id is exchanged through
# the same store (not observed here: no GPU on the machine this was written on).
ATTEMPT_SCHEME = "mnemos-attempt"


def _attempt_rendezvous(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    """`env://`, with every key under this restart attempt's own prefix."""
    store, rank, world_size = next(dist.rendezvous("env://", **kwargs))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    yield dist.PrefixStore(f"/mnemos/attempt_{attempt}", store), rank, world_size
    raise RuntimeError(f"{ATTEMPT_SCHEME}:// cannot re-rendezvous; torchrun restarts workers")


def attempt_init_method() -> str | None:
    """The init method for DeepSpeed: attempt-scoped keys under torchrun, else env://."""
    if dist.is_initialized() or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None  # env:// (DeepSpeed's default); each launch has a store of its own
    with suppress(RuntimeError):  # registered already (a second call)
        dist.register_rendezvous_handler(ATTEMPT_SCHEME, _attempt_rendezvous)
    return f"{ATTEMPT_SCHEME}://"


def start_heartbeat(timeout_s: int) -> None:
    """Name a hung rank: a collective timeout says only "Timed out waiting ... for recv".

    A daemon thread on every rank bumps a counter in the job's rendezvous store and watches the
    next rank's (so each rank is watched once, and the store sees O(world) traffic). When that
    counter stops moving for half the collective timeout (a stopped, frozen or swapping
    process, a dead host), it prints which rank, host and pid went silent, so the timeout error
    that follows is not the only clue. It only reports; the collective timeout fails the job.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if world < 2 or not (addr and port):
        return
    interval = min(30.0, max(1.0, timeout_s / 10))
    silent_after, peer = timeout_s / 2, (rank + 1) % world
    prefix = f"/mnemos/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/heartbeat/"
    me = f"{socket.gethostname()} pid {os.getpid()}"

    def beat() -> None:
        try:  # a client of its own: a store connection must not be shared between threads
            store = dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=60))
        except (RuntimeError, OSError):
            return
        count, last_seen, last_change, reported = 0, "", time.monotonic(), False
        while True:
            count += 1
            try:
                store.set(f"{prefix}{rank}", f"{count} {me}")
                seen = (
                    store.get(f"{prefix}{peer}").decode()
                    if store.check([f"{prefix}{peer}"])
                    else ""
                )
            except (RuntimeError, OSError):  # the store's host is gone: the job is ending
                return
            now = time.monotonic()
            if seen != last_seen:
                if reported:
                    logger.warning("rank %d: rank %d responds again", rank, peer)
                last_seen, last_change, reported = seen, now, False
            elif not reported and now - last_change > silent_after:
                where = seen.split(" ", 1)[1] if " " in seen else "host unknown"
                logger.warning(
                    "rank %d: rank %d (%s) has not responded for %.0f s: it is hung, stopped or "
                    "its host is down; collectives fail after engine.dist_timeout_s=%d s",
                    rank,
                    peer,
                    where,
                    now - last_change,
                    timeout_s,
                )
                reported = True
            time.sleep(interval)

    threading.Thread(target=beat, name="mnemos-heartbeat", daemon=True).start()


def remove_stale_shm_buffers() -> None:
    """Delete this rank's leftover DeepSpeed CPU all-reduce buffer from a killed process.

    On CPU, DeepSpeed maps /dev/shm/deepspeed_allreduce_buffer_*_{addr}_{port}_{rank} and waits
    on flags in its peers' buffers. A rank killed with SIGKILL leaves its buffer behind; when
    torchrun restarts the group on the same address and port, the new ranks would wait on the
    dead ones' flags forever. Each rank removes only its own name, and before the process group
    forms, so no peer can have opened the new buffer yet.
    """
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    if not (addr and port and rank):
        return
    for stale in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{rank}"):
        stale.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` (a small CPU tensor: counts, losses) summed over every rank, on the CPU; as
    is without a process group. NCCL only moves CUDA tensors, so under NCCL the sum is made
    on this rank's current CUDA device (the launcher's LOCAL_RANK device, set by DeepSpeed
    or `pretrain evaluate`); gloo sums CPU tensors in place."""
    if not dist.is_initialized():
        return values
    if dist.get_backend() == "nccl":
        on_device = values.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device)
        return on_device.cpu()
    dist.all_reduce(values)
    return values


def raise_together(
    error: Exception | None, kind: type[Exception], *, flagged: bool = False
) -> None:
    """Collective: when any rank has an ``error`` (or, with ``flagged``, the caller has already
    summed the failure flags over the ranks and found one), raise on every rank. A rank raises
    its own error; the others raise ``kind`` with the message of the lowest failing rank. So a
    bad shard met by one rank stops every rank at the same point with the same one-line cause,
    instead of leaving the others waiting in the next collective for a rank that has gone.

    Without ``flagged`` this costs one all-reduce of one number; as is without a process group.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    if not flagged:
        flag = all_reduce_sum(torch.tensor([0.0 if error is None else 1.0]))
        if float(flag[0]) == 0.0:
            return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    failing = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    rank, message = failing[0] if failing else (-1, "another rank failed")
    raise kind(f"{message} (met by rank {rank})" if rank >= 0 else message)
