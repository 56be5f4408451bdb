"""Checkpoints on disk or object storage: layout and commit protocol, trainer state, reading a
step offline.

Owns `layout.py` (step directories, `COMMITTED`, `latest`, pruning, the one answer to "is this a
checkpoint root or a step directory", which config keys may change), `state.py` (saving and
resuming a training run's per-rank state through the engine), `remote.py` (the same layout on
object storage: a URL ``checkpoint.dir``, uploads confirmed before the commit, steps downloaded
and verified before use), `reading.py` (a step's weights merged into one ordinary model, no
process group) and `tokenizer.py` (finding and checking the tokenizer a checkpoint was trained
with). May import `pretrain.config`, `pretrain.faults`, `pretrain.model`, `pretrain.loader` and
`pretrain.distributed`; never a stage above it.
"""
