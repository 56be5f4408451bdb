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
