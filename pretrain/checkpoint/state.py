"""Saving and resuming a training run: DeepSpeed shards + per-rank trainer state, sealed by the
commit protocol of `pretrain.checkpoint.layout`.

Every rank writes its own files; rank 0 seals the step only after a barrier, so `COMMITTED` exists
only once every rank's files are complete. Rank 0 chooses the step to resume from (hash checks
happen once) and broadcasts it, or the reason there is none to use, so all ranks load the same
one or stop with the same error.

A run never destroys a checkpoint it did not write: each run has a `Timeline` (an id recorded in
every step it commits, carried over when it resumes), and prunes only the steps of its own
timeline, up to the step it resumed and those it wrote since. A committed step of another
timeline where this run saves is moved aside, not deleted (`layout.make_room`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor

from data_pipeline.configuration import ConfigError, load_config, save_config
from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint import remote, universal
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


@dataclass
class Timeline:
    """Which steps of ``checkpoint.dir`` are this run's (rank 0's bookkeeping): ``id`` is
    recorded in every step it commits; ``own`` holds the committed steps it may prune, those
    of its timeline up to the step it resumed and those it wrote since."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    own: set[int] = field(default_factory=set)


def remote_root(config: ExperimentConfig) -> remote.RemoteRoot | None:
    """The object-storage root of ``checkpoint.dir`` (None: a local directory)."""
    cfg = config.checkpoint
    if not remote.is_url(cfg.dir):
        return None
    return remote.RemoteRoot(cfg.dir, cfg.storage_options, cfg.local_dir)


def _local_root(config: ExperimentConfig) -> Path:
    """Where this node writes a save: ``checkpoint.dir`` itself, or the staging directory of a
    URL ``checkpoint.dir``."""
    store = remote_root(config)
    return Path(config.checkpoint.dir) if store is None else store.local


def start_timeline(config: ExperimentConfig, point: ckpt.ResumePoint | None) -> Timeline:
    """The timeline of a run that resumes ``point`` (None: a fresh start). Rank 0's: the
    listing of an object store is not repeated by every rank."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return Timeline()  # unused: only rank 0 commits and prunes
    store = remote_root(config)
    root = _local_root(config)
    if point is None:
        committed = ckpt.committed_steps(root) if store is None else store.committed_steps()
        if committed:
            logger.warning(
                "train.resume=never: starting afresh in %s, which holds committed steps (%s) of "
                "an earlier run; this run never prunes them, and one it reaches by step number "
                "is moved aside as step_NNNNNNN.superseded",
                config.checkpoint.dir,
                ", ".join(str(s) for s in committed),
            )
        return Timeline()
    recorded = point.marker.get("timeline")
    same_dir = point.directory.parent.resolve() == root.resolve()
    if not same_dir:
        own: set[int] = set()
    elif store is None:
        own = ckpt.timeline_steps(root, recorded, point.step)
    else:
        own = store.timeline_steps(recorded, point.step)
    return Timeline(id=str(recorded) if recorded else uuid.uuid4().hex, own=own)


def _shareable(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` without its fsspec options: they say how to reach storage (often with
    credentials), not what the run is, and a checkpoint may be copied or shared."""
    clean = copy.deepcopy(config)
    clean.checkpoint.storage_options = {}
    clean.data.storage_options = {}
    return clean


