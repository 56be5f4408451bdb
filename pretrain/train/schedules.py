"""Learning-rate schedules as pure functions of the step.

A pure function of (step, config) needs no state in the checkpoint and gives the same value after
a resume at any step, on any world size.
"""

from __future__ import annotations

import math

from pretrain.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    All schedules warm up linearly from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``,
    then:

    - ``cosine``: half a cosine from ``lr`` down to ``min_lr`` at ``max_steps``;
    - ``linear``: a straight line from ``lr`` down to ``min_lr`` at ``max_steps``;
    - ``constant``: ``lr`` until the end;
    - ``wsd`` (warmup-stable-decay): ``lr`` until the last ``decay_steps`` (default 20% of
      ``max_steps``), then linear down to ``min_lr``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    lr, min_lr, total = config.lr, config.min_lr, config.max_steps
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return lr
    if config.schedule == "wsd":
        decay = config.decay_steps or max(1, total // 5)
        decay_start = max(config.warmup_steps, total - decay)
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return lr + (min_lr - lr) * progress
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    if config.schedule == "linear":
        return lr + (min_lr - lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
