"""`pretrain plan`: per-GPU memory before a job is submitted.

Model states follow ZeRO's accounting (Rajbhandari et al. 2020) the way DeepSpeed implements it,
per parameter: 16-bit weights (2 bytes), fp32 gradient partitions the optimizer reads (4), and
Adam's fp32 master weights, momentum and variance (12); with fp32 training, 4 + 4 + 8. ZeRO
stage 1 partitions the optimizer state over the GPUs, stage 2 the gradients too, stage 3 the
weights too (plus a gather buffer for the largest layer). Offloading the optimizer moves the
optimizer state and fp32 gradients to the host; offloading parameters (stage 3) leaves only the
layer being computed on the GPU. The stage-3 figures equal DeepSpeed's own estimator
(`estimate_zero3_model_states_mem_needs`), which the tests check.

Activations follow Korthikanti et al. 2022 ("Reducing activation recomputation"), with
attention through scaled_dot_product_attention (no stored s x s score matrix): per layer about
``s*b*(15*h + 4.75*f)`` bytes in 16-bit, plus the logits. Activation checkpointing keeps each
checkpointed block's input and recomputes the rest, one block at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pretrain.config import ExperimentConfig, ModelConfig

GIB = 2**30
# CUDA context, allocator fragmentation, communication buckets: kept free when suggesting sizes.
RESERVE_FRACTION = 0.10
RESERVE_BYTES = 2 * GIB


def parse_size(text: str) -> int:
    """'80GB', '80G', '80GiB' or '141' (GiB) as bytes; GPU makers' GB are GiB in practice."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(g|gb|gib|m|mb|mib|t|tb|tib)?\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read a memory size from {text!r}; use e.g. 80GB")
    unit = (match.group(2) or "g")[0]
    return int(float(match.group(1)) * {"m": 2**20, "g": GIB, "t": 2**40}[unit])


@dataclass(frozen=True)
class ModelStates:
    stage: int
    offload: str  # "none", "optimizer", "optimizer+param"
    params: float
    grads: float
    optimizer: float
    gather: float  # stage 3: the largest layer gathered whole

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.gather