def save(
    engine: eng.Engine,
    config: ExperimentConfig,
    state: TrainerState,
    *,
    faults: Faults,
    extra: dict[str, Any],
    timeline: Timeline,
) -> Path:
    store = remote_root(config)
    root = _local_root(config)
    directory = ckpt.step_dir(root, state.step)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        _make_room(config, store, state.step, timeline)
    if store is not None and _local_rank() == 0:
        shutil.rmtree(directory, ignore_errors=True)  # this node's leftover of a killed save
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    written = eng.save_checkpoint(
        engine.model, str(root), directory.name, (ckpt.DIGEST, ckpt.new_digest)
    )
    faults.die_in_save(state.step, rank)
    ckpt.save_trainer_state(ckpt.trainer_state_path(directory, rank), state.to_dict())
    if rank == 0:
        save_config(_shareable(config), directory / ckpt.CONFIG_FILE)
        (directory / ckpt.DS_CONFIG_FILE).write_text(json.dumps(engine.ds_config, indent=1))
    # Each rank hashes the files it wrote, all at once: DeepSpeed's shards as they were written,
    # its small files after; rank 0 no longer reads everyone's after a barrier. Gathering the
    # digests is also the point where every rank's files are known to be complete, before the
    # step is sealed.
    known = {str(Path(path).relative_to(directory)): entry for path, entry in written.items()}
    mine = ckpt.hash_files(directory, rank=rank, known=known)
    digests: list[dict[str, Any] | None] = [None] * world_size
    dist.all_gather_object(digests, mine)
    if store is not None:
        _upload(store, directory, mine, faults=faults, step=state.step)
    if rank == 0:
        files = {name: entry for part in digests for name, entry in (part or {}).items()}
        extra = {**extra, "timeline": timeline.id}
        fields = {"step": state.step, "world_size": world_size, **extra}
        timeline.own.add(state.step)
        if store is None:
            ckpt.commit(directory, step=state.step, world_size=world_size, extra=extra, files=files)
            ckpt.prune(root, config.checkpoint.keep_last, timeline.own)
            timeline.own.intersection_update(ckpt.committed_steps(root))
        else:
            store.commit(state.step, ckpt.marker_bytes(fields, files))
            # The staging copy becomes the local cache of the step: sealed like the remote one,
            # and the only step kept on local disk.
            ckpt.seal(directory, fields, files)
            ckpt.prune(root, 1)
            store.prune(config.checkpoint.keep_last, timeline.own)
            timeline.own.intersection_update(store.committed_steps())
    dist.barrier()
    return directory


def _make_room(
    config: ExperimentConfig, store: remote.RemoteRoot | None, step: int, timeline: Timeline
) -> None:
    """Rank 0, before a save: remove unfinished saves, and move aside a committed step of the
    same number that is not this run's (another timeline's, or one that failed verification
    and was skipped at resume): it is kept under another name, never deleted."""
    if store is None:
        root = Path(config.checkpoint.dir)
        ckpt.remove_unfinished(root)  # an earlier crash's partial save, never committed
        moved = ckpt.make_room(root, step, timeline.own)
        root.mkdir(parents=True, exist_ok=True)
        aside = None if moved is None else moved.name
    else:
        store.remove_unfinished()  # an earlier crash's partial upload, never committed
        aside = store.make_room(step, timeline.own)
    if aside is not None:
        logger.warning(
            "checkpoint step %d in %s was not written by this run: moved aside to %s "
            "(not deleted; remove it once it is not needed)",
            step,
            config.checkpoint.dir,
            aside,
        )


def _upload(
    store: remote.RemoteRoot,
    directory: Path,
    mine: dict[str, Any],
    *,
    faults: Faults,
    step: int,
) -> None:
    """Every rank uploads the files it wrote; the step may be committed only once every rank
    has confirmed, so a failure anywhere stops every rank with the same error, the step
    uncommitted and the previous one still the resume point."""
    rank = dist.get_rank()
    error = None
    try:
        store.upload(directory, mine, faults=faults, step=step, rank=rank)
    except Exception as err:  # any fsspec backend's failure: reported, then raised everywhere
        error = f"{type(err).__name__}: {err}"
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, error)
    failed = [(r, e) for r, e in enumerate(outcomes) if e]
    if failed:
        r, e = failed[0]
        raise ckpt.CheckpointError(
            f"checkpoint step {step} was not committed: the upload to {store.url} failed on "
            f"rank {r} ({e}){f' and {len(failed) - 1} more ranks' if len(failed) > 1 else ''}; "
            "the previous committed step stays the resume point"
        )


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", dist.get_rank()))


