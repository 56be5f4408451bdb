"""DeepSpeed: the only module that imports it.

It turns the typed config into DeepSpeed's config dict, sets up the process group with a timeout,
builds the model under ``deepspeed.zero.Init`` (so a model larger than one device is never
materialised whole), applies activation checkpointing, and wraps the model in a DeepSpeed engine.
Model code stays free of parallelism; the trainer talks to the engine returned here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, cast

import deepspeed
import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: `torch.distributed.nn.functional`
# takes ``group=group.WORLD`` as a default argument (as DeepSpeed's `deepspeed.comm.torch`
# does, imported above), and a module first imported after the group is up keeps that group
# in its defaults for good. `destroy_process_group` then leaves gloo's threads running into
# interpreter shutdown, where about one rank in twenty aborted ("terminate called without an
# active exception") after its work was done, and the launcher called the job failed.
import torch.distributed.nn
from deepspeed.accelerator import get_accelerator
from torch import nn
from torch.utils.checkpoint import checkpoint

from data_pipeline.console import route_library_loggers
from pretrain.config import EngineConfig, ExperimentConfig, ModelConfig, TrainConfig
from pretrain.distributed import process_group
from pretrain.model import FAMILIES
from pretrain.model.build import DTYPES

route_library_loggers()  # its import wrote its own stdout handler over ours
logger = logging.getLogger(__name__)

# Builds the module to train from the model config; it has `init_weights(gather)` like the
# families (`LanguageModel.init_weights`).
ModelFactory = Callable[[ModelConfig], Any]


def on_cpu() -> bool:
    return bool(get_accelerator().device_name() == "cpu")


@contextlib.contextmanager
def deepspeed_output_at_debug() -> Iterator[None]:
    """What DeepSpeed print()s (and its tqdm bars on stderr) while it builds ops, reads or
    converts checkpoints, passed on as DEBUG lines: stdout stays for results (``--json``), the
    console for the project's own lines, and ``-vv`` still shows all of it."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                logger.debug("%s", line)


def init_distributed(engine: EngineConfig) -> None:
    """Join the process group (env:// from torchrun, SLURM or the DeepSpeed launcher).

    The timeout bounds every collective: a dead or hung rank makes the others fail with an error
    instead of waiting forever.
    """
    backend = "gloo" if on_cpu() else get_accelerator().communication_backend_name()
    # Always through DeepSpeed, even when torch.distributed is already initialised (by a test
    # harness or an embedding program): DeepSpeed then adopts that group; skipping the call
    # would leave DeepSpeed believing the world has one process.
    if "RANK" not in os.environ and not dist.is_initialized():
        process_group.single_process_env()
    if on_cpu():
        process_group.remove_stale_shm_buffers()
    # On CPU DeepSpeed builds its shared-memory all-reduce op and print()s that it did, on
    # every rank.
    with deepspeed_output_at_debug():
        deepspeed.init_distributed(
            dist_backend=backend,
            timeout=timedelta(seconds=engine.dist_timeout_s),
            init_method=process_group.attempt_init_method(),
        )
    process_group.start_heartbeat(engine.dist_timeout_s)


