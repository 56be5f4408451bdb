"""Training: the loop, its learning-rate schedule and preemption handling, and `pretrain train`.

Owns `trainer.py` (`forward_backward` -> `train_step` -> `train`), `schedules.py`,
`preemption.py` and `command.py` (the CLI recipe). May import every stage below it:
`pretrain.distributed`, `pretrain.checkpoint`, `pretrain.evaluate` and the top-level libraries.
"""
