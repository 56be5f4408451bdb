"""`data-pipeline prepare` and `finalize`: plan work units, run the uncommitted ones of this task
in worker processes, and (when all units are committed) build the manifest.

Determinism: a unit's shards are a function of the unit and the config only, so the result is
byte-identical whatever ``--workers``, ``--num-tasks`` or the order units finish in. Resumability:
units with a marker are skipped; a killed run leaves only complete files under final names.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from data_pipeline.configuration import to_dict
from data_pipeline.manifest import (
    MANIFEST,
    build_manifest,
    unit_marker_name,
    write_manifest,
)
from data_pipeline.progress import Progress
from data_pipeline.schemas import PrepareConfig
from data_pipeline.storage import Output, json_bytes
from data_pipeline.tokenizer import Tokenizer, single_threaded_env
from data_pipeline.unit_job import run_unit
from data_pipeline.units import WorkUnit, plan_units


class OutputConflictError(ValueError):
    """The output prefix holds a dataset prepared with a different config or tokenizer."""


@dataclass
class PrepareResult:
    units_total: int
    units_run: int
    units_skipped: int
    fingerprint: str | None  # None until every unit is committed and the manifest is written
    seconds: float


def config_hash(cfg: PrepareConfig, tok: Tokenizer) -> str:
    return hashlib.sha256(json_bytes({"config": to_dict(cfg), "tokenizer": tok.hash})).hexdigest()


def tokenizer_entry(cfg: PrepareConfig, tok: Tokenizer) -> dict[str, Any]:
    return {
        "hash": tok.hash,
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids.to_dict(),
        "path": cfg.tokenizer,
    }


def check_output(out: Output, cfg: PrepareConfig, tok: Tokenizer, chash: str) -> None:
    """Refuse to mix datasets: an existing manifest or unit marker must come from this config."""
    if out.exists(MANIFEST):
        old = out.read_json(MANIFEST)
        new = to_dict(cfg)
        if old.get("config") != new or old.get("tokenizer", {}).get("hash") != tok.hash:
            keys = sorted(
                k
                for k in set(old.get("config", {})) | set(new)
                if old.get("config", {}).get(k) != new.get(k)
            )
            if old.get("tokenizer", {}).get("hash") != tok.hash:
                keys.append("tokenizer hash")
            raise OutputConflictError(
                f"{out.url}: already holds a manifest from a different config (differs in: "
                f"{', '.join(keys)}); choose another output or delete it"
            )
    for name in out.list("_units")[:1]:
        marker = out.read_json(name)
        if marker.get("config_hash") != chash:
            raise OutputConflictError(
                f"{out.url}: holds work units ({name}) prepared with a different config or "
                "tokenizer; choose another output or delete it"
            )


# -- worker processes ---------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig, chash: str, q: Any) -> None:
    single_threaded_env()
    _WORKER.update(
        cfg=cfg,
        chash=chash,
        tok=Tokenizer.load(cfg.tokenizer),
        out=Output(cfg.output, cfg.storage_options),
        q=q,
    )


def _worker_run(unit: WorkUnit) -> int:
    q = _WORKER["q"]
    pending = [0, 0, 0]
    last = [time.monotonic()]

    def report(docs: int, tokens: int, bytes_in: int) -> None:
        pending[0] += docs
        pending[1] += tokens
        pending[2] += bytes_in
        if time.monotonic() - last[0] > 1.0 or bytes_in:
            q.put((pending[0], pending[1], pending[2]))
            pending[:] = [0, 0, 0]
            last[0] = time.monotonic()

    run_unit(unit, _WORKER["cfg"], _WORKER["tok"], _WORKER["out"], _WORKER["chash"], report)
    return unit.index


# -- the job ------------------------------------------------------------------------------
def prepare(
    cfg: PrepareConfig,
    *,
    workers: int = 1,
    num_tasks: int = 1,
    task_index: int = 0,
    finalize_when_done: bool | None = None,
    log: TextIO = sys.stderr,
) -> PrepareResult:
    """Run this task's share of the units (unit i belongs to task i % num_tasks). With one task
    the manifest is written at the end; with several, run `finalize` once all tasks are done."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index must be in [0, {num_tasks}), got {task_index}")
    started = time.monotonic()
    tok = Tokenizer.load(cfg.tokenizer)
    out = Output(cfg.output, cfg.storage_options)
    chash = config_hash(cfg, tok)
    check_output(out, cfg, tok, chash)
    units = plan_units(cfg)
    mine = [u for u in units if u.index % num_tasks == task_index]
    committed = {name for name in out.list("_units")}
    todo = [u for u in mine if unit_marker_name(u.index) not in committed]
    print(
        f"[prepare] {len(units)} units, this task {len(mine)}, already committed "
        f"{len(mine) - len(todo)}, to run {len(todo)} with {workers} worker(s)",
        file=log,
    )
    progress = Progress("prepare", len(todo), log)
    if todo:
        _run_units(todo, cfg, chash, workers, progress)
    print(progress.line().replace("[prepare]", "[prepare done]"), file=log)
    fingerprint = None
    if finalize_when_done if finalize_when_done is not None else num_tasks == 1:
        fingerprint = finalize(cfg, log=log, units=units, tok=tok)
    return PrepareResult(
        len(units), len(todo), len(mine) - len(todo), fingerprint, time.monotonic() - started
    )


