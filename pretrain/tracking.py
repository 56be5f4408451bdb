"""Experiment tracking with MLflow: the only module that imports MLflow.

Only rank 0 talks to the tracking store; other ranks get a tracker that does nothing, so the
training loop calls the same methods everywhere. The run id is saved in every checkpoint: a resumed
job continues the same MLflow run instead of starting a new one.

Nothing secret reaches the store: parameter values that look like credentials (URL user-info,
keys named *secret*, *token*, *password*, *key*) are redacted before logging.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from data_pipeline.configuration import flatten, to_dict, to_yaml, without_storage_options
from data_pipeline.console import route_library_loggers
from pretrain.config import ExperimentConfig

route_library_loggers()  # MLflow's import set up a handler of its own

# MLflow caps a param value at 6000 characters and a batch at 100 params / 1000 metrics.
_MAX_PARAM_CHARS = 6000
_PARAM_BATCH = 100
_METRIC_BATCH = 1000
_SECRET_KEY = re.compile(r"(secret|token|password|passwd|credential|api_?key|access_?key)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)

REDACTED = "***"
# Set on a run that continues a checkpoint whose own run is not in this tracking store.
RESUMED_FROM_TAG = "mnemos.resumed_from_run_id"

logger = logging.getLogger(__name__)


def redact(key: str, value: Any) -> Any:
    """A value safe to log: credentials in URLs and secret-named keys are replaced."""
    if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)
    return value


def code_version() -> str:
    """The git commit of the code, with '-dirty' when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            raise OSError(commit.stderr)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"mnemos=={version('mnemos')}"
        except PackageNotFoundError:
            return "unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "deepspeed", "mlflow", "webdataset", "sentencepiece", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Tracker:
    """The training loop's view of tracking. This base class is what non-zero ranks (and runs
    with ``tracking.enabled: false``) use: every call is accepted and nothing is recorded."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(Tracker):
    """Rank 0's tracker: one MLflow run, created or resumed."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        # None falls through to $MLFLOW_TRACKING_URI, then MLflow's own local default store.
        self.tracking_uri: str = config.tracking.uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id is not None and not self._exists(run_id):
            # A checkpoint copied from elsewhere, or a tracking.uri changed since: the run goes
            # on, in a new MLflow run that names the old one.
            logger.warning(
                "the checkpoint's MLflow run %s is not in the tracking store %s: logging to a "
                "new run (tagged %s=%s)",
                run_id,
                self.tracking_uri,
                RESUMED_FROM_TAG,
                run_id,
            )
            tags = {**(tags or {}), RESUMED_FROM_TAG: run_id}
            run_id = None
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(config.tracking.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(
                    config.tracking.experiment, artifact_location=config.tracking.artifact_location
                )
            )
            run = self.client.create_run(
                experiment_id, run_name=config.tracking.run_name or config.name
            )
            self.run_id = run.info.run_id
        self._log_params(config)
        self.set_tags(
            {
                "code_version": code_version(),
                "host": socket.gethostname(),
                **{f"version.{k}": v for k, v in library_versions().items()},
                **(tags or {}),
            }
        )
        # fsspec options (endpoints, credentials) say how storage is reached: kept out.
        self.log_text(to_yaml(without_storage_options(to_dict(config))), "config/resolved.yaml")

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _log_params(self, config: ExperimentConfig) -> None:
        assert self.run_id is not None
        already = self.client.get_run(self.run_id).data.params
        params = []
        changed = {}
        for key, value in flatten(config).items():
            if ".storage_options." in key:
                continue  # how storage is reached (credentials), not a parameter of the run
            text = (
                json.dumps(redact(key, value)) if not isinstance(value, str) else redact(key, value)
            )
            text = str(text)[:_MAX_PARAM_CHARS]
            if key not in already:
                params.append(Param(key, text))
            elif already[key] != text:
                # MLflow params are immutable; a resumed run that changed a value says so in a tag.
                changed[f"resumed.changed.{key}"] = text
        for start in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _PARAM_BATCH])
        if changed:
            self.set_tags(changed)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        assert self.run_id is not None
        batch = [RunTag(k, str(redact(k, v))[:_MAX_PARAM_CHARS]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        assert self.run_id is not None
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), _METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + _METRIC_BATCH])

    def log_text(self, text: str, artifact_file: str) -> None:
        assert self.run_id is not None
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        assert self.run_id is not None
        self.client.set_terminated(self.run_id, status=status)


