"""The loop of a spawned prepare worker: run the units the parent sends over a pipe.

Kept apart from `prepare` so that a worker imports only what running a unit needs (the reader,
tokenizer, packer and local storage; no fsspec for local files, no config machinery of its own:
`spawn` still imports the caller's main module).
From the parent: the `Tokenizer` first, then a `WorkUnit` to run next, or ``None``: no more
work. To the parent: ``("progress", documents, tokens, bytes_in)``, ``("done", unit)`` once a
unit's marker is committed, ``("error", exception)``, ``("exit",)``.
"""

from __future__ import annotations

import pickle
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from data_pipeline.schemas import PrepareConfig
from data_pipeline.storage import Committer, Output
from data_pipeline.tokenizer import Tokenizer, single_threaded_env
from data_pipeline.unit_job import run_unit

REPORT_EVERY_S = 1.0


def worker_main(
    conn: Connection,
    cfg: PrepareConfig,
    out: Output,
    config_hash: str,
    keep_rejected: str | None = None,
) -> None:
    single_threaded_env()
    lock = threading.Lock()  # the committer's thread sends "done" on the same pipe

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    pending = [0, 0, 0]
    last = [time.monotonic()]

    def report(docs: int, tokens: int, bytes_in: int) -> None:
        pending[0] += docs
        pending[1] += tokens
        pending[2] += bytes_in
        if bytes_in or time.monotonic() - last[0] > REPORT_EVERY_S:
            send(("progress", *pending))
            pending[:] = [0, 0, 0]
            last[0] = time.monotonic()

    committer = Committer(out, cfg.shard_bytes)
    try:
        tok: Tokenizer = conn.recv()
        while (unit := conn.recv()) is not None:

            def done(index: int = unit.index) -> None:
                send(("done", index))

            run_unit(unit, cfg, tok, out, config_hash, report, committer, done, keep_rejected)
        committer.wait()
        send(("exit",))
    except BaseException as err:
        try:
            try:
                send(("error", err))
            except (pickle.PicklingError, TypeError, AttributeError):  # send its text instead
                send(("error", RuntimeError(traceback.format_exc())))
        except OSError:
            pass  # the parent is gone
        raise SystemExit(1) from None