def _run_units(
    todo: list[WorkUnit], cfg: PrepareConfig, chash: str, workers: int, progress: Progress
) -> None:
    if workers <= 1:
        single_threaded_env()
        tok = Tokenizer.load(cfg.tokenizer)
        out = Output(cfg.output, cfg.storage_options)
        for unit in todo:
            run_unit(unit, cfg, tok, out, chash, lambda d, t, b: progress.add(d, t, b))
            progress.add(units=1)
        return
    # spawn, not fork: HF tokenizers' thread pool and s3fs's event loop do not survive a fork.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    stop = threading.Event()
    drainer = progress.drain(q, stop)
    try:
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, chash, q)) as pool:
            for _ in pool.imap_unordered(_worker_run, todo, chunksize=1):
                progress.add(units=1)
    finally:
        stop.set()
        drainer.join(timeout=5)


def finalize(
    cfg: PrepareConfig,
    *,
    log: TextIO = sys.stderr,
    units: list[WorkUnit] | None = None,
    tok: Tokenizer | None = None,
) -> str:
    """Build manifest.json from the unit markers; every unit must be committed."""
    tok = tok or Tokenizer.load(cfg.tokenizer)
    out = Output(cfg.output, cfg.storage_options)
    chash = config_hash(cfg, tok)
    check_output(out, cfg, tok, chash)
    units = units if units is not None else plan_units(cfg)
    committed = set(out.list("_units"))
    missing = [u.index for u in units if unit_marker_name(u.index) not in committed]
    if missing:
        raise RuntimeError(
            f"{out.url}: {len(missing)} of {len(units)} units are not committed yet (first: "
            f"{missing[:5]}); run the remaining `prepare --task-index` tasks first"
        )
    markers = [out.read_json(unit_marker_name(u.index)) for u in units]
    if any(m.get("config_hash") != chash for m in markers):
        raise OutputConflictError(f"{out.url}: unit markers come from a different config")
    manifest = build_manifest(
        to_dict(cfg), tokenizer_entry(cfg, tok), tok.dtype, cfg.chunk_len, markers
    )
    fingerprint = write_manifest(out, manifest)
    out.remove_stale_temporaries()
    s = manifest["splits"]
    print(
        f"[finalize] {out.url}/{MANIFEST}: train {s['train']['tokens']:,} tokens in "
        f"{len(s['train']['shards'])} shards, validation {s['validation']['tokens']:,} tokens in "
        f"{len(s['validation']['shards'])} shards; fingerprint {fingerprint[:16]}",
        file=log,
    )
    return fingerprint
