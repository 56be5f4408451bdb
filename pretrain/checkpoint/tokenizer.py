"""Find a checkpoint's tokenizer and prove it is the one the model was trained with.

A checkpoint names its dataset (``data.manifest`` in its config, or the sources of
``data.mixture``, which share one tokenizer); the manifest names the
tokenizer artifact (``tokenizer.path``) and records its content hash. The artifact found on disk
must carry that hash: a tokenizer retrained or swapped since would silently map text to ids the
model never saw.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_pipeline.tokenizer import Tokenizer
from pretrain.config import DataConfig
from pretrain.loader import Manifest, ManifestError, load_manifest

logger = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """The tokenizer found (or the data's tokenizer) is not the model's."""


def data_manifest_url(data: DataConfig) -> str:
    """The manifest a run's tokenizer is found through: ``data.manifest``, or for a mixture its
    first source's (every source of a mixture has the same tokenizer hash)."""
    return data.mixture[0].manifest if data.mixture else data.manifest


def training_manifest(manifest_url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    if not manifest_url:
        raise ManifestError("the checkpoint's config names no data.manifest")
    return load_manifest(manifest_url, storage_options)


def _candidates(recorded: str, manifest_url: str) -> list[str]:
    """Where a tokenizer path recorded in a manifest may be: as written (absolute, a URL, or
    relative to where `prepare` ran, usually the repository root), or relative to the manifest."""
    if "://" in recorded or Path(recorded).is_absolute():
        return [recorded]
    found = [recorded]
    if "://" not in manifest_url:
        found.append(str(Path(manifest_url).parent / recorded))
    return found


def load_checked(
    path: str, expected_hash: str | None, storage_options: dict[str, Any] | None = None
) -> Tokenizer:
    """Load the artifact at ``path``; if ``expected_hash`` is given, it must match."""
    try:
        tokenizer = Tokenizer.load(path, storage_options)
    except (FileNotFoundError, ValueError) as err:
        raise TokenizerMismatchError(f"cannot load the tokenizer at {path}: {err}") from None
    if expected_hash and tokenizer.hash != expected_hash:
        raise TokenizerMismatchError(
            f"the tokenizer at {path} (hash {tokenizer.hash[:16]}...) is not the one the model "
            f"was trained with (hash {expected_hash[:16]}...): it was retrained or replaced. "
            "Point --tokenizer at the original artifact."
        )
    return tokenizer


def manifest_tokenizer(
    manifest: Manifest, override: str | None = None, storage_options: dict[str, Any] | None = None
) -> Tokenizer:
    """The tokenizer artifact ``manifest`` was tokenized with (or ``override``), hash-checked.
    ``storage_options``: fsspec options for a tokenizer on object storage (data.storage_options)."""
    expected = manifest.tokenizer_hash or None
    if override is not None:
        return load_checked(override, expected)
    recorded = str(manifest.tokenizer.get("path", ""))
    if not recorded:
        raise TokenizerMismatchError(f"{manifest.url} records no tokenizer path; pass --tokenizer")
    tried = _candidates(recorded, manifest.url)
    for path in tried:
        if "://" in path or Path(path).is_dir():
            return load_checked(path, expected, storage_options)
    raise TokenizerMismatchError(
        f"the tokenizer artifact named by {manifest.url} was not found (tried "
        f"{', '.join(tried)}); pass --tokenizer PATH"
    )


def checkpoint_tokenizer(checkpoint: Any, override: str | None = None) -> Tokenizer:
    """The tokenizer ``checkpoint``'s model was trained with (or ``override``, checked against
    it), found through the run's own training manifest. Object storage is read with
    ``data.storage_options`` as given to this command: credentials are never saved with a step."""
    options = checkpoint.config.data.storage_options
    manifest = training_manifest(data_manifest_url(checkpoint.saved_config.data), options)
    return manifest_tokenizer(manifest, override, options)


def check_same_tokenizer(data: Manifest, expected_hash: str | None, what: str) -> None:
    """Refuse data tokenized by another tokenizer than the model's."""
    if expected_hash and data.tokenizer_hash != expected_hash:
        raise TokenizerMismatchError(
            f"{data.url} was tokenized with tokenizer {data.tokenizer_hash[:16]}..., but {what} "
            f"was trained with {expected_hash[:16]}...: its token ids mean different text. "
            "Prepare the data with the model's tokenizer."
        )


def model_tokenizer_hash(checkpoint: Any) -> str | None:
    """The hash of the tokenizer a checkpoint's model was trained with: recorded in its commit
    marker when the trainer wrote it there, else read from its training manifest (which may be
    gone on another machine: then None, and the caller cannot check)."""
    recorded = checkpoint.marker.get("tokenizer_hash")
    if recorded:
        return str(recorded)
    try:
        url = data_manifest_url(checkpoint.saved_config.data)
        return training_manifest(url, checkpoint.config.data.storage_options).tokenizer_hash or None
    except ManifestError:
        logger.warning(
            "the training manifest %s is not readable here; the data's tokenizer cannot be "
            "checked against the model's",
            data_manifest_url(checkpoint.saved_config.data),
        )
        return None
