"""Saving and resuming a training run: DeepSpeed shards + per-rank trainer state, sealed by the
commit protocol of `pretrain.checkpoint.layout`.

Every rank writes its own files; rank 0 seals the step only after a barrier, so `COMMITTED` exists
only once every rank's files are complete. Rank 0 chooses the step to resume from (hash checks
happen once) and broadcasts it, so all ranks load the same one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor

from data_pipeline.configuration import ConfigError, load_config, save_config
from pretrain.checkpoint import layout as ckpt
from pretrain.config import ExperimentConfig
from pretrain.distributed import engine as eng
from pretrain.faults import Faults

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """What a rank needs, beyond DeepSpeed's shards, to continue exactly where it stopped."""

    step: int
    tokens_seen: int
    skipped_steps: int
    consecutive_skips: int
    loader: dict[str, Any]
    mems: list[list[Tensor]]  # per micro-batch slot, per layer (B, M, d)
    rng: dict[str, Any]
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def save(
    engine: eng.Engine,
    config: ExperimentConfig,
    state: TrainerState,
    *,
    faults: Faults,
    extra: dict[str, Any],
) -> Path:
    root = Path(config.checkpoint.dir)
    directory = ckpt.step_dir(root, state.step)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        ckpt.remove_unfinished(root)  # an earlier crash's partial save, never committed
        # A committed step of the same number belongs to a timeline this run abandoned (it
        # resumed from an earlier step, e.g. because this one failed verification).
        shutil.rmtree(directory, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    eng.save_checkpoint(engine.model, str(root), directory.name)
    faults.die_in_save(state.step, rank)
    ckpt.save_trainer_state(ckpt.trainer_state_path(directory, rank), state.to_dict())
    if rank == 0:
        save_config(config, directory / ckpt.CONFIG_FILE)
        (directory / ckpt.DS_CONFIG_FILE).write_text(json.dumps(engine.ds_config, indent=1))
    dist.barrier()  # every rank's files are complete before the step is sealed
    if rank == 0:
        ckpt.commit(directory, step=state.step, world_size=world_size, extra=extra)
        ckpt.prune(root, config.checkpoint.keep_last)
    dist.barrier()
    return directory


def choose_resume_point(config: ExperimentConfig) -> ckpt.ResumePoint | None:
    """Rank 0 picks (and verifies) the step; every rank gets the same answer."""
    resume = config.train.resume
    choice: list[Any] = [None]
    if dist.get_rank() == 0 and resume != "never":
        if resume == "auto":
            point = ckpt.find_resume_point(config.checkpoint.dir, report=logger.warning)
        else:
            root, step = ckpt.split_path(resume)
            if step is None:
                raise ckpt.CheckpointError(
                    f"{resume} is not a checkpoint step directory (step_NNNNNNN)"
                )
            point = ckpt.find_resume_point(root, step=step)
        choice[0] = None if point is None else (point.step, str(point.directory), point.marker)
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    step, directory, marker = choice[0]
    return ckpt.ResumePoint(step, Path(directory), marker)


def check_compatible(point: ckpt.ResumePoint, config: ExperimentConfig) -> list[str]:
    """Refuse a checkpoint whose run cannot continue as this config; return allowed changes."""
    try:
        saved = load_config(ExperimentConfig, point.directory / ckpt.CONFIG_FILE)
    except ConfigError as err:
        raise ckpt.CheckpointError(f"cannot read the checkpoint's config: {err}") from None
    fatal, allowed = ckpt.config_changes(saved, config, at="resume")
    if fatal:
        raise ckpt.CheckpointError(
            f"the checkpoint at {point.directory} was written by a run that differs in ways "
            "that cannot be resumed:\n  "
            + "\n  ".join(fatal)
            + "\nStart a new run (new checkpoint.dir or train.resume=never) or undo the change."
        )
    return allowed


def load(engine: eng.Engine, point: ckpt.ResumePoint, config: ExperimentConfig) -> TrainerState:
    eng.load_checkpoint(engine.model, str(point.directory.parent), point.directory.name)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    saved_world = int(point.marker["world_size"])
    if saved_world == world_size:
        raw = ckpt.load_trainer_state(ckpt.trainer_state_path(point.directory, rank))
        return TrainerState(**raw)
    # Another world size: the loader re-derives positions from every rank's streams; memory
    # rows belong to streams that now live elsewhere, so memory restarts empty.
    states = [
        ckpt.load_trainer_state(ckpt.trainer_state_path(point.directory, r))
        for r in range(saved_world)
    ]
    from pretrain.loader import merge_states

    head = states[0]
    return TrainerState(
        step=head["step"],
        tokens_seen=head["tokens_seen"],
        skipped_steps=head["skipped_steps"],
        consecutive_skips=head["consecutive_skips"],
        loader=merge_states([s["loader"] for s in states]),
        mems=[],
        rng=head["rng"],
        run_id=head["run_id"],
    )
