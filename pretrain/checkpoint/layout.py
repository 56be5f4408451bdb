"""Checkpoint layout and the commit protocol that makes checkpoints atomic.

```
<dir>/step_0000100/            DeepSpeed's shards, trainer_state_rank{r}.pt, config.yaml, ...
<dir>/step_0000100/COMMITTED   written last by rank 0: step, world size, digest of every file
<dir>/latest                   "step_0000100", rewritten only after COMMITTED exists
```

A step directory without `COMMITTED` is a save that did not finish (a crash, a kill -9): it is never
resumed from and is removed by the next save. The previous committed step is untouched until a
newer one is committed and `keep_last` allows pruning it, so a crash mid-save never destroys the
last good checkpoint. A run prunes only its own steps (`prune`'s ``own``: the steps of the
timeline it resumed and those it wrote); a committed step of another timeline that stands where
the run saves is moved aside (`make_room`), never deleted. The checkpoint directory must be
visible to every rank (a shared file system on multi-node jobs), as DeepSpeed's own
checkpointing also requires.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import xxhash

from data_pipeline.configuration import flatten
from pretrain.config import ExperimentConfig

MARKER = "COMMITTED"
LATEST = "latest"
CONFIG_FILE = "config.yaml"  # the run's resolved config, in every step directory
DS_CONFIG_FILE = "ds_config.json"  # the DeepSpeed config dict the run used
STEP_NAME = re.compile(r"^step_(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, uncommitted, corrupt, or not a checkpoint directory at all."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def trainer_state_path(directory: Path, rank: int) -> Path:
    return directory / f"trainer_state_rank{rank}.pt"


# The digest recorded per file in new markers. It guards against corruption (a flipped bit, a
# cut or swapped file), not against someone forging a checkpoint, so a fast non-cryptographic
# 128-bit hash does: xxh3-128 runs at ~10 GB/s per core where sha256 runs at ~0.7 GB/s, and on a
# busy node sha256 alone cost a quarter of a save (docs/benchmarks.md "Checkpoint save").
# Markers written before record sha256, and still verify.
DIGEST = "xxh3_128"
DIGESTS: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def new_digest() -> Any:
    """A running digest of the kind `DIGEST` names (what a file is hashed with as it is written)."""
    return DIGESTS[DIGEST]()


def _file_digest(path: Path, algorithm: str = DIGEST) -> str:
    digest = DIGESTS[algorithm]()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return str(digest.hexdigest())


def _recorded_digest(entry: dict[str, Any]) -> tuple[str, str]:
    """(algorithm, hex digest) of a marker's file entry, of whichever algorithm wrote it."""
    for algorithm in DIGESTS:
        if algorithm in entry:
            return algorithm, str(entry[algorithm])
    raise KeyError(f"no digest ({', '.join(DIGESTS)}) in {entry}")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush to disk, then rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _files_of(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != MARKER and not p.name.startswith(".")
    )


_OWNER = re.compile(r"(?:zero_pp_rank_|trainer_state_rank)(\d+)")


def owner_rank(name: str) -> int:
    """The rank that wrote a file of a step: DeepSpeed's ZeRO partitions and the trainer state
    name their rank; everything else (the model states without ZeRO, configs) is rank 0's."""
    match = _OWNER.search(Path(name).name)
    return int(match.group(1)) if match else 0


