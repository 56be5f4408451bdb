"""prepare writing to S3: moto's standalone server on 127.0.0.1 (started here on a free port and
stopped by its own pid, as s3fs's own tests do)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_pipeline.configuration import to_dict
from data_pipeline.prepare import prepare
from data_pipeline.schemas import PrepareConfig
from data_pipeline.verify import verify

from .conftest import CORPORA, cli, cli_env

pytestmark = pytest.mark.s3
s3fs = pytest.importorskip("s3fs", reason="s3fs is needed to talk to the moto S3 server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, Any]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server did not start")
                time.sleep(0.1)
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint},
        }
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("datasets")
        yield options
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def objects(options: dict[str, Any], prefix: str) -> dict[str, str]:
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    found: dict[str, str] = {}
    for key in fs.find(prefix):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".tar"):
            found[name] = hashlib.sha256(fs.cat_file(key)).hexdigest()
    return found


def test_prepare_writes_shards_and_manifest_to_s3(
    recipe: Callable[..., PrepareConfig], s3_options: dict[str, Any]
) -> None:
    cfg = recipe(output="s3://datasets/clean", storage_options=s3_options, shard_bytes=131072)
    result = prepare(cfg, workers=2)
    assert result.fingerprint is not None
    fs = s3fs.S3FileSystem(**s3_options, skip_instance_cache=True)
    manifest = json.loads(fs.cat_file("datasets/clean/manifest.json"))
    listed = {s["name"]: s["sha256"] for sp in manifest["splits"].values() for s in sp["shards"]}
    assert objects(s3_options, "datasets/clean") == listed and len(listed) > 3
    assert verify("s3://datasets/clean", s3_options) == {}
    # Storage options (here the credentials and endpoint) are not written next to the data...
    assert "storage_options" not in manifest["config"]
    assert s3_options["client_kwargs"]["endpoint_url"] not in json.dumps(manifest)
    # ...nor part of the recipe: other options (a rotated key would be one) reach the same
    # output, which is recognised as done.
    rotated = recipe(
        output="s3://datasets/clean",
        storage_options={**s3_options, "default_block_size": 1 << 20},
        shard_bytes=131072,
    )
    again = prepare(rotated, workers=1)
    assert again.units_run == 0 and again.fingerprint == result.fingerprint


@pytest.mark.slow
def test_interrupted_upload_leaves_no_object_under_a_final_key(
    recipe: Callable[..., PrepareConfig], s3_options: dict[str, Any], tmp_path: Path
) -> None:
    source = str(CORPORA / "tinyshakespeare" / "input.txt")
    clean = recipe(
        source={"paths": [source]},
        output="s3://datasets/ref",
        storage_options=s3_options,
        unit_bytes=32768,
        chunk_len=256,
        shard_bytes=262144,
    )
    prepare(clean, workers=2)
    reference = objects(s3_options, "datasets/ref")
    cfg = recipe(
        source={"paths": [source]},
        output="s3://datasets/killed",
        storage_options=s3_options,
        unit_bytes=32768,
        chunk_len=256,
        shard_bytes=262144,
    )
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    proc = subprocess.Popen(
        cli("prepare", str(config_file), "--workers", "2"),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    fs = s3fs.S3FileSystem(**s3_options, skip_instance_cache=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if len(fs.find("datasets/killed/_units")) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # uploads in flight die with the workers
    proc.wait(timeout=30)
    partial = objects(s3_options, "datasets/killed")
    assert partial and not fs.exists("datasets/killed/manifest.json")
    for name, digest in partial.items():
        assert reference[name] == digest, f"{name} under its final key is not the complete shard"
    prepare(cfg, workers=2)
    assert objects(s3_options, "datasets/killed") == reference
