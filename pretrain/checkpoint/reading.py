"""Open a committed ZeRO checkpoint written by any world size, in one process, without a
process group: find and verify the step, read its resolved config, consolidate the fp32 weights,
and build an ordinary (unpartitioned) model from them.

`evaluate`, `export` and `generate` start here. Verification comes first, so a missing step, an
uncommitted save, a corrupt file or a directory that is not a checkpoint is reported in words
before DeepSpeed reads a byte. Consolidation uses DeepSpeed's own ``zero_to_fp32`` reader (the
optimizer-state shards hold the fp32 master weights, in DeepSpeed's pickled format) through
`pretrain.distributed.engine.read_zero_checkpoint`; that module, and so DeepSpeed, is imported
when weights are actually read, not when this one is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_pipeline.configuration import ConfigError, load_config
from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint import remote
from pretrain.config import ExperimentConfig
from pretrain.model import LanguageModel, build_model
from pretrain.model.build import DTYPES

logger = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """One verified, committed step: where it is, what wrote it, and the config to use."""

    point: ckpt.ResumePoint
    config: ExperimentConfig  # the saved config, with the caller's overrides applied
    saved_config: ExperimentConfig  # exactly as the training run resolved it

    @property
    def step(self) -> int:
        return self.point.step

    @property
    def directory(self) -> Path:
        return self.point.directory

    @property
    def world_size(self) -> int:
        return int(self.point.marker["world_size"])

    @property
    def run_id(self) -> str | None:
        value = self.point.marker.get("run_id")
        return str(value) if value else None

    @property
    def marker(self) -> dict[str, Any]:
        return self.point.marker


def locate(
    path: str | Path, step: int | None = None, storage_options: dict[str, Any] | None = None
) -> ckpt.ResumePoint:
    """The committed, verified step for ``path``: a checkpoint root (``checkpoint.dir``, newest
    verified step unless ``step``) or one ``step_NNNNNNN`` directory, local or an fsspec URL
    (downloaded into the local cache, `pretrain.checkpoint.remote`)."""
    if remote.is_url(path):
        return _locate_remote(str(path), step, storage_options)
    root, as_step = ckpt.split_path(path)
    if as_step is not None:
        if step is not None and step != as_step:
            raise ckpt.CheckpointError(f"{path} is step {as_step}, but --step {step} was given")
        step = as_step
    path = root
    steps_here = ckpt.step_dirs(path)
    if step is not None:
        point = ckpt.find_resume_point(path, step=step)
        assert point is not None  # an explicit step raises instead of returning None
        return point
    problems: list[str] = []
    failed: dict[int, list[str]] = {}
    point = ckpt.find_resume_point(path, report=problems.append, failed=failed)
    if point is None:
        if failed:
            raise ckpt.unusable_steps_error(path, failed)
        uncommitted = [str(p.name) for _, p in steps_here if not (p / ckpt.MARKER).is_file()]
        raise ckpt.CheckpointError(
            f"{path} has no usable checkpoint: only uncommitted saves ({', '.join(uncommitted)}), "
            "which did not finish"
        )
    for line in problems:
        logger.warning("%s", line)
    return point


def _locate_remote(
    url: str, step: int | None, storage_options: dict[str, Any] | None
) -> ckpt.ResumePoint:
    root, as_step = remote.split_url(url)
    if as_step is not None:
        if step is not None and step != as_step:
            raise ckpt.CheckpointError(f"{url} is step {as_step}, but --step {step} was given")
        step = as_step
    store = remote.RemoteRoot(root, storage_options)
    try:
        steps = store.steps()
    except Exception as err:  # any fsspec backend's failure to list means the same here
        raise ckpt.CheckpointError(
            f"cannot list {root} ({type(err).__name__}: {err}); check the URL and --storage-options"
        ) from None
    if not steps:
        raise ckpt.CheckpointError(f"{root} holds no step_NNNNNNN checkpoints")
    if step is not None:
        point = store.find_resume_point(step=step)
        assert point is not None  # an explicit step raises instead of returning None
        return point
    problems: list[str] = []
    failed: dict[int, list[str]] = {}
    point = store.find_resume_point(report=problems.append, failed=failed)
    if point is None:
        if failed:
            raise ckpt.unusable_steps_error(root, failed)
        raise ckpt.CheckpointError(
            f"{root} has no usable checkpoint: only uncommitted saves "
            f"({', '.join(ckpt.step_dir('', s).name for s in steps)}), which did not finish"
        )
    for line in problems:
        logger.warning("%s", line)
    return point


def open_checkpoint(
    path: str | Path,
    step: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    storage_options: dict[str, Any] | None = None,
) -> Checkpoint:
    """Locate and verify the step, and read its config with ``overrides`` applied.

    Overrides may change anything that does not change the weights' shapes (data, segment length,
    batch size, precision, tracking, ``model.mem_len``); other ``model.*`` keys are refused.
    ``storage_options``: fsspec options for a ``path`` on object storage.
    """
    point = locate(path, step, storage_options)
    config_path = point.directory / ckpt.CONFIG_FILE
    try:
        saved = load_config(ExperimentConfig, config_path)
        config = load_config(ExperimentConfig, config_path, list(overrides))
    except ConfigError as err:
        raise ckpt.CheckpointError(f"cannot use the checkpoint's config: {err}") from None
    fixed, _ = ckpt.config_changes(saved, config, at="read")
    if fixed:
        raise ckpt.CheckpointError(
            "these overrides change the architecture the weights were trained for: "
            + "; ".join(fixed)
            + f" (only {', '.join(ckpt.TUNABLE_WHEN_READING)} may change)"
        )
    return Checkpoint(point, config, saved)


def consolidated_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The full fp32 weights, gathered from every rank's shards in this process (CPU)."""
    # DeepSpeed's reader (through the engine, the one module that imports DeepSpeed): the shards
    # are DeepSpeed pickles, so nothing lighter can read them. No process group, no accelerator.
    from pretrain.distributed.engine import read_zero_checkpoint

    try:
        state = read_zero_checkpoint(str(checkpoint.directory.parent), checkpoint.directory.name)
    except Exception as err:  # DeepSpeed's reader of its own pickles: any failure means the same
        raise ckpt.CheckpointError(
            f"cannot read the DeepSpeed shards of {checkpoint.directory} "
            f"({type(err).__name__}: {err}); they pass the commit's hashes, so they were written "
            "unreadable (another DeepSpeed version?) or the commit marker was rewritten"
        ) from None
    return dict(state)


def model_from_state(
    config: ExperimentConfig, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> LanguageModel:
    """An eval-mode model of ``config.model`` holding ``state`` (tied weights stay tied)."""
    model = build_model(config.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ckpt.CheckpointError(
            f"the weights do not fit the config's model: missing {missing}, unexpected {unexpected}"
        )
    return model.to(dtype).eval()


def load_model(checkpoint: Checkpoint, precision: str | None = None) -> LanguageModel:
    """The checkpoint's model in ``precision`` (default: the precision it trained in)."""
    name = precision or checkpoint.config.engine.precision
    return model_from_state(checkpoint.config, consolidated_state_dict(checkpoint), DTYPES[name])