def param_counts(model: ModelConfig) -> tuple[int, int]:
    """Total parameters and those of the largest layer (a block, or the embedding)."""
    from pretrain.model.size import num_params

    total = num_params(model)
    embedding = model.vocab_size * model.d_model
    embeddings = embedding * (1 if model.tie_embeddings else 2)
    layers = model.n_layers + (model.decoder_layers if model.family == "encoder_decoder" else 0)
    return total, max(embedding, (total - embeddings) // max(layers, 1))


def model_states(
    total: int, largest: int, gpus: int, stage: int, offload: str, precision: str
) -> ModelStates:
    weight, grad, opt = (4, 4, 8) if precision == "fp32" else (2, 4, 12)
    params = total * weight / (gpus if stage == 3 else 1)
    grads = total * grad / (gpus if stage >= 2 else 1)
    optimizer = total * opt / (gpus if stage >= 1 else 1)
    gather = 4.0 * largest if stage == 3 else 0.0
    if "optimizer" in offload:
        grads, optimizer = 0.0, 0.0
    if "param" in offload:
        params = 0.0
    return ModelStates(stage, offload, params, grads, optimizer, gather)


def all_model_states(config: ExperimentConfig, gpus: int) -> list[ModelStates]:
    total, largest = param_counts(config.model)
    choices = [(0, "none"), (1, "none"), (1, "optimizer"), (2, "none"), (2, "optimizer")]
    choices += [(3, "none"), (3, "optimizer"), (3, "optimizer+param")]
    precision = config.engine.precision
    return [model_states(total, largest, gpus, s, o, precision) for s, o in choices]


def configured_offload(config: ExperimentConfig) -> str:
    engine = config.engine
    if engine.offload_param != "none":
        return "optimizer+param" if engine.offload_optimizer != "none" else "param"
    return "optimizer" if engine.offload_optimizer != "none" else "none"


def activations(config: ExperimentConfig, micro_batch: int, checkpointing: str) -> float:
    """Activation bytes of one micro-batch on one GPU (data parallel: not divided by GPUs)."""
    m, t = config.model, config.train
    s, b, h, f = t.seq_len, micro_batch, m.d_model, m.ffn_dim
    width = 2 if config.engine.precision != "fp32" else 4
    per_layer = s * b * (15 * h + 4.75 * f) * width / 2
    layers = m.n_layers + (m.decoder_layers if m.family == "encoder_decoder" else 0)
    # Transformer-XL: the cached memory, one hidden state per layer and remembered position.
    memory = layers * b * m.mem_len * h * width
    logits = s * b * m.vocab_size * (width + 4)  # 16-bit logits and the fp32 softmax
    if checkpointing == "off":
        stored = layers * per_layer
    else:
        every = 1 if checkpointing == "every_layer" else t.checkpoint_every_n_layers
        checkpointed = (layers + every - 1) // every
        inputs = checkpointed * s * b * h * width
        stored = inputs + (layers - checkpointed) * per_layer + per_layer  # + one recomputed
    return stored + memory + logits


def usable(gpu_memory: int) -> float:
    return gpu_memory * (1 - RESERVE_FRACTION) - RESERVE_BYTES


def suggest_micro_batch(
    config: ExperimentConfig, states: ModelStates, gpu_memory: int, checkpointing: str
) -> int:
    """The largest micro-batch (up to 1024) whose model states and activations fit."""
    free = usable(gpu_memory) - states.total
    best = 0
    for b in range(1, 1025):
        if activations(config, b, checkpointing) > free:
            break
        best = b
    return best


def report(config: ExperimentConfig, gpus: int, gpu_memory: int) -> str:
    total, largest = param_counts(config.model)
    m, t, e = config.model, config.train, config.engine
    gib = lambda x: f"{x / GIB:9.2f}"  # noqa: E731
    lines = [
        f"model: {m.family}, {total / 1e6:,.1f} M parameters "
        f"(largest layer {largest / 1e6:,.1f} M), precision {e.precision}",
        f"{gpus} GPU(s) x {gpu_memory / GIB:.0f} GiB; usable after the reserve for CUDA context "
        f"and fragmentation: {usable(gpu_memory) / GIB:.1f} GiB",
        "",
        "model states per GPU (GiB)",
        f"{'stage':>5} {'offload':<16}{'params':>9}{'grads':>9}{'optim':>9}{'gather':>9}"
        f"{'total':>9}",
    ]
    for st in all_model_states(config, gpus):
        mark = (
            "  <- configured"
            if (st.stage, st.offload)
            == (
                e.zero_stage,
                configured_offload(config),
            )
            else ""
        )
        lines.append(
            f"{st.stage:>5} {st.offload:<16}{gib(st.params)}{gib(st.grads)}{gib(st.optimizer)}"
            f"{gib(st.gather)}{gib(st.total)}{mark}"
        )
    no_ac = activations(config, t.micro_batch_size, "off")
    ac_mode = t.activation_checkpointing if t.activation_checkpointing != "off" else "every_layer"
    with_ac = activations(config, t.micro_batch_size, ac_mode)
    lines += [
        "",
        f"activations per GPU at micro_batch_size {t.micro_batch_size}, seq_len {t.seq_len}:",
        f"  without activation checkpointing: {no_ac / GIB:8.2f} GiB",
        f"  with activation checkpointing ({ac_mode}): {with_ac / GIB:8.2f} GiB",
    ]
    states = model_states(
        total, largest, gpus, e.zero_stage, configured_offload(config), e.precision
    )
    current = activations(config, t.micro_batch_size, t.activation_checkpointing)
    need = states.total + current
    verdict = "fits" if need <= usable(gpu_memory) else "DOES NOT FIT"
    lines += [
        "",
        f"configured (stage {e.zero_stage}, offload {configured_offload(config)}, "
        f"activation checkpointing {t.activation_checkpointing}): "
        f"{need / GIB:.2f} GiB per GPU: {verdict}",
        f"suggested micro_batch_size: {suggest_micro_batch(config, states, gpu_memory, 'off')} "
        f"without activation checkpointing, "
        f"{suggest_micro_batch(config, states, gpu_memory, ac_mode)} with ({ac_mode})",
    ]
    return "\n".join(lines) + "\n"