def hash_files(
    directory: Path, *, rank: int | None = None, known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Digest (`DIGEST`) and size of the files of ``directory`` (those ``rank`` wrote, when
    given), keyed by their path inside it: what `COMMITTED` records. ``known``: entries already
    hashed while being written (keyed by relative path), taken as they are."""
    known = known or {}
    out = {}
    for p in _files_of(directory):
        name = str(p.relative_to(directory))
        if name in known:
            out[name] = known[name]
        elif rank is None or owner_rank(name) == rank:
            out[name] = {DIGEST: _file_digest(p), "bytes": p.stat().st_size}
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def marker_bytes(fields: dict[str, Any], files: dict[str, dict[str, Any]]) -> bytes:
    """The content of a `COMMITTED` marker: ``fields`` plus every file's hash and size."""
    return json.dumps({**fields, "files": files}, indent=1, sort_keys=True).encode()


def write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Write ``marker`` (a whole one, as read from another copy of the step) as ``directory``'s."""
    _write_atomically(directory / MARKER, json.dumps(marker, indent=1, sort_keys=True).encode())


def seal(
    directory: Path, fields: dict[str, Any], files: dict[str, dict[str, Any]] | None = None
) -> None:
    """Write ``directory``'s marker: ``fields`` plus the hash of every file (``files`` when the
    ranks hashed them already, else hashed here)."""
    marker = marker_bytes(fields, hash_files(directory) if files is None else files)
    _write_atomically(directory / MARKER, marker)


def commit(
    directory: Path,
    *,
    step: int,
    world_size: int,
    extra: dict[str, Any] | None = None,
    files: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Seal a fully written step directory (rank 0, after every rank has finished writing)."""
    seal(directory, {"step": step, "world_size": world_size, **(extra or {})}, files)
    _write_atomically(directory.parent / LATEST, f"{directory.name}\n".encode())


def read_marker(directory: Path) -> dict[str, Any]:
    path = directory / MARKER
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not committed (no {MARKER} marker): the save did not finish"
        )
    try:
        marker: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    return marker


def verify(directory: Path) -> list[str]:
    """Every problem with a committed step directory: an unreadable marker, missing files,
    wrong sizes or hashes."""
    try:
        marker = read_marker(directory)
        recorded = marker["files"]
        if not isinstance(recorded, dict):
            raise TypeError("'files' is not a mapping")
    except CheckpointError as err:
        return [str(err)]
    except (KeyError, TypeError) as err:
        return [f"{directory / MARKER} is corrupt: {type(err).__name__}: {err}"]
    problems = []
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, expected {expected['bytes']}")
        else:
            algorithm, digest = _recorded_digest(expected)
            if _file_digest(path, algorithm) != digest:
                problems.append(f"{path}: {algorithm} does not match the one recorded at commit")
    return problems


def step_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Every step directory under ``root``, committed or not, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def split_path(path: str | Path) -> tuple[Path, int | None]:
    """(checkpoint root, step): the one answer to "is this a checkpoint root or a step
    directory". A root (``checkpoint.dir``: it holds step directories) gives ``(path, None)``;
    one ``step_NNNNNNN`` directory gives ``(its root, its step)``; anything else is refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory")
    if step_dirs(path):
        return path, None
    as_step = [s for s, p in step_dirs(path.parent) if p.resolve() == path.resolve()]
    if not as_step:
        raise CheckpointError(
            f"{path} is not a checkpoint directory: it holds no step_NNNNNNN directories "
            "and is not one itself (pass checkpoint.dir of a training run, or one of its "
            "step directories)"
        )
    return path.parent, as_step[0]


def committed_steps(root: str | Path) -> list[int]:
    return [step for step, path in step_dirs(root) if (path / MARKER).is_file()]


@dataclass
class ResumePoint:
    step: int
    directory: Path
    marker: dict[str, Any]


def find_resume_point(
    root: str | Path,
    *,
    step: int | None = None,
    report: Callable[[str], None] = print,
    failed: dict[int, list[str]] | None = None,
) -> ResumePoint | None:
    """The newest committed step whose files match their hashes (or exactly ``step``).

    A corrupt checkpoint is reported through ``report`` (and its problems recorded in
    ``failed``) and skipped for the previous one; with an explicit ``step`` it is an error
    instead, since the user asked for that one.
    """
    root = Path(root)
    if step is not None:
        directory = step_dir(root, step)
        if not directory.is_dir():
            have = ", ".join(str(s) for s in committed_steps(root)) or "none"
            raise CheckpointError(f"{root} has no step {step} (committed steps: {have})")
        problems = verify(directory)
        if problems:
            raise CheckpointError(f"step {step} is corrupt: {'; '.join(problems)}")
        return ResumePoint(step, directory, read_marker(directory))
    for candidate in reversed(committed_steps(root)):
        directory = step_dir(root, candidate)
        problems = verify(directory)
        if not problems:
            return ResumePoint(candidate, directory, read_marker(directory))
        if failed is not None:
            failed[candidate] = problems
        report(skipped_step_message(candidate, problems))
    return None


def skipped_step_message(step: int, problems: list[str]) -> str:
    """What resume says of a committed step that fails verification (then tries the one before)."""
    return f"checkpoint step {step} failed verification and is skipped: " + "; ".join(problems)


def unusable_steps_error(root: str | Path, failed: dict[int, list[str]]) -> CheckpointError:
    """The error for a checkpoint directory whose committed steps all fail verification
    (``failed``: step -> problems): one line naming the first problem of each step."""
    shown = [
        f"step {step}: {problems[0]}"
        + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        for step, problems in sorted(failed.items(), reverse=True)
    ]
    more = f"; and {len(shown) - 3} more steps" if len(shown) > 3 else ""
    return CheckpointError(
        f"{root}: none of its committed steps ({', '.join(str(s) for s in sorted(failed))}) "
        f"passes verification: {'; '.join(shown[:3])}{more}"
    )


def timeline_steps(root: str | Path, timeline: str | None, upto: int) -> set[int]:
    """The committed steps up to ``upto`` whose marker names ``timeline`` (None: markers that
    name none, as written before timelines were recorded)."""
    found = set()
    for step in committed_steps(root):
        if step > upto:
            continue
        try:
            marker = read_marker(step_dir(root, step))
        except CheckpointError:
            continue
        if marker.get("timeline") == timeline:
            found.add(step)
    return found


def keep_aside(committed: bool, owned: bool) -> bool:
    """Whether a step standing where a run saves is kept under another name (a committed step
    the run does not own) rather than removed (an unfinished save, or the run's own step)."""
    return committed and not owned


def make_room(root: str | Path, step: int, own: Collection[int]) -> Path | None:
    """Clear the way for saving ``step`` (rank 0): a save that never committed is removed; a
    committed step this run does not own (another timeline's, or one that failed
    verification) is renamed to ``step_NNNNNNN.superseded[.N]``, out of every reader's sight
    but not deleted. Returns the new name of a step moved aside."""
    directory = step_dir(root, step)
    if not directory.is_dir():
        return None
    if not keep_aside((directory / MARKER).is_file(), step in own):
        shutil.rmtree(directory, ignore_errors=True)
        return None
    aside = directory.with_name(f"{directory.name}.superseded")
    count = 1
    while aside.exists():
        count += 1
        aside = directory.with_name(f"{directory.name}.superseded.{count}")
    directory.rename(aside)
    return aside


def steps_to_prune(
    entries: Collection[int],
    committed: Collection[int],
    keep_last: int,
    own: Collection[int] | None = None,
) -> list[int]:
    """The one pruning rule, for local and object-storage checkpoints alike: of the step
    numbers ``entries`` (``committed``: those with a marker), remove the unfinished saves and
    all but the newest ``keep_last`` of the run's own committed steps. ``own``: the steps the
    run may remove (the timeline it resumed and the steps it wrote); a committed step outside
    it is never touched. None: every committed step is the run's."""
    done = sorted(committed)
    mine = [step for step in done if own is None or step in own]
    keep = set(mine[-keep_last:]) | {step for step in done if step not in mine}
    return [step for step in sorted(entries) if step not in keep]


def prune(root: str | Path, keep_last: int, own: Collection[int] | None = None) -> list[Path]:
    """Remove what `steps_to_prune` says of ``root``'s step directories (rank 0)."""
    entries = dict(step_dirs(root))
    committed = [step for step, path in entries.items() if (path / MARKER).is_file()]
    removed = []
    for step in steps_to_prune(entries, committed, keep_last, own):
        shutil.rmtree(entries[step], ignore_errors=True)
        removed.append(entries[step])
    return removed


def remove_unfinished(root: str | Path) -> list[Path]:
    """Remove step directories that were never committed (leftovers of an interrupted save)."""
    removed = []
    for _, path in step_dirs(root):
        if not (path / MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------
# Per-rank trainer state: plain tensors and numbers, loaded with weights_only=True
# --------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray; as a list it loads under weights_only=True.
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, keys, *rest = state["numpy"]
    random.setstate(_as_python_random_state(state["python"]))
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_random_state(state: Any) -> tuple[Any, ...]:
    # Lists come back where tuples went in after some serialisation paths; random wants tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_trainer_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    state: dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu")
    return state


# -- which config keys may change -------------------------------------------------------------

# At resume: a change to these makes the checkpoint meaningless for the run (the weights, the
# data order or the memory layout would not line up). Anything else may change, and is reported.
FIXED_AT_RESUME = ("model.", "data.manifest", "data.train_split", "data.seed", "train.seq_len")
# When a step is read (evaluate, export, generate): every model key is fixed except these, which
# change how the weights are used, not their shapes. Anything outside model.* may change.
TUNABLE_WHEN_READING = ("model.mem_len", "model.dropout", "model.attn_dropout")


def config_changes(
    saved: ExperimentConfig, new: ExperimentConfig, *, at: Literal["resume", "read"]
) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a step's saved config and ``new``, each as
    'key: old -> new', for a run resuming the step (``at="resume"``) or a reader of it."""
    before, after = flatten(saved), flatten(new)
    refused: list[str] = []
    allowed: list[str] = []
    for key in sorted(set(before) | set(after)):
        if ".storage_options" in key:
            continue  # how storage is reached (often credentials): not recorded, not compared
        if before.get(key) != after.get(key):
            line = f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            if at == "resume":
                fixed = key.startswith(FIXED_AT_RESUME)
            else:
                fixed = key.startswith("model.") and key not in TUNABLE_WHEN_READING
            (refused if fixed else allowed).append(line)
    return refused, allowed