def deepspeed_config(config: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed's config dict for this run. The trainer sets the learning rate itself each step
    (schedules are pure functions), so no DeepSpeed scheduler is configured."""
    train, engine = config.train, config.engine
    zero: dict[str, Any] = {
        "stage": engine.zero_stage,
        "overlap_comm": engine.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": engine.reduce_bucket_size,
    }
    if engine.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": engine.prefetch_bucket_size,
                "stage3_gather_16bit_weights_on_model_save": (
                    engine.gather_16bit_weights_on_model_save
                ),
            }
        )
    for part in ("optimizer", "param"):
        device = getattr(engine, f"offload_{part}")
        if device != "none":
            zero[f"offload_{part}"] = {"device": device, "pin_memory": not on_cpu()}
            if device == "nvme":
                zero[f"offload_{part}"]["nvme_path"] = engine.nvme_path
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the trainer prints its own progress lines
        "zero_allow_untested_optimizer": True,  # SkippableAdamW is torch's AdamW plus a skip
        "wall_clock_breakdown": False,
    }
    if engine.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif engine.precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0 = dynamic loss scaling
            "initial_scale_power": engine.initial_scale_power,
            "loss_scale_window": engine.loss_scale_window,
            "hysteresis": engine.hysteresis,
            "min_loss_scale": engine.min_loss_scale,
        }
    return ds


def zero_init(config: ExperimentConfig, ds_config: dict[str, Any]) -> AbstractContextManager[Any]:
    """Partition parameters as they are created (ZeRO-3); a plain context otherwise."""
    if config.engine.zero_stage != 3:
        return nullcontext()
    return deepspeed.zero.Init(
        config_dict_or_path=ds_config, dtype=DTYPES[config.engine.precision], remote_device=None
    )


def gather_for_init(params: list[nn.Parameter]) -> AbstractContextManager[object]:
    """Gather partitioned parameters so ``init_weights`` can set them; rank 0's values win and are
    scattered back, so every rank ends with the same weights whatever its RNG did."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return nullcontext()
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def build_partitioned_model(
    config: ExperimentConfig,
    ds_config: dict[str, Any],
    factory: ModelFactory | None = None,
) -> nn.Module:
    """The family's class (or what ``factory`` builds from the model config: a fine-tuning
    model around it) built under ``zero.Init`` (parameters allocated, not initialised), then
    initialised once, module by module, through ``gather_for_init``."""
    torch.manual_seed(config.train.seed)  # same initial weights for any world size
    with zero_init(config, ds_config):
        model = (factory or FAMILIES[config.model.family])(config.model)
    model.init_weights(gather_for_init)
    return model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``model``'s parameters, partitioned (ZeRO-3) or not, module by module
    (one gathered at a time). Every rank must call it, in the same order, with the same keys:
    under ZeRO-3 rank 0's values are scattered back. A parameter known under several names (tied
    embeddings) takes the first that ``state`` has. Returns (parameters not in ``state``, keys
    of ``state`` no parameter took)."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            names.setdefault(id(param), []).append(full)
            params[id(param)] = param
    used: set[str] = set()
    missing: list[str] = []
    for key, param in params.items():
        found = next((n for n in names[key] if n in state), None)
        if found is None:
            missing.append(names[key][0])
            continue
        used.update(n for n in names[key] if n in state)
        with gather_for_init([param]), torch.no_grad():
            if param.shape != state[found].shape:
                raise ValueError(
                    f"{found}: the weights have shape {tuple(state[found].shape)}, the model "
                    f"{tuple(param.shape)}"
                )
            param.copy_(state[found].to(param.dtype))
    return missing, sorted(set(state) - used)


def apply_activation_checkpointing(model: nn.Module, train: TrainConfig) -> int:
    """Recompute selected blocks' activations in the backward pass instead of storing them.

    Uses PyTorch's non-reentrant checkpointing, which handles keyword arguments, tensors that do
    not require grad (Transformer-XL memory is detached) and ZeRO-3's parameter gathering hooks
    (submodules are called normally during the recomputation). Returns the number of blocks.
    """
    if train.activation_checkpointing == "off":
        return 0
    every = (
        1 if train.activation_checkpointing == "every_layer" else train.checkpoint_every_n_layers
    )
    wrapped = 0
    for stack in _stacks(model):
        for index, block in enumerate(stack.layers):
            if index % every == 0:
                block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
                wrapped += 1
    return wrapped


def _stacks(model: nn.Module) -> Iterator[Any]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(module, "positions"):
            yield module


