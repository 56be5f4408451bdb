"""Tracking against a real `mlflow server` on 127.0.0.1, across a resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain.tracking import read_run
from tests.helpers.trained_runs import experiment_file
from tests.train.runs import rank0, run_id, train

pytestmark = [pytest.mark.distributed, pytest.mark.mlflow_server, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share the group: stopped together below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server_log = (tmp_path / "mlflow-server.log").read_text()
                raise AssertionError(f"mlflow server did not come up:\n{server_log}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_resumed_job_continues_the_same_run_on_a_server(
    char_manifest: Path, tmp_path: Path, mlflow_server: str
) -> None:
    config = experiment_file(tmp_path, char_manifest)
    tracking = [f"tracking.uri={mlflow_server}", "tracking.artifact_location=null"]
    train(tmp_path, config, "train.max_steps=4", *tracking)
    first_id = run_id(tmp_path / "checkpoints")
    resumed = train(tmp_path, config, "train.max_steps=8", *tracking)
    assert "resumed from step 4" in rank0(resumed)
    assert run_id(tmp_path / "checkpoints") == first_id

    run = read_run(mlflow_server, first_id)
    assert run["status"] == "FINISHED"
    assert [step for step, _ in run["history"]["train/loss"]] == list(range(1, 9))
    assert {step for step, _ in run["history"]["val/loss"]} == {4, 8}
    assert run["params"]["model.mem_len"] == "16"
    assert run["params"]["train.max_steps"] == "4"
    assert run["tags"]["resumed.changed.train.max_steps"] == "8"
    assert run["tags"]["world_size"] == "2"
    assert len(run["tags"]["dataset_fingerprint"]) == 64
    assert {
        "config/resolved.yaml",
        "config/deepspeed.json",
        "data/manifest_summary.json",
        "data/tokenizer.json",
    } <= set(run["artifacts"])
