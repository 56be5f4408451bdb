"""Checkpoints on object storage: ``checkpoint.dir`` as an fsspec URL (``s3://bucket/prefix``).

```
s3://bucket/run/step_0000100/...          every rank's files, uploaded by the rank that wrote them
s3://bucket/run/step_0000100/COMMITTED    written by rank 0 once every rank confirmed its upload
s3://bucket/run/latest                    rewritten after COMMITTED
<local_dir>/<hash of the URL>/step_...    this node's staging of a save, and the step it resumed
```

The layout and the commit protocol are those of `pretrain.checkpoint.layout`, with one object
store in place of a shared file system. DeepSpeed writes only to local files, so each rank
saves into the node's staging directory as it would locally, hashes its own files, uploads them,
and reports success; only when every rank's upload is confirmed does rank 0 put `COMMITTED` and
then `latest` (a single-object PUT is atomic on S3, so a reader sees a whole marker or none).
A rank killed at any point of an upload leaves a step without `COMMITTED`, which resume never
picks, and the previous committed step untouched: pruning runs only after a commit, with the
rules of `layout.steps_to_prune` (a run prunes only its own timeline's steps).

To resume, evaluate or export, rank 0 (or the one process) reads the newest marker, downloads
the step's files into the local cache (files already there with the recorded size are kept),
and verifies every file against the marker's digests before anything loads it; a step that fails
is reported and the previous one is tried, as locally. The universal conversion of a step for
another world size is made in the local cache and not uploaded (it is derived data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from pretrain.checkpoint import layout as ckpt
from pretrain.faults import Faults

logger = logging.getLogger(__name__)


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names object storage (any fsspec protocol but local files)."""
    return get_protocol(str(location)) not in ("file", "local")


def local_root(url: str, local_dir: str = "") -> Path:
    """This node's staging and cache directory for the checkpoint root ``url``: one per URL, so
    two runs (or a run and an `evaluate` of another one) never share files."""
    base = Path(local_dir) if local_dir else Path(tempfile.gettempdir()) / "mnemos-checkpoints"
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def split_url(url: str) -> tuple[str, int | None]:
    """(checkpoint root URL, step) of ``url``: a root, or one of its ``step_NNNNNNN`` prefixes."""
    url = url.rstrip("/")
    head, _, name = url.rpartition("/")
    match = ckpt.STEP_NAME.match(name)
    if match and "://" in head:
        return head, int(match.group(1))
    return url, None