def parameter_kind(module: nn.Module, name: str) -> str:
    """'embedding', 'norm', 'bias' or 'weight': what ``train.no_decay_on`` selects by."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if "norm" in type(module).__name__.lower():
        return "norm"
    # u and v are Transformer-XL's global content/position biases.
    if name == "bias" or name in ("u", "v"):
        return "bias"
    return "weight"


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on the kinds listed in ``no_decay_on``."""
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()  # tied embeddings appear under two modules
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            kind = parameter_kind(module, name)
            (exempt if kind in train.no_decay_on else decay).append(param)
    return [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next step can be cancelled: weights, moments and step counts stay untouched.

    With bf16, DeepSpeed applies whatever gradients it has, NaN included (only fp16 loss scaling
    checks for overflow). The trainer decides on every rank together, after the last backward
    of a step and before DeepSpeed's optimizer step, whether a non-finite loss poisoned the step,
    and sets ``skip_updates``; ZeRO then copies the unchanged fp32 partitions back into the model.
    """

    skip_updates = False  # set by the trainer for each step; ZeRO calls step() per sub-group

    def step(self, closure: Any = None) -> Any:
        if self.skip_updates:
            return None
        return super().step(closure)


@dataclass
class Engine:
    model: Any  # deepspeed.DeepSpeedEngine: call it like the model; backward(), step()
    optimizer: SkippableAdamW
    ds_config: dict[str, Any]


def initialize(config: ExperimentConfig) -> Engine:
    """Join the process group, then build the model, optimizer and DeepSpeed engine for this
    process's rank."""
    init_distributed(config.engine)
    return build(config)


def build(
    config: ExperimentConfig,
    factory: ModelFactory | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Engine:
    """The model, optimizer and DeepSpeed engine, in a process group already joined
    (`init_distributed`). ``factory`` builds another model from the model config (fine-tuning
    heads); ``weights`` are copied in after initialisation (`load_weights`), e.g. a pretrained
    model's."""
    ds_config = deepspeed_config(config, dist.get_world_size())
    model = build_partitioned_model(config, ds_config, factory)
    if weights is not None:
        missing, unused = load_weights(model, weights)
        if dist.get_rank() == 0:
            logger.info(
                "weights loaded; newly initialised: %s; not used: %s",
                ", ".join(missing) or "none",
                ", ".join(unused) or "none",
            )
    apply_activation_checkpointing(model, config.train)
    optimizer = SkippableAdamW(
        param_groups(model, config.train),
        lr=config.train.lr,
        betas=config.train.betas,
        eps=config.train.eps,
    )
    # DeepSpeed saves this attribute of the model with every checkpoint, and its universal
    # converter (resume at another world size) refuses a ZeRO 1/2 checkpoint without it. Pure
    # data parallelism has no tensor-parallel merge patterns to declare: the version alone.
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    setattr(
        model,
        UNIVERSAL_CHECKPOINT_INFO,
        {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return Engine(engine, optimizer, ds_config)


class _HashingFile(io.RawIOBase):
    """A file opened for writing that hashes what goes through it (``digest``: a hashlib-like
    object), so that a checkpoint's digests cost no second read of the file."""

    def __init__(self, path: str, digest: Any) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.digest = digest
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        return self._file.write(view)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def save_checkpoint(
    engine: Any, root: str, tag: str, digest: tuple[str, Callable[[], Any]]
) -> dict[str, dict[str, Any]]:
    """DeepSpeed's shards (ZeRO partitions of weights and optimizer) under ``root/tag``; returns
    the digest (``digest``: its name and a factory of hashlib-like objects) and size of every
    file this rank wrote, keyed by path, hashed as they were written (DeepSpeed's checkpoint
    engine writes through `_HashingFile` for this call)."""
    digest_name, new_digest = digest
    checkpoint_engine = engine.checkpoint_engine
    written: dict[str, dict[str, Any]] = {}
    zipfile = bool(getattr(checkpoint_engine, "zipfile_serialization", True))

    def save(state_dict: Any, path: str) -> None:
        with _HashingFile(path, new_digest()) as handle:
            torch.save(state_dict, cast(IO[bytes], handle), _use_new_zipfile_serialization=zipfile)
        written[str(path)] = {digest_name: handle.digest.hexdigest(), "bytes": handle.size}

    plain = type(checkpoint_engine).__name__ == "TorchCheckpointEngine"
    if plain:  # other engines (async, NVMe) write their own way; those are hashed afterwards
        checkpoint_engine.save = save
    try:
        engine.save_checkpoint(root, tag=tag, save_latest=False)
    finally:
        if plain:
            del checkpoint_engine.save  # back to the class's method
    return written


def load_checkpoint(engine: Any, root: str, tag: str) -> None:
    path, _ = engine.load_checkpoint(
        root, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {root}/{tag}")


def convert_to_universal(step: Path, out: Path) -> None:
    """DeepSpeed's universal checkpoint of the step directory ``step``, written to ``out``: every
    parameter's fp32 weights and Adam moments whole, one folder per parameter (``out/zero/``),
    which a DeepSpeed engine of any data-parallel size can load (`load_universal_checkpoint`).

    In-process and serial (one worker): the conversion runs on rank 0 of a live job, where a
    process pool would fork a process holding the process group."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(step),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    try:
        with deepspeed_output_at_debug():
            ds_to_universal.main(args)
    except AssertionError as err:
        if "universal_checkpoint_info" not in str(err):
            raise
        raise RuntimeError(
            f"{step} was saved without DeepSpeed's universal_checkpoint_info (a ZeRO 1/2 step "
            "written before mnemos declared it), so DeepSpeed cannot convert it for another "
            "world size: resume it at the world size it was saved with, then save again"
        ) from None
    # The converter points a `latest_universal` file beside its output; nothing here reads it.
    (out.parent / "latest_universal").unlink(missing_ok=True)


def load_universal_checkpoint(engine: Any, root: str, tag: str) -> None:
    """Load the universal checkpoint ``root/tag`` (`convert_to_universal`) into ``engine``,
    whatever data-parallel size wrote the original: each rank cuts its own ZeRO partitions of
    the weights and Adam moments out of the whole tensors.

    DeepSpeed reads its ``checkpoint.load_universal`` switch when loading, so it is turned on
    for this one load (the engine was built before the trainer knew which checkpoint it would
    resume). Its ZeRO-3 loader also copies the first param group's hyperparameters onto every
    group, which would put weight decay on the groups exempt from it: each group's own
    hyperparameters (besides the learning rate, set every step) are put back afterwards."""
    groups = [
        {k: v for k, v in group.items() if k != "params"} for group in engine.optimizer.param_groups
    ]
    config = engine._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        load_checkpoint(engine, root, tag)
    finally:
        config.load_universal_checkpoint = before
    for group, saved in zip(engine.optimizer.param_groups, groups, strict=True):
        group.update(saved)


def read_zero_checkpoint(root: str, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint written at any world size, gathered in this
    process from every rank's shards: no process group and no accelerator needed.

    ZeRO stages 1-3 keep the fp32 master weights in per-rank ``*zero_pp_rank_*`` files, which
    DeepSpeed's own reader gathers. Without ZeRO (``engine.zero_stage: 0``) every rank holds the
    whole model and DeepSpeed writes it once, as the module's state in
    ``mp_rank_00_model_states.pt``; DeepSpeed's reader does not handle that layout. Those are
    the weights the run computed with: exact for fp32; for a bf16/fp16 run, the half-precision
    copy upcast (right for evaluating in the training precision; the fp32 masters stay in
    DeepSpeed's optimizer state and are not read)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    step = Path(root) / tag
    if step.is_dir() and not any(step.glob("*zero_pp_rank_*")):
        states = step / "mp_rank_00_model_states.pt"
        if not states.is_file():
            raise FileNotFoundError(f"{step}: neither ZeRO shards nor {states.name}")
        # DeepSpeed's own pickle (module state plus client and optimizer state), as its loader
        # reads it: not weights-only.
        saved = torch.load(states, map_location="cpu", weights_only=False)
        return {name: tensor.float() for name, tensor in saved["module"].items()}
    with deepspeed_output_at_debug():
        return dict(get_fp32_state_dict_from_zero_checkpoint(root, tag=tag))


def fp16_overflowed(engine: Any) -> bool:
    """Whether DeepSpeed's fp16 loss scaler found inf/NaN gradients in the last step (and so
    skipped the update and lowered the scale). Always False for bf16 and fp32."""
    return bool(engine.fp16_enabled() and getattr(engine.optimizer, "overflow", False))


def grad_norm(engine: Any, whole: float | None = None) -> float:
    """The global gradient norm of the last step, as DeepSpeed measured it before clipping;
    ``whole`` (from `whole_grad_norm`) where DeepSpeed keeps none (fp32 without ZeRO)."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = whole
    return float("nan") if norm is None else float(norm)


def whole_grad_norm(engine: Any) -> float | None:
    """The gradient norm from the parameters' own ``.grad``, for a model trained without ZeRO
    (stage 0), where each rank holds the whole, already averaged gradients; call it before the
    optimizer step. None under ZeRO, whose partitioned gradients DeepSpeed measures itself."""
    if engine.zero_optimization_stage() != 0:
        return None
    grads = [p.grad.detach() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    )


def memory_stats() -> dict[str, float]:
    """Peak accelerator memory in GiB, or the process's peak resident set on CPU."""
    if not on_cpu():
        accel = get_accelerator()
        return {"memory/peak_gib": accel.max_memory_allocated() / 2**30}
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"memory/peak_rss_gib": peak_kib / 2**20}


def set_learning_rate(engine: Any, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def device_of(engine: Any) -> torch.device:
    return torch.device(get_accelerator().device_name(engine.local_rank))
