"""A committed step, converted once into DeepSpeed's universal checkpoint for another world size.

```
<dir>/step_0000100/                     the step as its run wrote it (sealed by COMMITTED)
<dir>/step_0000100/universal/           DeepSpeed's universal checkpoint of it (zero/<param>/...)
<dir>/step_0000100/universal/COMMITTED  source step, its world size, digest of every file
```

ZeRO partitions the fp32 weights and Adam moments by data-parallel rank, so a step written by 2
ranks cannot be loaded by 1 or 4 as it is. DeepSpeed's ``ds_to_universal`` merges every
partition into whole per-parameter tensors, which an engine of any size cuts up again. The
conversion is written under a hidden temporary name, sealed with its own marker and then renamed
into place, so a kill at any point leaves either no conversion (the next resume redoes it) or a
complete, verified one that later restarts at other sizes reuse. It lives inside the step
directory, so pruning the step removes it too, and the step's own marker (which lists only the
files the run wrote) still verifies.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pretrain.checkpoint import layout as ckpt
from pretrain.distributed import engine as eng
from pretrain.faults import Faults

logger = logging.getLogger(__name__)

UNIVERSAL = "universal"  # DeepSpeed's tag: load_checkpoint(<step dir>, tag="universal")
_PARTIAL = ".universal.partial"


def universal_dir(step: Path) -> Path:
    return step / UNIVERSAL


def _verified(directory: Path, source: dict[str, Any]) -> bool:
    """Whether ``directory`` is a complete conversion of the step whose marker is ``source``."""
    try:
        marker = ckpt.read_marker(directory)
    except ckpt.CheckpointError:
        return False
    if marker.get("source_step") != source["step"] or marker.get("source_files") != _digest(source):
        return False
    problems = ckpt.verify(directory)
    for problem in problems:
        logger.warning("universal checkpoint %s: %s", directory, problem)
    return not problems


def _digest(marker: dict[str, Any]) -> str:
    """One hash of the step's recorded file hashes: ties a conversion to the exact step."""
    return ckpt.sha256_text(json.dumps(marker["files"], sort_keys=True))


def ensure_universal(point: ckpt.ResumePoint, faults: Faults | None = None) -> Path:
    """The verified universal conversion of ``point`` (rank 0 only): reused when one exists,
    otherwise converted now and committed atomically. Returns the directory DeepSpeed loads as
    ``load_checkpoint(point.directory, tag="universal")``."""
    target = universal_dir(point.directory)
    if _verified(target, point.marker):
        logger.info("reusing the universal checkpoint %s", target)
        return target
    if target.exists():
        logger.warning("%s is incomplete or does not match its step: converting again", target)
        shutil.rmtree(target)
    partial = point.directory / _PARTIAL
    shutil.rmtree(partial, ignore_errors=True)  # an earlier conversion that was killed
    started = time.perf_counter()
    eng.convert_to_universal(point.directory, partial)
    (faults or Faults()).die_in_conversion(point.step)
    ckpt.seal(
        partial,
        {
            "source_step": point.step,
            "source_world_size": point.marker["world_size"],
            "source_files": _digest(point.marker),
        },
    )
    partial.rename(target)  # the conversion appears whole or not at all
    logger.info(
        "converted step %d (world size %s) to a universal checkpoint in %.1f s: %s",
        point.step,
        point.marker["world_size"],
        time.perf_counter() - started,
        target,
    )
    return target
