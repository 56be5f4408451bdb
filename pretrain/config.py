"""The typed schema of a pretraining run: model, data, optimisation, engine, checkpoints, tracking.

Presets live apart from the schema, as YAML under `configs/`. Every section validates its own
cross-field rules in ``validate()``; the loader (`data_pipeline.configuration`) calls them and
reports failures with the key path and file. This module imports no torch so that configs can be
checked on any machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["decoder", "encoder", "encoder_decoder"]
Position = Literal["relative", "rotary", "learned"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "swiglu"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
Precision = Literal["bf16", "fp16", "fp32"]
Offload = Literal["none", "cpu", "nvme"]
ActivationCheckpointing = Literal["off", "every_layer", "every_n"]


@dataclass
class ModelConfig:
    """Architecture of one of the three families. Sizes follow the usual names:
    ``d_model`` hidden width, ``d_ff`` MLP inner width, ``n_layers`` blocks (the encoder's, for
    an encoder-decoder; ``n_decoder_layers`` defaults to the same)."""

    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None  # None: 4 * d_model (gelu) or the 8/3 rule rounded to 64 (swiglu)
    n_decoder_layers: int | None = None
    max_seq_len: int = 1024  # learned positions table size; also the longest segment
    position: Position = "learned"
    mem_len: int = 0  # Transformer-XL memory length per layer; 0 turns recurrence off
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    activation: Activation = "gelu"
    bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "swiglu":
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.mem_len < 0:
            raise ValueError(f"mem_len must be >= 0, got {self.mem_len}")
        if self.mem_len and self.position == "learned":
            raise ValueError(
                "mem_len > 0 needs relative or rotary positions: learned absolute positions "
                "cannot tell memory from the current segment (Transformer-XL, section 3.3)"
            )
        if self.n_decoder_layers is not None and self.family != "encoder_decoder":
            raise ValueError("n_decoder_layers applies to family encoder_decoder only")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class MixtureSource:
    """One prepared dataset of a weighted mixture (docs/loader.md "Mixtures")."""

    name: str  # short identifier, used in metrics: train/tokens/<name>, val/<name>/loss
    manifest: str  # manifest.json of `data-pipeline prepare`
    weight: float  # relative share of the training tokens

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"name must be letters, digits, '_', '.' or '-', got {self.name!r}")
        if not self.manifest:
            raise ValueError(f"source {self.name!r}: manifest is empty")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    """Where the prepared shards are and how the loader turns them into batches."""

    manifest: str = ""  # path or URL of manifest.json written by `data-pipeline prepare`
    # Or several prepared datasets read in proportion to their weights (exclusive with manifest).
    mixture: list[MixtureSource] = field(default_factory=list)
    # Resume with other mixture weights or sources (the anneal of a WSD schedule); refused
    # otherwise, naming the difference.
    allow_mixture_change: bool = False
    # fsspec options for a URL manifest and its shards (endpoint, credentials), e.g. on S3.
    storage_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    validation_split: str = "validation"
    seed: int = 0
    on_bad_shard: Literal["fail", "skip"] = "fail"
    # A shard read that fails with an I/O error is retried this many times in a row (the shard
    # reopened at the sample it stopped at) before the shard counts as bad.
    read_retries: int = 3
    prefetch_batches: int = 4
    mlm_probability: float = 0.15
    noise_density: float = 0.15  # span corruption: fraction of tokens masked
    mean_span_length: float = 3.0
    # Training order (docs/loader.md "Order"): "contiguous" streams read their text in order
    # (what Transformer-XL memory needs); "shuffled" permutes seq_len windows of samples within
    # blocks of whole shards; "auto" is shuffled when the model has no memory (mem_len == 0).
    order: Literal["auto", "contiguous", "shuffled"] = "auto"
    shuffle_buffer_tokens: int = 1 << 22  # shuffled: tokens per stream block (or one shard)
    # Shuffled windows: "none" cuts every sample into the same seq_len windows each epoch;
    # "epoch" shifts them by a seeded offset drawn per epoch, so each pass over the data reads
    # other windows (what random-offset sampling gives; it matters when a run sees the data
    # more than once). See docs/loader.md "Shifted windows".
    window_shift: Literal["none", "epoch"] = "none"

    def validate(self) -> None:
        if self.manifest and self.mixture:
            raise ValueError(
                "data.manifest and data.mixture are both set: give exactly one of them (one "
                "dataset, or a list of {name, manifest, weight})"
            )
        names = [source.name for source in self.mixture]
        if len(set(names)) != len(names):
            raise ValueError(f"data.mixture names must be unique, got {names}")
        if self.order not in ("auto", "contiguous", "shuffled"):
            raise ValueError(f"order must be auto, contiguous or shuffled, got {self.order!r}")
        if self.window_shift not in ("none", "epoch"):
            raise ValueError(f"window_shift must be none or epoch, got {self.window_shift!r}")
        if self.shuffle_buffer_tokens < 1:
            raise ValueError(
                f"shuffle_buffer_tokens must be >= 1, got {self.shuffle_buffer_tokens}"
            )
        if self.read_retries < 0:
            raise ValueError(f"read_retries must be >= 0, got {self.read_retries}")
        if self.prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be >= 1, got {self.prefetch_batches}")
        for name in ("mlm_probability", "noise_density"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.mean_span_length < 1.0:
            raise ValueError(f"mean_span_length must be >= 1, got {self.mean_span_length}")


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""

    micro_batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 128  # tokens per segment fed to the model
    max_steps: int = 1000
    max_tokens: int | None = None  # if set, training stops at whichever limit comes first
    lr: float = 3e-4
    min_lr: float = 3e-5
    schedule: Schedule = "cosine"
    warmup_steps: int = 100
    decay_steps: int | None = None  # wsd: length of the final decay; default 20% of max_steps
    weight_decay: float = 0.1
    no_decay_on: tuple[str, ...] = ("norm", "bias", "embedding")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20  # per rank; 0 = the whole validation split
    activation_checkpointing: ActivationCheckpointing = "off"
    checkpoint_every_n_layers: int = 2
    max_consecutive_skips: int = 5
    resume: str = "auto"  # auto | never | path of a checkpoint step directory
    # Resume a checkpoint whose global batch (world size x micro_batch_size x grad_accum)
    # differs: the epoch's unread samples are dealt out to the new streams (docs/launching.md).
    allow_new_global_batch: bool = False

    def validate(self) -> None:
        for name in ("micro_batch_size", "grad_accum", "seq_len", "max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be within [0, max_steps={self.max_steps}]"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.decay_steps is not None and not 0 < self.decay_steps <= self.max_steps:
            raise ValueError(f"decay_steps must be in (0, max_steps], got {self.decay_steps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {list(self.betas)}")
        if self.activation_checkpointing == "every_n" and self.checkpoint_every_n_layers < 1:
            raise ValueError("checkpoint_every_n_layers must be >= 1")


@dataclass
class EngineConfig:
    """DeepSpeed settings; `pretrain.distributed.engine` turns them into DeepSpeed's config dict."""

    zero_stage: int = 3
    precision: Precision = "bf16"
    initial_scale_power: int = 16  # fp16 dynamic loss scaling
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"
    nvme_path: str = "/local_nvme"
    reduce_bucket_size: int = 50_000_000
    prefetch_bucket_size: int = 50_000_000
    overlap_comm: bool = True
    gather_16bit_weights_on_model_save: bool = True
    dist_timeout_s: int = 600  # collective timeout: a dead rank fails the job instead of hanging

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.dist_timeout_s < 1:
            raise ValueError(f"dist_timeout_s must be >= 1, got {self.dist_timeout_s}")