class RemoteRoot:
    """One checkpoint root on object storage and this node's local copy of it."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, local_dir: str = ""
    ) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = local_root(self.url, local_dir)

    def _key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def step_key(self, step: int, name: str = "") -> str:
        return self._key(ckpt.step_dir("", step).name, *([name] if name else []))

    # -- listing --------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Every step under the root, committed or not, oldest first."""
        self.fs.invalidate_cache()  # another process (rank, earlier run) may have written
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            match = ckpt.STEP_NAME.match(str(entry).rstrip("/").rsplit("/", 1)[-1])
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def is_committed(self, step: int) -> bool:
        return bool(self.fs.exists(self.step_key(step, ckpt.MARKER)))

    def committed_steps(self) -> list[int]:
        return [step for step in self.steps() if self.is_committed(step)]

    def read_marker(self, step: int) -> dict[str, Any]:
        key = self.step_key(step, ckpt.MARKER)
        try:
            data = self.fs.cat_file(key)
        except FileNotFoundError:
            raise ckpt.CheckpointError(
                f"{self.url}/{ckpt.step_dir('', step).name} is not committed (no {ckpt.MARKER} "
                "marker): the save did not finish"
            ) from None
        try:
            marker: dict[str, Any] = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ckpt.CheckpointError(f"{self.url}/{key} is corrupt: {err}") from None
        return marker

    def timeline_steps(self, timeline: str | None, upto: int) -> set[int]:
        """`layout.timeline_steps` of the remote root."""
        found = set()
        for step in self.committed_steps():
            if step > upto:
                continue
            try:
                marker = self.read_marker(step)
            except ckpt.CheckpointError:
                continue
            if marker.get("timeline") == timeline:
                found.add(step)
        return found

    def check_writable(self) -> None:
        """The root can be written (checked before the engine is built, not at the first save)."""
        probe = self._key(f".write-probe-{os.getpid()}")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as err:  # any fsspec backend's failure means the same here
            raise ckpt.CheckpointError(
                f"checkpoint.dir {self.url} cannot be written ({type(err).__name__}: {err}); "
                "check the URL and checkpoint.storage_options"
            ) from None

    # -- saving -----------------------------------------------------------------------------

    def upload(
        self, directory: Path, names: Iterable[str], *, faults: Faults, step: int, rank: int
    ) -> None:
        """Put the files ``names`` of the local step ``directory`` under the remote step."""
        for count, name in enumerate(sorted(names)):
            self.fs.put_file(str(directory / name), self.step_key(step, name))
            if count == 0:
                faults.die_in_upload(step, rank)

    def commit(self, step: int, marker: bytes) -> None:
        """Seal the remote step (rank 0, after every rank confirmed its upload), then point
        `latest` at it: the same order as `layout.commit`."""
        self.fs.pipe_file(self.step_key(step, ckpt.MARKER), marker)
        self.fs.pipe_file(self._key(ckpt.LATEST), f"{ckpt.step_dir('', step).name}\n".encode())

    def remove(self, step: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.step_key(step), recursive=True)

    def remove_unfinished(self) -> list[int]:
        """Remove the remote steps that were never committed (an interrupted save or upload)."""
        removed = [step for step in self.steps() if not self.is_committed(step)]
        for step in removed:
            self.remove(step)
        return removed

    def make_room(self, step: int, own: Collection[int]) -> str | None:
        """`layout.make_room` on the remote root: returns the name a step was moved aside to."""
        if step not in self.steps():
            return None
        if not ckpt.keep_aside(self.is_committed(step), step in own):
            self.remove(step)
            return None
        base = f"{ckpt.step_dir('', step).name}.superseded"
        taken = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.root, detail=False)}
        aside, count = base, 1
        while aside in taken:
            count += 1
            aside = f"{base}.{count}"
        # Object stores have no rename: copy every object, then remove the originals (a kill in
        # between leaves the step where it was, still committed, and a partial copy beside it).
        source = self.step_key(step)
        for key in self.fs.find(source):
            self.fs.copy(key, self._key(aside) + key[len(source) :])
        self.remove(step)
        return aside

    def prune(self, keep_last: int, own: Collection[int] | None) -> list[int]:
        entries = self.steps()
        committed = [step for step in entries if self.is_committed(step)]
        removed = ckpt.steps_to_prune(entries, committed, keep_last, own)
        for step in removed:
            self.remove(step)
        return removed

    # -- reading ----------------------------------------------------------------------------

    def fetch(self, step: int, marker: dict[str, Any]) -> Path:
        """Download the committed ``step`` (recorded by ``marker``) into the local cache and
        return its directory; the caller verifies it. Files already there with the recorded
        size are kept (a node resuming the step it just saved downloads nothing)."""
        directory = ckpt.step_dir(self.local, step)
        directory.mkdir(parents=True, exist_ok=True)
        for name, entry in sorted(marker.get("files", {}).items()):
            target = directory / name
            if target.is_file() and target.stat().st_size == entry.get("bytes"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.download")
            self.fs.get_file(self.step_key(step, name), str(partial))
            partial.replace(target)
        ckpt.write_marker(directory, marker)
        return directory

    def find_resume_point(
        self,
        *,
        step: int | None = None,
        report: Callable[[str], None] = print,
        failed: dict[int, list[str]] | None = None,
    ) -> ckpt.ResumePoint | None:
        """`layout.find_resume_point` on the remote root: each candidate is downloaded and
        verified; the point returned names its local copy."""
        if step is not None:
            if step not in self.committed_steps():
                have = ", ".join(str(s) for s in self.committed_steps()) or "none"
                raise ckpt.CheckpointError(
                    f"{self.url} has no committed step {step} (committed steps: {have})"
                )
            problems = self._fetch_verified(step)
            if problems:
                raise ckpt.CheckpointError(f"step {step} is corrupt: {'; '.join(problems)}")
            return self._point(step)
        for candidate in reversed(self.committed_steps()):
            problems = self._fetch_verified(candidate)
            if not problems:
                self._drop_other_steps(candidate)
                return self._point(candidate)
            if failed is not None:
                failed[candidate] = problems
            report(ckpt.skipped_step_message(candidate, problems))
        return None

    def _point(self, step: int) -> ckpt.ResumePoint:
        directory = ckpt.step_dir(self.local, step)
        return ckpt.ResumePoint(step, directory, ckpt.read_marker(directory))

    def _fetch_verified(self, step: int) -> list[str]:
        try:
            marker = self.read_marker(step)
            problems = ckpt.verify(self.fetch(step, marker))
            if problems:
                # A stale local copy (a file of the same size from another save): start over
                # from the remote files alone before calling the step corrupt.
                shutil.rmtree(ckpt.step_dir(self.local, step), ignore_errors=True)
                problems = ckpt.verify(self.fetch(step, marker))
        except ckpt.CheckpointError as err:
            return [str(err)]
        except (OSError, KeyError, TypeError, AttributeError) as err:
            return [f"{self.url}: cannot download step {step}: {type(err).__name__}: {err}"]
        return [p.replace(str(self.local), self.url) for p in problems]

    def _drop_other_steps(self, keep: int) -> None:
        """Keep the local cache to the one step in use."""
        for step, path in ckpt.step_dirs(self.local):
            if step != keep:
                shutil.rmtree(path, ignore_errors=True)