def _check_writable(config: ExperimentConfig) -> None:
    """checkpoint.dir is a directory (or object-storage root) this process can write (checked
    before the engine is built, not at the first save, after the first steps' work)."""
    store = remote_root(config)
    if store is not None:
        store.check_writable()
        return
    root = Path(config.checkpoint.dir)
    if root.exists() and not root.is_dir():
        raise ckpt.CheckpointError(f"checkpoint.dir {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ckpt.CheckpointError(f"checkpoint.dir {root} cannot be created: {err}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ckpt.CheckpointError(f"checkpoint.dir {root} is not writable")


def _pick_resume_point(config: ExperimentConfig) -> ckpt.ResumePoint | None:
    _check_writable(config)
    resume = config.train.resume
    if resume == "auto":
        root = config.checkpoint.dir
        store = remote_root(config)
        reports: list[str] = []
        failed: dict[int, list[str]] = {}
        if store is None:
            point = ckpt.find_resume_point(root, report=reports.append, failed=failed)
        else:
            point = store.find_resume_point(report=reports.append, failed=failed)
        if point is None and failed:
            # Starting afresh would train over, then prune, steps that may still be recovered.
            err = ckpt.unusable_steps_error(root, failed)
            raise ckpt.CheckpointError(
                f"{err}. Repair or move them, or set train.resume=never to start afresh beside "
                "them (they are kept)"
            )
        for line in reports:
            logger.warning("%s", line)
        return point
    if remote.is_url(resume):
        url, step = remote.split_url(resume)
        if step is None:
            raise ckpt.CheckpointError(
                f"train.resume={resume} is not a checkpoint step (<checkpoint dir>/step_NNNNNNN)"
            )
        cfg = config.checkpoint
        return remote.RemoteRoot(url, cfg.storage_options, cfg.local_dir).find_resume_point(
            step=step
        )
    step_root, step = ckpt.split_path(resume)
    if step is None:
        raise ckpt.CheckpointError(
            f"train.resume={resume} is not a checkpoint step directory (step_NNNNNNN)"
        )
    return ckpt.find_resume_point(step_root, step=step)


def choose_resume_point(config: ExperimentConfig) -> ckpt.ResumePoint | None:
    """Rank 0 picks (and verifies) the step; every rank gets the same answer, or the same
    `CheckpointError` (so no rank waits for one that has stopped). From object storage, the
    first rank of every other node then downloads and verifies the same step."""
    choice: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            if config.train.resume == "never":
                _check_writable(config)
                point = None
            else:
                point = _pick_resume_point(config)
        except ckpt.CheckpointError as err:
            choice[0] = ("error", str(err))
        else:
            choice[0] = None if point is None else (point.step, str(point.directory), point.marker)
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    if choice[0][0] == "error":
        raise ckpt.CheckpointError(choice[0][1])
    step, directory, marker = choice[0]
    point = ckpt.ResumePoint(step, Path(directory), marker)
    if remote.is_url(config.checkpoint.dir) or remote.is_url(config.train.resume):
        _fetch_on_every_node(config, point)
    return point


def _fetch_on_every_node(config: ExperimentConfig, point: ckpt.ResumePoint) -> None:
    """Make ``point`` (a step rank 0 downloaded) present on every node: the first rank of each
    other node downloads and verifies it too; any failure stops every rank."""
    problem = None
    missing = not (point.directory / ckpt.MARKER).is_file()
    if dist.get_rank() != 0 and _local_rank() == 0 and missing:
        resume = config.train.resume
        url = config.checkpoint.dir if not remote.is_url(resume) else remote.split_url(resume)[0]
        cfg = config.checkpoint
        store = remote.RemoteRoot(url, cfg.storage_options, cfg.local_dir)
        try:
            store.find_resume_point(step=point.step)
        except ckpt.CheckpointError as err:
            problem = f"rank {dist.get_rank()}: {err}"
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    found = [p for p in problems if p]
    if found:
        raise ckpt.CheckpointError(f"cannot download step {point.step}: {found[0]}")


def check_compatible(point: ckpt.ResumePoint, config: ExperimentConfig) -> list[str]:
    """Refuse a checkpoint whose run cannot continue as this config; return allowed changes.

    Called before any rank loads weights, so a refusal costs nothing."""
    try:
        saved = load_config(ExperimentConfig, point.directory / ckpt.CONFIG_FILE)
    except ConfigError as err:
        raise ckpt.CheckpointError(f"cannot read the checkpoint's config: {err}") from None
    fatal, allowed = ckpt.config_changes(saved, config, at="resume")
    if fatal:
        raise ckpt.CheckpointError(
            f"the checkpoint at {point.directory} was written by a run that differs in ways "
            "that cannot be resumed: "
            + "; ".join(fatal)
            + ". Start a new run (new checkpoint.dir or train.resume=never) or undo the change."
        )
    saved_world, world = int(point.marker["world_size"]), dist.get_world_size()
    before = _streams(saved.train.micro_batch_size, saved.train.grad_accum, saved_world)
    after = _streams(config.train.micro_batch_size, config.train.grad_accum, world)
    if before != after and not config.train.allow_new_global_batch:
        # The loader's streams are global (stream g reads a fixed range of each epoch), so the
        # data order carries over exactly only while their number does.
        raise ckpt.CheckpointError(
            f"the checkpoint at {point.directory} was trained with a global batch of {before} "
            f"sequences ({_shape(saved.train, saved_world)}), this run has {after} "
            f"({_shape(config.train, world)}): resuming with another global batch is refused. "
            "Keep world_size x micro_batch_size x grad_accum the same (e.g. double grad_accum "
            "when halving the ranks), or set train.allow_new_global_batch=true to deal the "
            "epoch's unread samples out to the new batch's streams."
        )
    if before != after:
        allowed.insert(0, f"global batch: {before} -> {after} sequences")
    if saved_world != world:
        allowed.insert(0, f"world size: {saved_world} -> {world}")
    return allowed


def _streams(micro_batch_size: int, grad_accum: int, world_size: int) -> int:
    return micro_batch_size * grad_accum * world_size


def _shape(train: Any, world_size: int) -> str:
    return (
        f"world size {world_size} x micro_batch_size {train.micro_batch_size} x "
        f"grad_accum {train.grad_accum}"
    )


def load(
    engine: eng.Engine,
    point: ckpt.ResumePoint,
    config: ExperimentConfig,
    faults: Faults | None = None,
) -> TrainerState:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    saved_world = int(point.marker["world_size"])
    if saved_world == world_size or not _partitioned(point):
        eng.load_checkpoint(engine.model, str(point.directory.parent), point.directory.name)
    else:
        # ZeRO's partitions are cut for the saved world size: go through DeepSpeed's universal
        # checkpoint, converted once by rank 0 while the others wait.
        universal_dir = _broadcast_result(lambda: str(universal.ensure_universal(point, faults)))
        eng.load_universal_checkpoint(
            engine.model, str(Path(universal_dir).parent), Path(universal_dir).name
        )
    if saved_world == world_size:
        raw = ckpt.load_trainer_state(ckpt.trainer_state_path(point.directory, rank))
        streams = _streams(config.train.micro_batch_size, config.train.grad_accum, world_size)
        if raw["loader"].get("num_streams", streams) == streams:
            return TrainerState(**raw)
    # Another world size or global batch: the loader re-derives positions from every rank's
    # streams; memory rows belong to streams that now live elsewhere, so memory restarts empty.
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
        # A loader whose state is global (every rank holds the same, e.g. fine-tuning's
        # position in its example order) needs no merging.
        loader=(
            head["loader"]
            if head["loader"].get("global")
            else merge_states([s["loader"] for s in states])
        ),
        mems=[],
        rng=head["rng"],
        run_id=head["run_id"],
    )


def _partitioned(point: ckpt.ResumePoint) -> bool:
    """Whether the step holds ZeRO partitions (stage 1-3); without ZeRO every rank saved and
    loads the whole model and optimizer, at any world size."""
    return any(point.directory.glob("*zero_pp_rank_*"))


def _broadcast_result(work: Callable[[], str]) -> str:
    """``work()`` on rank 0, its answer on every rank; its error raised on every rank too, so no
    rank is left waiting for a conversion that failed."""
    box: list[tuple[str, str] | None] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", work())
        except Exception as err:
            box[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    assert box[0] is not None
    status, value = box[0]
    if status == "error":
        raise ckpt.CheckpointError(f"the universal checkpoint conversion failed on rank 0: {value}")
    return value
