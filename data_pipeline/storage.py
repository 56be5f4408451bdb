"""Output storage through fsspec, with one rule: a file appears under its final name only when it
is complete.

Local disk: write a temporary file in the same directory tree, fsync, then `os.replace` (atomic on
POSIX). Object stores (s3://, gs://, memory://, ...): one whole-object PUT of the finished bytes;
an object store never shows a partial object under a key, so an interrupted upload leaves nothing
there. Shards are built in memory (they are `shard_bytes` large) so both paths get whole bytes.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs


class Output:
    """A directory or URL prefix that files are committed into."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root.rstrip("/")
        self.fs, path = url_to_fs(self.url, **(storage_options or {}))
        self.root = path.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = protocol in ("file", "local")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def read_bytes(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(name)))

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def list(self, prefix_dir: str) -> list[str]:
        """Names (relative to the root) of the files directly under ``prefix_dir``."""
        target = self.path(prefix_dir)
        try:
            found = self.fs.ls(target, detail=False)
        except FileNotFoundError:
            return []
        self.fs.invalidate_cache()
        return sorted(f"{prefix_dir}/{Path(str(p)).name}" for p in found)

    def commit(self, name: str, data: bytes) -> None:
        """Make ``data`` appear under ``name`` all at once (see the module docstring)."""
        target = self.path(name)
        if self.local:
            final = Path(target)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            self.fs.pipe_file(target, data)
            self.fs.invalidate_cache()

    def commit_json(self, name: str, obj: Any) -> bytes:
        data = json_bytes(obj)
        self.commit(name, data)
        return data

    def remove_stale_temporaries(self) -> int:
        """Temporary files of an earlier killed run (local disk only; object stores have none)."""
        if not self.local or not Path(self.root).is_dir():
            return 0
        removed = 0
        for tmp in Path(self.root).rglob(".tmp-*"):
            tmp.unlink(missing_ok=True)  # another task's worker may just have renamed it
            removed += 1
        return removed


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def open_fs(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = url_to_fs(url, **(storage_options or {}))
    return fs, path
