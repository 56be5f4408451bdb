"""Parallelism, kept out of the model: the DeepSpeed engine and the process group around it.

Owns `engine.py` (the only DeepSpeed import: config dict, ZeRO-3 model build, optimizer groups,
checkpoint I/O through DeepSpeed, offline shard merging) and `process_group.py` (restarts,
heartbeat, timeouts, `all_reduce_sum`). May import `pretrain.config` and `pretrain.model`.
"""
