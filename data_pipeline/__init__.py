"""Offline corpus preparation: tokenizer training and corpus -> WebDataset shards + manifest.

Imports no torch: a data-preparation box needs none. The public names other parts use:

* `data_pipeline.tokenizer.Tokenizer`: load a tokenizer artifact, encode/decode in batches;
* `manifest_fingerprint(path_or_bytes)`: the dataset fingerprint (sha256 of manifest.json);
* schemas: `data_pipeline.schemas.PrepareConfig` (configs/data) and
  `data_pipeline.schemas.TokenizerTrainingConfig` (configs/tokenizer).
"""

from data_pipeline.manifest import manifest_fingerprint

__all__ = ["manifest_fingerprint"]