@dataclass
class CheckpointConfig:
    # A local path or an fsspec URL (s3://bucket/prefix): docs/architecture.md "Checkpoints on
    # object storage". Empty: runs/<experiment name>/checkpoints, so experiments never share one.
    dir: str = ""
    every_steps: int = 500
    keep_last: int = 3
    # fsspec options for a URL ``dir`` (endpoint, credentials); never written into a checkpoint.
    storage_options: dict[str, Any] = field(default_factory=dict)
    # Where each node stages a save before uploading it and caches the step it resumes from,
    # for a URL ``dir``. Empty: <temp dir>/mnemos-checkpoints/<hash of dir>.
    local_dir: str = ""

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's local default store
    experiment: str = ""  # empty: the experiment's name
    artifact_location: str | None = None  # for a new experiment; None: the store's default
    run_name: str | None = None
    peak_flops_per_device: float = 989e12  # for MFU; H100/H200 dense bf16


EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_experiment_name(name: str) -> None:
    """A run's ``name`` names its folders, MLflow experiment and scheduler job: folder-safe."""
    if not EXPERIMENT_NAME.fullmatch(name):
        raise ValueError(
            f"name {name!r} names the run's folders: use letters, digits, '.', '_', '-'"
        )


@dataclass
class ExperimentConfig:
    """One pretraining run, end to end."""

    model: ModelConfig
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        check_experiment_name(self.name)
        # Derived here, once, so the resolved config a run saves names its real folders.
        if not self.checkpoint.dir:
            self.checkpoint.dir = f"runs/{self.name}/checkpoints"
        if not self.tracking.experiment:
            self.tracking.experiment = self.name
        if self.model.position == "learned" and self.train.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len "
                f"({self.model.max_seq_len}) of the learned position table"
            )
