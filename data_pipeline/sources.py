"""Input files through fsspec: expand paths, globs and URLs into a sorted list of files, and open
them with the compression their name implies."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from data_pipeline.storage import local_path

if TYPE_CHECKING:
    import fsspec

GLOB_CHARS = "*?["


class SourceError(ValueError):
    """An input path cannot be used (nothing matches it, it cannot be listed, it is a directory,
    or it is not a regular file)."""


def _check_local_file(pattern: str, fs: fsspec.AbstractFileSystem, match: str) -> None:
    """Refuse a local input that is not a regular file: a directory (name its files instead:
    which of them are text is the user's choice), or a FIFO, socket or device, whose reading
    would wait for a writer forever or never end. Remote (fsspec) objects are always files."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        return
    shown = _display_path(pattern, fs, match)
    try:
        mode = Path(match).stat().st_mode  # follows symlinks: a link to a file is a file
    except OSError as err:
        raise SourceError(f"{shown}: cannot read input ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise SourceError(
            f"{shown}: is a directory, not an input file; name its files with a glob "
            f"(e.g. {shown.rstrip('/')}/*.txt)"
        )
    if not stat.S_ISREG(mode):
        raise SourceError(
            f"{shown}: not a regular file (a FIFO, socket or device); refusing to read it as "
            "input, as it could block forever: copy the data to a file first"
        )


@dataclass(frozen=True)
class SourceFile:
    """One input file. ``path`` is how the manifest names it: relative to the working directory
    when the user wrote a relative local path (so manifests do not depend on where the checkout
    is), otherwise a full URL."""

    path: str
    url: str  # what fsspec opens
    size: int
    compression: str | None


def _display_path(pattern: str, fs: fsspec.AbstractFileSystem, match: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local") and "://" not in pattern:
        return match if Path(pattern).is_absolute() else os.path.relpath(match)
    url: str = fs.unstrip_protocol(match)
    return url


def expand_sources(
    paths: list[str], storage_options: dict[str, Any] | None = None
) -> list[SourceFile]:
    """Every file named by ``paths`` (globs expanded), sorted within each pattern, in the order
    the patterns are given; a file named twice is kept once. Work units and the manifest follow
    this order, so it must not depend on the file system's listing order."""
    from fsspec.core import url_to_fs
    from fsspec.utils import infer_compression

    options = storage_options or {}
    files: list[SourceFile] = []
    seen: set[str] = set()
    for pattern in paths:
        fs, root = url_to_fs(pattern, **options)
        if any(c in root for c in GLOB_CHARS):
            matches = sorted(m for m in fs.glob(root) if not fs.isdir(m))
        else:
            matches = [root] if fs.exists(root) else []
        if not matches:
            raise SourceError(f"{pattern}: no input file matches")
        for match in matches:
            url = fs.unstrip_protocol(match)
            if url in seen:
                continue
            seen.add(url)
            _check_local_file(pattern, fs, match)
            info = fs.info(match)
            files.append(
                SourceFile(
                    path=_display_path(pattern, fs, match),
                    url=url,
                    size=int(info.get("size") or 0),
                    compression=infer_compression(match),
                )
            )
    return files


def open_raw(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """The file's bytes as stored (still compressed). A local file is opened directly: a worker
    reading local files never imports fsspec (~60 ms of its start-up)."""
    local = local_path(url)
    if local is not None:
        return open(local, "rb")
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **(storage_options or {}))
    handle: IO[bytes] = fs.open(path, "rb")
    return handle


def decompressing(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    """Wrap ``raw`` in the decompressor fsspec registers for ``compression`` (gzip, bz2, lzma,
    zstd, ...); ``None`` returns ``raw``."""
    if compression is None:
        return raw
    from fsspec.compression import compr

    stream: IO[bytes] = compr[compression](raw, mode="rb")
    return stream
