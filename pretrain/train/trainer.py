"""The training loop: `forward_backward` → `train_step` → `train`.

Reads like a recipe: build the engine (model under ZeRO-3), the loaders and the tracker, resume
if a committed checkpoint exists, then step until ``max_steps`` or ``max_tokens``, validating,
logging and checkpointing on schedule.

Two collectives per step keep every rank in agreement: one before the forward passes sums the
step's target tokens (the loss normaliser), one after them sums the loss, the non-finite
count and the preemption flag. So a NaN on one rank or a SIGTERM to one rank is acted on by all
ranks at the same step, and no rank is left waiting in a collective.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from data_pipeline.progress import eta
from pretrain.batch_loss import OBJECTIVES, forward_loss, target_count, to_device
from pretrain.checkpoint import layout as ckpt
from pretrain.checkpoint import state as train_checkpoint
from pretrain.config import ExperimentConfig
from pretrain.distributed import engine as eng
from pretrain.distributed.process_group import all_reduce_sum, raise_together
from pretrain.evaluate.loop import EvalSettings, evaluate_model, weighted_metrics
from pretrain.faults import Faults
from pretrain.loader import Batch, MixtureLoader, ShardError, TrainLoader, ValidationLoader
from pretrain.model import flops_per_token
from pretrain.tracking import Tracker, create_tracker
from pretrain.train.preemption import Preempted, PreemptionFlag
from pretrain.train.schedules import learning_rate

VALIDATION_METRICS = ("loss", "perplexity", "tokens", "bits_per_byte")

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class StepLoader(Protocol):
    """What the loop needs of a training loader: a step's micro-batches and an exact state.
    `TrainLoader` and `MixtureLoader` are ones; fine-tuning brings its own
    (`pretrain.finetune.loader`)."""

    @property
    def fingerprint(self) -> str: ...

    def next_step(self) -> list[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(
        self, state: dict[str, Any], *, allow_new_streams: bool = False
    ) -> None: ...

    def close(self) -> None: ...


@dataclass
class StepResult:
    loss: float  # mean over the step's target tokens, all ranks
    skipped: bool
    preempt: bool
    targets: int
    data_wait_s: float = 0.0
    grad_norm: float = float("nan")
    fp16_overflow: bool = False  # DeepSpeed's loss scaler skipped the update (fp16 only)


class Trainer:
    """One training run. The engine, the loaders and the tracker are built from ``config``
    unless given: benchmarks and tests pass their own (synthetic batches, no validation, a
    tracker they inspect) instead of patching this module. A given tracker is used as is; a
    built one is created when `train` starts, so a resumed run continues its MLflow run."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        engine: eng.Engine | None = None,
        loader: StepLoader | None = None,
        validation: Any = None,  # what `validate` reads: a ValidationLoader unless overridden
        tracker: Tracker | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.config = cfg = config
        self.faults = Faults.from_env() if faults is None else faults
        if engine is None:
            eng.init_distributed(cfg.engine)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.family = cfg.model.family
        self.objective = OBJECTIVES[self.family]
        loader_args: dict[str, Any] = {
            "rank": self.rank,
            "world_size": self.world_size,
            "seq_len": cfg.train.seq_len,
            "objective": self.objective,
            "seed": cfg.data.seed,
            "data_config": cfg.data,
            "expected_vocab_size": cfg.model.vocab_size,
            "storage_options": cfg.data.storage_options,  # shards on S3 etc. (credentials)
        }
        train_args: dict[str, Any] = {
            **loader_args,
            "micro_batch_size": cfg.train.micro_batch_size,
            "grad_accum": cfg.train.grad_accum,
            "mem_len": cfg.model.mem_len,  # data.order auto: shuffled windows when no memory
        }
        if loader is None and validation is None:
            loader, validation = self.own_loaders()
        mixture = cfg.data.mixture
        if not mixture and not cfg.data.manifest and (loader is None or validation is None):
            raise ValueError("data: set data.manifest or data.mixture (neither is set)")
        self.loader: StepLoader
        if loader is not None:
            self.loader = loader
        elif mixture:
            self.loader = MixtureLoader(mixture, **train_args)
        else:
            self.loader = TrainLoader(cfg.data.manifest, **train_args)
        # Validation per source of a mixture (val/<name>/...), besides their weighted total.
        self.validation_sources: dict[str, ValidationLoader] = {}
        self.validation: Any
        if validation is not None:
            self.validation = validation
        elif mixture:
            self.validation_sources = {
                source.name: ValidationLoader(
                    source.manifest, batch_size=cfg.train.micro_batch_size, **loader_args
                )
                for source in mixture
            }
            self.validation = next(iter(self.validation_sources.values()))
        else:
            self.validation = ValidationLoader(
                cfg.data.manifest, batch_size=cfg.train.micro_batch_size, **loader_args
            )
        # The data and the checkpoint to resume are checked before the engine is built (the
        # slow part): a missing manifest or an unusable checkpoint fails in seconds.
        self.resume_point = train_checkpoint.choose_resume_point(cfg)
        self.resume_changes = (
            []
            if self.resume_point is None
            else train_checkpoint.check_compatible(self.resume_point, cfg)
        )
        self.timeline = train_checkpoint.start_timeline(cfg, self.resume_point)
        self.engine = self.build_engine() if engine is None else engine
        self.device = eng.device_of(self.engine.model)
        self.state = train_checkpoint.TrainerState(
            step=0,
            tokens_seen=0,
            skipped_steps=0,
            consecutive_skips=0,
            loader={},
            mems=[[] for _ in range(cfg.train.grad_accum)],
            rng={},
            run_id=None,
        )
        self.preemption = PreemptionFlag()
        self.fp16_overflows = 0
        self._source_epochs: dict[str, float] = {}
        self.loop_started, self.loop_first_step = time.perf_counter(), 0  # set again by train()
        self.tracker: Tracker = Tracker() if tracker is None else tracker
        self.build_tracker = tracker is None
        self.tokens_per_step = (
            cfg.train.micro_batch_size * cfg.train.grad_accum * self.world_size * cfg.train.seq_len
        )
        self.flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)

    def own_loaders(self) -> tuple[StepLoader | None, Any]:
        """(training loader, what `validate` reads) of a trainer that reads other data than
        the config's shards (fine-tuning); called once the process group is joined. None: the
        loaders are built from ``config.data``."""
        return None, None

    def build_engine(self) -> eng.Engine:
        """The model under DeepSpeed (fine-tuning builds another model, with other weights)."""
        return eng.build(self.config)

    # -- one step ---------------------------------------------------------------------------

    def _to_device(self, batch: Batch) -> Batch:
        return to_device(batch, self.device)

    def forward_backward(self, batch: Batch, slot: int, scale: float) -> tuple[float, bool]:
        """One micro-batch: forward with the slot's memory, backward of the scaled loss.

        Returns (summed loss, whether it was finite). A backward runs even for a non-finite
        loss: every rank must take part in ZeRO's gradient collectives; the optimizer step is
        what gets cancelled, on every rank together (`train_step`).
        """
        mems = self.state.mems[slot] or None
        parts = forward_loss(self.engine.model, batch, mems, self.family)
        loss_sum = parts.loss_sum
        if self.faults.active("nonfinite", self.state.step + 1, self.rank):
            loss_sum = loss_sum * float("nan")
        self.state.mems[slot] = [m.detach() for m in parts.new_mems]
        value = float(loss_sum.detach())
        finite = math.isfinite(value)
        if finite:
            # DeepSpeed divides by grad_accum and averages over ranks; `scale` undoes both so
            # the gradient is that of (all ranks' summed token losses) / (all target tokens).
            self.engine.model.backward(loss_sum * scale)
        else:
            # Still take part in ZeRO's gradient collectives, with a zero gradient taken from
            # the (finite) logits: a NaN gradient would send DeepSpeed down its own overflow
            # path, which in bf16 leaves ZeRO-3's parameter prefetch trace inconsistent for the
            # next step. (A NaN inside the network still reaches that path.)
            zero = (parts.logits.float().nan_to_num(0.0, 0.0, 0.0) * 0.0).sum()
            self.engine.model.backward(zero)
        return value, finite

    def train_step(self) -> StepResult:
        cfg = self.config
        self.faults.sigterm(self.state.step + 1, self.rank)
        wait_start = time.perf_counter()
        failure: ShardError | None = None
        try:
            batches = [self._to_device(b) for b in self.loader.next_step()]
        except ShardError as err:  # every rank must hear of it (raise_together)
            batches, failure = [], err
        data_wait = time.perf_counter() - wait_start
        counts = torch.tensor(
            [float(sum(target_count(b, self.family) for b in batches)), float(failure is not None)]
        )
        counts = all_reduce_sum(counts)  # the step's target tokens (and bad shards) over all ranks
        if float(counts[1]) > 0:
            raise_together(failure, ShardError, flagged=True)
        global_targets = max(1.0, float(counts[0]))
        scale = cfg.train.grad_accum * self.world_size / global_targets
        eng.set_learning_rate(self.engine.model, learning_rate(self.state.step, cfg.train))
        local_loss, nonfinite = 0.0, 0
        for slot, batch in enumerate(batches):
            value, finite = self.forward_backward(batch, slot, scale)
            local_loss += value if finite else 0.0
            nonfinite += 0 if finite else 1
            if slot == len(batches) - 1:
                verdict = torch.tensor(
                    [local_loss, float(nonfinite), float(self.preemption.requested)]
                )
                verdict = all_reduce_sum(verdict)
                skip = bool(verdict[1] > 0)
                self.engine.optimizer.skip_updates = skip
                whole_norm = None if skip else eng.whole_grad_norm(self.engine.model)
            self.engine.model.step()
        grad_norm = float("nan") if skip else eng.grad_norm(self.engine.model, whole_norm)
        overflow = not skip and eng.fp16_overflowed(self.engine.model)
        return StepResult(
            fp16_overflow=overflow,
            loss=float("nan") if skip else float(verdict[0]) / global_targets,
            skipped=skip,
            preempt=bool(verdict[2] > 0),
            targets=int(global_targets),
            data_wait_s=data_wait,
            grad_norm=grad_norm,
        )

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Loss, perplexity and bits per byte over the validation split (or its first
        ``eval_batches`` batches), memory carried along each row's stream: the evaluation loop
        of `pretrain evaluate`, run on the engine."""
        cfg = self.config
        settings = EvalSettings(
            split=cfg.data.validation_split,
            seq_len=cfg.train.seq_len,
            mem_len=cfg.model.mem_len,
            streams=self.world_size * cfg.train.micro_batch_size,
            batches=cfg.train.eval_batches,
        )
        self.engine.model.eval()
        try:
            if not self.validation_sources:
                metrics = evaluate_model(
                    self.engine.model,
                    self.validation,
                    settings,
                    family=self.family,
                    device=self.device,
                )
                # What the training run logs of them (accuracy and bytes/token are evaluate's).
                return {f"val/{k}": v for k, v in metrics.items() if k in VALIDATION_METRICS}
            per_source = {
                name: evaluate_model(
                    self.engine.model, loader, settings, family=self.family, device=self.device
                )
                for name, loader in self.validation_sources.items()
            }
        finally:
            self.engine.model.train()
        return mixture_validation(per_source, {s.name: s.weight for s in cfg.data.mixture})

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        self.state.loader = self.loader.state_dict()
        self.state.rng = ckpt.capture_rng_state()
        train_checkpoint.save(
            self.engine,
            self.config,
            self.state,
            faults=self.faults,
            timeline=self.timeline,
            extra={
                "run_id": self.state.run_id,
                "fingerprint": self.loader.fingerprint,
                **self.checkpoint_extra(),
            },
        )
        self.log(f"checkpoint step {self.state.step} committed in {self.config.checkpoint.dir}")

    def _manifest(self) -> Any:
        assert isinstance(self.loader, TrainLoader | MixtureLoader)
        return self.loader.source.manifest

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a commit marker records besides the run id and the data fingerprint."""
        # Lets evaluate check a tokenizer where the training manifest is not at hand.
        return {"tokenizer_hash": self._manifest().tokenizer_hash}

    def data_artifacts(self) -> dict[str, str]:
        """Texts logged with the run describing its data, by artifact path."""
        summary = _manifest_summary(self._manifest())
        return {
            "data/manifest_summary.json": _json(summary),
            "data/tokenizer.json": _json(summary["tokenizer"]),
        }

    def run_tags(self) -> dict[str, str]:
        """Tags of the MLflow run besides the world size and hosts."""
        return {"dataset_fingerprint": self.loader.fingerprint}

    def resume(self) -> None:
        point, changes = self.resume_point, self.resume_changes
        if point is None:
            return
        self.state = train_checkpoint.load(self.engine, point, self.config, self.faults)
        self.loader.load_state_dict(
            self.state.loader, allow_new_streams=self.config.train.allow_new_global_batch
        )
        if len(self.state.mems) != self.config.train.grad_accum:
            self.state.mems = [[] for _ in range(self.config.train.grad_accum)]
        self.state.mems = [[m.to(self.device) for m in slot] for slot in self.state.mems]
        ckpt.restore_rng_state(self.state.rng)
        self.log(f"resumed from step {point.step} ({point.directory})")
        self.resume_changes = [f"resumed from step {point.step}", *changes]
        for line in changes:
            self.log(f"  changed since the checkpoint: {line}")

    # -- the loop ---------------------------------------------------------------------------

    def log(self, message: str, level: int = logging.INFO) -> None:
        """A line of the run's own, printed once (by rank 0)."""
        if self.rank == 0:
            logger.log(level, message)

    def done(self) -> bool:
        train = self.config.train
        if self.state.step >= train.max_steps:
            return True
        return train.max_tokens is not None and self.state.tokens_seen >= train.max_tokens

    def train(self) -> dict[str, float]:
        cfg = self.config
        self.preemption.install()
        self.resume()
        tags = {
            "world_size": str(self.world_size),
            "hosts": ",".join(sorted(set(_all_hostnames()))),
            **self.run_tags(),
        }
        if self.build_tracker:
            self.tracker = create_tracker(cfg, rank=self.rank, run_id=self.state.run_id, tags=tags)
        self.state.run_id = _broadcast(self.tracker.run_id)
        if self.rank == 0 and isinstance(self.tracker.run_id, str):
            self.tracker.log_text(_json(self.engine.ds_config), "config/deepspeed.json")
            for artifact, text in self.data_artifacts().items():
                self.tracker.log_text(text, artifact)
            if self.resume_changes:
                # What a resumed run changed (world size, batch shape, ...), kept with the run.
                self.tracker.log_text(
                    "\n".join(self.resume_changes) + "\n",
                    f"resumes/step_{self.state.step:07d}.txt",
                )
        last: dict[str, float] = {}
        saved_at = self.state.step
        try:
            # Step time and throughput are averaged over the training steps of each log window;
            # validation and checkpoint time is kept out of them.
            window_time, window_steps, window_wait = 0.0, 0, 0.0
            # The ETA counts everything since this process started its loop (validation and
            # checkpoints included), so it is the wall time a user will actually wait.
            self.loop_started, self.loop_first_step = time.perf_counter(), self.state.step
            while not self.done():
                started = time.perf_counter()
                result = self.train_step()
                self.state.step += 1
                self.state.tokens_seen += self.tokens_per_step
                self._account(result)
                window_time += time.perf_counter() - started
                window_steps += 1
                window_wait += result.data_wait_s
                if self.state.step % cfg.train.log_every == 0:
                    result.data_wait_s = window_wait / window_steps
                    last = self._report(result, window_time / window_steps)
                    window_time, window_steps, window_wait = 0.0, 0, 0.0
                if self.state.step % cfg.train.eval_every == 0:
                    last.update(self._validate_and_report())
                if result.preempt:
                    self.save()
                    self.tracker.finish("KILLED")
                    self.log(f"preempted: checkpoint at step {self.state.step} saved; exiting")
                    raise Preempted(self.state.step)
                if self.state.step % cfg.checkpoint.every_steps == 0:
                    self.save()
                    saved_at = self.state.step
            if saved_at != self.state.step:
                self.save()
            if self.state.step % cfg.train.eval_every != 0:
                last.update(self._validate_and_report())
            self.tracker.finish("FINISHED")
            return last
        except Preempted:
            raise
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        finally:
            self.loader.close()

    def _account(self, result: StepResult) -> None:
        if result.fp16_overflow:
            self.fp16_overflows += 1
            scale = float(self.engine.model.optimizer.cur_scale)
            self.log(
                level=logging.WARNING,
                message=f"step {self.state.step}: fp16 gradient overflow; DeepSpeed skipped the "
                f"update and lowered the loss scale to {scale:g} ({self.fp16_overflows} so far)",
            )
        if not result.skipped:
            self.state.consecutive_skips = 0
            return
        self.state.skipped_steps += 1
        self.state.consecutive_skips += 1
        self.log(
            level=logging.WARNING,
            message=f"step {self.state.step}: non-finite loss on some rank; the update was "
            f"skipped ({self.state.consecutive_skips} in a row, {self.state.skipped_steps} in all)",
        )
        if self.state.consecutive_skips >= self.config.train.max_consecutive_skips:
            raise NonFiniteLossError(
                f"{self.state.consecutive_skips} consecutive steps had a non-finite loss "
                f"(train.max_consecutive_skips={self.config.train.max_consecutive_skips}); "
                f"stopping at step {self.state.step}. Lower train.lr, check the data, or resume "
                "from an earlier checkpoint."
            )

    def _report(self, result: StepResult, elapsed: float) -> dict[str, float]:
        cfg = self.config
        tokens_per_s = self.tokens_per_step / elapsed
        metrics = {
            "train/loss": result.loss,
            "train/lr": learning_rate(self.state.step - 1, cfg.train),
            "train/grad_norm": result.grad_norm,
            "train/tokens_per_s": tokens_per_s,
            "train/samples_per_s": tokens_per_s / cfg.train.seq_len,
            "train/mfu": self.flops_per_token
            * tokens_per_s
            / self.world_size
            / cfg.tracking.peak_flops_per_device,
            "train/step_time_s": elapsed,
            "train/data_wait_s": result.data_wait_s,
            "train/skipped_steps": float(self.state.skipped_steps),
            "train/tokens_seen": float(self.state.tokens_seen),
            **eng.memory_stats(),
        }
        if isinstance(self.loader, MixtureLoader):
            metrics.update(self._mixture_metrics(self.loader))
        if self.engine.ds_config.get("fp16", {}).get("enabled"):
            metrics["train/loss_scale"] = float(self.engine.model.optimizer.cur_scale)
            metrics["train/fp16_overflows"] = float(self.fp16_overflows)
        self.tracker.log_metrics(metrics, self.state.step)
        self.log(
            f"step {self.state.step:>6}/{cfg.train.max_steps} | loss {result.loss:.4f} | "
            f"lr {metrics['train/lr']:.2e} | grad {result.grad_norm:.3f} | "
            f"{tokens_per_s:,.0f} tok/s | {elapsed * 1000:.0f} ms/step | "
            f"peak mem {max(eng.memory_stats().values()):.2f} GiB | ETA {self._eta()}"
        )
        return metrics

    def _mixture_metrics(self, loader: MixtureLoader) -> dict[str, float]:
        """Tokens and epochs per source (the same figures on every rank: the schedule is known
        to all of them); a line when a source starts another pass over its data."""
        metrics: dict[str, float] = {}
        for name, epochs in loader.source_epochs().items():
            metrics[f"train/tokens/{name}"] = float(loader.source_tokens()[name])
            metrics[f"train/epochs/{name}"] = epochs
            if int(epochs) > int(self._source_epochs.get(name, epochs)):
                self.log(f"source {name}: epoch {int(epochs) + 1} begins (it repeats)")
            self._source_epochs[name] = epochs
        return metrics

    def _eta(self) -> str:
        done = self.state.step - self.loop_first_step
        return eta(time.perf_counter() - self.loop_started, done, self._steps_left() + done)

    def _steps_left(self) -> int:
        train = self.config.train
        left = train.max_steps - self.state.step
        if train.max_tokens is not None:
            tokens_left = max(0, train.max_tokens - self.state.tokens_seen)
            left = min(left, -(-tokens_left // self.tokens_per_step))
        return left

    def _validate_and_report(self) -> dict[str, float]:
        metrics = self.validate()
        self.tracker.log_metrics(metrics, self.state.step)
        bpb = metrics.get("val/bits_per_byte")
        self.log(
            f"validation at step {self.state.step}: loss {metrics['val/loss']:.4f} | "
            f"ppl {metrics['val/perplexity']:.2f}"
            + (f" | bpb {bpb:.4f}" if bpb is not None else "")
            + "".join(
                f" | {n} loss {metrics[f'val/{n}/loss']:.4f}" for n in self.validation_sources
            )
        )
        return metrics


def mixture_validation(
    per_source: dict[str, dict[str, float]], weights: dict[str, float]
) -> dict[str, float]:
    """val/<name>/{loss,perplexity,tokens,bpb} per source and, as val/..., their weighted mean."""
    out: dict[str, float] = {}
    for name, metrics in per_source.items():
        for key in VALIDATION_METRICS:
            if key in metrics:
                out[f"val/{name}/{'bpb' if key == 'bits_per_byte' else key}"] = metrics[key]
    total = weighted_metrics(per_source, weights)
    out.update({f"val/{k}": v for k, v in total.items() if k in VALIDATION_METRICS})
    return out


def _broadcast(value: str | None) -> str | None:
    box: list[str | None] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_hostnames() -> list[str]:
    import socket

    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    return [n for n in names if n]


def _manifest_summary(manifest: Any) -> dict[str, Any]:
    return {
        "url": manifest.url,
        "fingerprint": manifest.fingerprint,
        "dtype": manifest.dtype,
        "chunk_len": manifest.chunk_len,
        "tokenizer": manifest.tokenizer,
        "splits": {
            name: {
                "shards": len(split.shards),
                "samples": split.samples,
                "tokens": split.tokens,
                "utf8_bytes": split.utf8_bytes,
                "documents": split.documents,
            }
            for name, split in manifest.splits.items()
        },
    }


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=1, sort_keys=True, default=str)