def create_tracker(
    config: ExperimentConfig,
    *,
    rank: int,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    if rank != 0 or not config.tracking.enabled:
        return Tracker()
    return MlflowTracker(config, run_id=run_id, tags=tags)


# --------------------------------------------------------------------------------------------
# After training: evaluation runs and model registration (pretrain evaluate / export)
# --------------------------------------------------------------------------------------------

TRAINING_RUN_TAG = "mnemos.training_run_id"


def _store(config: ExperimentConfig) -> tuple[MlflowClient, str]:
    """A client for the configured store and the id of the configured experiment."""
    client = MlflowClient(tracking_uri=config.tracking.uri or mlflow.get_tracking_uri())
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    created = client.create_experiment(
        config.tracking.experiment, artifact_location=config.tracking.artifact_location
    )
    return client, created


def _linked_run(
    config: ExperimentConfig,
    kind: Literal["evaluate", "export"],
    step: int,
    training_run_id: str | None,
) -> tuple[MlflowClient, str]:
    """A new run about checkpoint ``step`` in the config's store, tagged with the training run's
    id; a child of it in MLflow's UI when the training run is in this store (it may not be:
    checkpoints travel, tracking stores do not). Returns (client, run id)."""
    from mlflow.exceptions import MlflowException

    client, experiment_id = _store(config)
    all_tags = {
        "code_version": code_version(),
        "host": socket.gethostname(),
        "mnemos.kind": {"evaluate": "evaluation", "export": "export"}[kind],
        "mnemos.checkpoint_step": str(step),
    }
    if training_run_id:
        all_tags[TRAINING_RUN_TAG] = training_run_id
        try:
            client.get_run(training_run_id)
            all_tags["mlflow.parentRunId"] = training_run_id
        except MlflowException:
            pass
    run = client.create_run(experiment_id, run_name=f"{kind} step {step}", tags=all_tags)
    run_id: str = run.info.run_id
    return client, run_id


def log_evaluation(
    config: ExperimentConfig,
    *,
    training_run_id: str | None,
    step: int,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    report: str,
) -> str:
    """Record one evaluation as its own run, linked to the training run by tag; returns its id.
    Metrics are logged at the checkpoint's step, so runs of several checkpoints line up."""
    client, run_id = _linked_run(config, "evaluate", step, training_run_id)
    now = int(time.time() * 1000)
    batch_params = [Param(k, str(redact(k, v))[:_MAX_PARAM_CHARS]) for k, v in params.items()]
    batch_metrics = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for start in range(0, len(batch_params), _PARAM_BATCH):
        client.log_batch(run_id, params=batch_params[start : start + _PARAM_BATCH])
    for start in range(0, len(batch_metrics), _METRIC_BATCH):
        client.log_batch(run_id, metrics=batch_metrics[start : start + _METRIC_BATCH])
    client.log_text(run_id, report, "evaluation.json")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def register_model(
    config: ExperimentConfig,
    *,
    name: str,
    model_dir: str | Path,
    training_run_id: str | None,
    step: int,
) -> tuple[str, str]:
    """Log an MLflow model folder (`pretrain.export.mlflow_model`: an export saved with a
    flavor) as ``model`` in a run linked to the training run, and register it as a new version
    of model ``name``, which ``models:/NAME/VERSION`` then loads. Returns (run id, version)."""
    client, run_id = _linked_run(config, "export", step, training_run_id)
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id, status="FINISHED")
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "already exists" not in str(err).lower():
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    version = client.create_model_version(
        name, source, run_id=run_id, tags={TRAINING_RUN_TAG: training_run_id or ""}
    )
    return run_id, str(version.version)


def read_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """A run read back whole: status, params, tags, latest metrics, each metric's history and
    the artifact paths (what the tests and the GPU suite check a run by)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    artifacts: list[str] = []
    pending = [""]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop() or None):
            (pending if item.is_dir else artifacts).append(item.path)
    return {
        "status": run.info.status,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "artifacts": sorted(artifacts),
        "history": {
            key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in run.data.metrics
        },
    }
