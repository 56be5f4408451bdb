"""Streaming loader: WebDataset shards (via fsspec) -> per-rank batches with exact resume.

See docs/loader.md. Public surface: `TrainLoader`, `ValidationLoader`, `merge_states`, the
errors, and `load_manifest` for code that only needs the dataset's figures.
"""

from pretrain.loader.collate import Batch, Objective
from pretrain.loader.manifest import Manifest, ManifestError, check_compatible, load_manifest
from pretrain.loader.mixture import MixtureLoader
from pretrain.loader.shards import ShardError
from pretrain.loader.state import LoaderStateError, merge_states
from pretrain.loader.train_loader import TrainLoader
from pretrain.loader.validation import ValidationLoader

__all__ = [
    "Batch",
    "LoaderStateError",
    "Manifest",
    "ManifestError",
    "MixtureLoader",
    "Objective",
    "ShardError",
    "TrainLoader",
    "ValidationLoader",
    "check_compatible",
    "load_manifest",
    "merge_states",
]
