"""Evaluation: the one loop that scores a model on a validation split, and `pretrain evaluate`.

Owns `loop.py` (used by the trainer's validation and by `pretrain evaluate`) and `command.py`
(the CLI recipe). May import `pretrain.config`, `pretrain.batch_loss`, `pretrain.loader`,
`pretrain.model`, `pretrain.tracking`, `pretrain.distributed` and `pretrain.checkpoint`.
"""
