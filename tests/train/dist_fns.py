"""Functions run on 2 real ranks by `run_distributed` for trainer tests."""

from __future__ import annotations

import torch

from data_pipeline.configuration import load_config
from pretrain.config import ExperimentConfig
from pretrain.train.trainer import Trainer


def steps_with_saved_activation_bytes(
    config_path: str, overrides: list[str], steps: int
) -> dict[str, object]:
    """Train ``steps`` steps and measure the bytes autograd keeps for backward in each step:
    the activation memory that activation checkpointing exists to cut."""
    config = load_config(ExperimentConfig, config_path, overrides)
    trainer = Trainer(config)
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    losses, peaks = [], []
    try:
        for _ in range(steps):
            saved[0] = 0
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                result = trainer.train_step()
            trainer.state.step += 1
            losses.append(result.loss)
            peaks.append(saved[0])
    finally:
        trainer.loader.close()
    return {"losses": losses, "saved_bytes": peaks}


def resumed_state(config_path: str, overrides: list[str]) -> dict[str, object]:
    """Resume the newest checkpoint (as `pretrain train` would, at this world size) and return,
    on every rank, each parameter's whole fp32 master weight and Adam moments as the engine now
    holds them (gathered from the ZeRO partitions), plus the loader's first batches after it."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    config = load_config(ExperimentConfig, config_path, overrides)
    trainer = Trainer(config)
    try:
        trainer.resume()
        tensors: dict[str, torch.Tensor] = {}
        # ZeRO 1/2 link each parameter to its slice of the Adam moments at the first step; a
        # freshly loaded optimizer has not stepped yet, so link them here (DeepSpeed's own call).
        link = getattr(trainer.engine.model.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()
        for name, param in trainer.engine.model.module.named_parameters():
            tensors[f"{name}/fp32"] = safe_get_full_fp32_param(param).clone()
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"{name}/{key}"] = safe_get_full_optimizer_state(param, key).clone()
        groups = [
            {k: float(v) for k, v in g.items() if k in ("weight_decay", "eps")}
            for g in trainer.engine.model.optimizer.param_groups
        ]
        batches = [b["input_ids"].clone() for b in trainer.loader.next_step()]
    finally:
        trainer.loader.close()
    return {"step": trainer.state.step, "tensors": tensors, "groups": groups, "batches": batches}
