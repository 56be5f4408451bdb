"""MLflow tracking against a real local store: params, tags, metrics, artifacts, resume, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.tracking import (
    REDACTED,
    RESUMED_FROM_TAG,
    Tracker,
    create_tracker,
    read_run,
    redact,
)
from tests.conftest import tiny_experiment


def test_rank_zero_logs_a_complete_run(tmp_path: Path) -> None:
    config = tiny_experiment(tmp_path, "data.manifest=s3://AKIAEXAMPLE:hunter2@bucket/m.json")
    tracker = create_tracker(
        config, rank=0, tags={"dataset_fingerprint": "f00d", "world_size": "2"}
    )
    assert tracker.run_id is not None
    tracker.log_metrics({"train/loss": 3.5, "train/lr": 1e-3}, step=1)
    tracker.log_metrics({"train/loss": 2.5}, step=2)
    tracker.finish()
    uri = config.tracking.uri
    assert uri is not None
    run = read_run(uri, tracker.run_id)
    assert run["status"] == "FINISHED"
    assert run["params"]["model.d_model"] == "32"
    assert run["params"]["train.betas"] == "[0.9, 0.95]"
    assert run["tags"]["dataset_fingerprint"] == "f00d"
    assert "version.torch" in run["tags"] and "code_version" in run["tags"]
    assert run["history"]["train/loss"] == [(1, 3.5), (2, 2.5)]
    assert "config/resolved.yaml" in run["artifacts"]
    # The credential in the manifest URL never reaches the store.
    assert run["params"]["data.manifest"] == f"s3://{REDACTED}@bucket/m.json"
    assert "hunter2" not in str(run)


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    config = tiny_experiment(tmp_path)
    first = create_tracker(config, rank=0)
    first.log_metrics({"train/loss": 3.0}, step=1)
    first.finish("KILLED")
    resumed_config = tiny_experiment(tmp_path, "train.max_steps=8")
    again = create_tracker(resumed_config, rank=0, run_id=first.run_id)
    again.log_metrics({"train/loss": 2.0}, step=2)
    assert again.run_id == first.run_id
    uri = config.tracking.uri
    assert uri is not None and again.run_id is not None
    run = read_run(uri, again.run_id)
    assert run["status"] == "RUNNING"
    assert run["history"]["train/loss"] == [(1, 3.0), (2, 2.0)]
    assert run["params"]["train.max_steps"] == "4"  # params are immutable in MLflow...
    assert run["tags"]["resumed.changed.train.max_steps"] == "8"  # ...so the change is a tag
    again.finish("FAILED")
    assert read_run(uri, again.run_id)["status"] == "FAILED"


def test_a_checkpoints_run_missing_from_the_store_continues_in_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint directory copied from another machine names a run this store lacks."""
    config = tiny_experiment(tmp_path)
    missing = "0123456789abcdef0123456789abcdef"
    tracker = create_tracker(config, rank=0, run_id=missing)
    assert tracker.run_id is not None and tracker.run_id != missing
    assert f"MLflow run {missing} is not in the tracking store" in caplog.text
    uri = config.tracking.uri
    assert uri is not None
    assert read_run(uri, tracker.run_id)["tags"][RESUMED_FROM_TAG] == missing


def test_other_ranks_record_nothing(tmp_path: Path) -> None:
    config = tiny_experiment(tmp_path)
    tracker = create_tracker(config, rank=1)
    assert type(tracker) is Tracker and tracker.run_id is None
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data.manifest", "https://user:pw@host/x", f"https://{REDACTED}@host/x"),
        ("tracking.api_token", "abc", REDACTED),
        ("s3.secret_access_key", "abc", REDACTED),
        ("model.d_model", 32, 32),
        ("data.manifest", "s3://bucket/manifest.json", "s3://bucket/manifest.json"),
    ],
)
def test_redact(key: str, value: object, expected: object) -> None:
    assert redact(key, value) == expected
