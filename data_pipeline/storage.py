"""Output storage through fsspec, with one rule: a file appears under its final name only when it
is complete.

Local disk: write a temporary file in the same directory tree, fsync, then `os.replace` (atomic on
POSIX). Object stores (s3://, gs://, memory://, ...): one whole-object PUT of the finished bytes;
an object store never shows a partial object under a key, so an interrupted upload leaves nothing
there. Shards are built in memory (they are `shard_bytes` large) so both paths get whole bytes.

fsspec is imported only where a file system is needed: an `Output` reaches a worker process
pickled without its file system, and committing to a local directory never makes one, so a
worker writing to local disk does not pay for importing fsspec. `Committer` does the commits of
one worker on a background thread, in order, so that writing and fsync overlap with tokenizing.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fsspec


def local_path(url: str) -> str | None:
    """The local file path ``url`` names (a plain path or ``file://``), or None for anything
    fsspec has to open (other protocols, chained URLs). Lets local reads skip fsspec."""
    if "::" in url:
        return None
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url:
        return None
    return str(Path(url).expanduser())


class Output:
    """A directory or URL prefix that files are committed into."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        self.url = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, path = url_to_fs(self.url, **self.storage_options)
        self.root = path.rstrip("/")
        fs = self._fs
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.local = protocol in ("file", "local")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:  # unpickled in a worker: made on first use
            from fsspec.core import url_to_fs

            self._fs = url_to_fs(self.url, **self.storage_options)[0]
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        # Without the file system: a worker committing to local disk never imports fsspec.
        return {**self.__dict__, "_fs": None}

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
        names = (Path(str(p)).name for p in found)
        # Not a temporary of a commit in progress (or of a killed run): never a committed file.
        return sorted(f"{prefix_dir}/{name}" for name in names if not name.startswith(".tmp-"))

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

    def remove_stale_temporaries(self) -> int:
        """Temporary files of an earlier killed run (local disk only; object stores have none)."""
        if not self.local or not Path(self.root).is_dir():
            return 0
        removed = 0
        for tmp in Path(self.root).rglob(".tmp-*"):
            tmp.unlink(missing_ok=True)  # another task's worker may just have renamed it
            removed += 1
        return removed


class Committer:
    """Commits to ``out`` on a background thread, in the order they are submitted, so that a
    worker tokenizes the next batch while shards are written and fsynced. Memory is bounded:
    `submit` waits while the commits not yet done hold more than ``max_pending`` bytes
    (``size`` for a callable), one commit always being allowed. A failed commit is raised by the
    next `submit` or `wait` (and by every one after), and nothing submitted after it is
    committed (a unit's marker never follows a shard that failed). ``data`` may be a callable
    returning the bytes, evaluated on the thread after every earlier commit (a marker that lists
    the shards' sha256). The thread ends whenever the queue is empty."""

    def __init__(self, out: Output, max_pending: int = 64 << 20) -> None:
        self.out = out
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._items: deque[tuple[str, bytes | Callable[[], bytes], Callable[[], None] | None, int]]
        self._items = deque()
        self._pending = 0
        self._running = False
        self._error: BaseException | None = None

    def submit(
        self,
        name: str,
        data: bytes | Callable[[], bytes],
        then: Callable[[], None] | None = None,
        size: int = 0,
    ) -> None:
        """Commit ``data`` under ``name`` after everything submitted before; ``then`` is called
        on the thread once it is committed."""
        if isinstance(data, bytes):
            size = len(data)
        with self._cond:
            while self._error is None and self._items and self._pending + size > self.max_pending:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._items.append((name, data, then, size))
            self._pending += size
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._items or self._error is not None:
                    self._running = False
                    self._cond.notify_all()
                    return
                name, data, then, size = self._items[0]
            try:
                self.out.commit(name, data if isinstance(data, bytes) else data())
                if then is not None:
                    then()
            except BaseException as err:  # raised in the submitting thread
                with self._cond:
                    self._error = err
                    self._items.clear()
                    self._pending = 0
                    self._running = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._items.popleft()
                self._pending -= size
                self._cond.notify_all()

    def wait(self) -> None:
        """Block until every submitted commit is done; raise the first failure."""
        with self._cond:
            while self._items and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
