"""moto's standalone S3 server on 127.0.0.1, started as a subprocess on a free port and stopped
by its own process group (never by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pretrain.distributed.process_group import free_port


@contextmanager
def moto_server(logdir: Path) -> Iterator[str]:
    """The server's endpoint URL while the block runs."""
    port = free_port()
    log_path = logdir / "moto.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start: {log_path.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own server's process group only
        proc.wait(timeout=10)
        log.close()


def s3_options(endpoint: str) -> dict[str, Any]:
    """s3fs options for the moto server (its fixed test credentials)."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    options = s3_options(endpoint)
    boto3.client(
        "s3",
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
        **options["client_kwargs"],
    ).create_bucket(Bucket=name)
