"""Reading manifest and shards from S3 (moto's standalone server on 127.0.0.1) via s3fs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pretrain.loader import TrainLoader
from tests.helpers.moto_server import moto_server
from tests.loader.helpers import make_loader
from tests.loader.shard_fixture import BuiltDataset

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install '.[s3]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install '.[dev]')")


@pytest.fixture
def moto_endpoint(tmp_path: Path) -> Iterator[str]:
    with moto_server(tmp_path) as endpoint:
        yield endpoint


@pytest.mark.s3
def test_loader_reads_from_s3(dataset: BuiltDataset, moto_endpoint: str) -> None:
    import boto3
    import s3fs

    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", **credentials
    ).create_bucket(Bucket="shards")
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(dataset.root) + "/", "shards/ds/", recursive=True)
    assert fs.exists("shards/ds/manifest.json")

    with make_loader(dataset, objective="mlm") as local:
        want = [local.next_step() for _ in range(3)]
    with TrainLoader(
        "s3://shards/ds/manifest.json",
        rank=0,
        world_size=1,
        micro_batch_size=2,
        grad_accum=2,
        seq_len=24,
        objective="mlm",
        seed=7,
        storage_options=options,
    ) as from_s3:
        assert from_s3.fingerprint == local.fingerprint  # the same manifest bytes
        got = [from_s3.next_step() for _ in range(3)]
    for a, b in zip(want, got, strict=True):
        for mb_a, mb_b in zip(a, b, strict=True):
            assert all(torch.equal(mb_a[k], mb_b[k]) for k in mb_a)
