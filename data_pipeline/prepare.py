"""`data-pipeline prepare` and `finalize`: plan work units, run the uncommitted ones of this task
in worker processes, and (when all units are committed) build the manifest.

Determinism: a unit's shards are a function of the unit and the config only, so the result is
byte-identical whatever ``--workers``, ``--num-tasks`` or the order units finish in. Resumability:
units with a marker are skipped; a killed run leaves only complete files under final names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from data_pipeline.configuration import to_dict, without_defaults, without_storage_options
from data_pipeline.manifest import (
    MANIFEST,
    build_manifest,
    manifest_fingerprint,
    unit_marker_name,
    write_manifest,
)
from data_pipeline.progress import Progress
from data_pipeline.schemas import PrepareConfig
from data_pipeline.skips import SkipSummary
from data_pipeline.storage import Committer, Output, json_bytes
from data_pipeline.tokenizer import Tokenizer, single_threaded_env
from data_pipeline.unit_job import run_unit
from data_pipeline.units import WorkUnit, plan_units
from data_pipeline.worker import worker_main

logger = logging.getLogger(__name__)


class OutputConflictError(ValueError):
    """The output prefix holds a dataset prepared with a different config or tokenizer."""


@dataclass
class PrepareResult:
    units_total: int
    units_run: int
    units_skipped: int
    fingerprint: str | None  # None until every unit is committed and the manifest is written
    seconds: float


def recorded_config(cfg: PrepareConfig) -> dict[str, Any]:
    """The resolved config as the manifest records it: everything but storage options."""
    recorded: dict[str, Any] = without_storage_options(to_dict(cfg))
    return recorded


def recipe(cfg: PrepareConfig | dict[str, Any]) -> dict[str, Any]:
    """What identifies a dataset's recipe: its recorded config without the keys at their
    defaults. A key added to the schema later (with a default that keeps the old behaviour)
    then changes neither the recipe nor its hash, and outputs prepared before it are still
    recognised as this config's. ``cfg`` may be a manifest's recorded config (older manifests
    recorded storage options too: they are left out here as well). Nor is
    ``source.max_skipped_fraction`` part of it: it decides whether the output is accepted, not
    its bytes, so a run refused for it finishes the same output when rerun with a higher one."""
    tree = cfg if isinstance(cfg, dict) else to_dict(cfg)
    chosen: dict[str, Any] = without_defaults(PrepareConfig, without_storage_options(tree))
    source = chosen.pop("source", {})
    if isinstance(source, dict):
        source = {k: v for k, v in source.items() if k != "max_skipped_fraction"}
    if source:
        chosen["source"] = source
    return chosen


def config_hash(cfg: PrepareConfig, tok: Tokenizer) -> str:
    """The hash unit markers carry: the recipe's and the tokenizer's."""
    return hashlib.sha256(json_bytes({"config": recipe(cfg), "tokenizer": tok.hash})).hexdigest()


def accepted_config_hashes(cfg: PrepareConfig, tok: Tokenizer) -> set[str]:
    """`config_hash`, and the hash over the whole resolved config that markers written before
    recipes carried (so outputs in progress then are still this config's, as long as the
    schema has not gained keys since; a finished output is recognised by its manifest)."""
    whole = json_bytes({"config": to_dict(cfg), "tokenizer": tok.hash})
    return {config_hash(cfg, tok), hashlib.sha256(whole).hexdigest()}


def tokenizer_entry(cfg: PrepareConfig, tok: Tokenizer) -> dict[str, Any]:
    return {
        "hash": tok.hash,
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids.to_dict(),
        "path": cfg.tokenizer,
    }


def check_output(out: Output, cfg: PrepareConfig, tok: Tokenizer) -> bytes | None:
    """Refuse to mix datasets: an existing manifest or unit marker must come from this config
    (the same recipe: see `recipe`). Returns the existing manifest's bytes, if any."""
    if out.exists(MANIFEST):
        data = out.read_bytes(MANIFEST)
        old_manifest = json.loads(data)
        old, new = recipe(old_manifest.get("config", {})), recipe(cfg)
        if old != new or old_manifest.get("tokenizer", {}).get("hash") != tok.hash:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if old_manifest.get("tokenizer", {}).get("hash") != tok.hash:
                keys.append("tokenizer hash")
            raise OutputConflictError(
                f"{out.url}: already holds a manifest from a different config (differs in: "
                f"{', '.join(keys)}); choose another output or delete it"
            )
        # A finished dataset of this recipe: its markers may carry the hash of an older
        # version's config form, which no longer matters (the manifest is kept as it is).
        return data
    accepted = accepted_config_hashes(cfg, tok)
    for name in out.list("_units")[:1]:
        marker = out.read_json(name)
        if marker.get("config_hash") not in accepted:
            raise OutputConflictError(
                f"{out.url}: holds work units ({name}) prepared with a different config or "
                "tokenizer; choose another output or delete it"
            )
    return None


# -- the job ------------------------------------------------------------------------------
def prepare(
    cfg: PrepareConfig,
    *,
    workers: int = 1,
    num_tasks: int = 1,
    task_index: int = 0,
    finalize_when_done: bool | None = None,
    keep_rejected: str | None = None,
) -> PrepareResult:
    """Run this task's share of the units (unit i belongs to task i % num_tasks). With one task
    the manifest is written at the end; with several, run `finalize` once all tasks are done.

    A recipe with ``quality`` needs its stages done first (`data_pipeline.quality`): a single
    task runs them here; several tasks need ``data-pipeline quality`` run for every stage.
    ``keep_rejected``: a directory or URL that gets the documents the stages removed."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index must be in [0, {num_tasks}), got {task_index}")
    started = time.monotonic()
    tok = Tokenizer.load(cfg.tokenizer)
    out = Output(cfg.output, cfg.storage_options)
    chash = config_hash(cfg, tok)
    check_output(out, cfg, tok)
    if cfg.quality.enabled:
        _quality_stages_done(cfg, out, workers, num_tasks)
    units = plan_units(cfg)
    mine = [u for u in units if u.index % num_tasks == task_index]
    committed = {name for name in out.list("_units")}
    todo = [u for u in mine if unit_marker_name(u.index) not in committed]
    logger.info(
        "[prepare] %d units, this task %d, already committed %d, to run %d with %d worker(s)",
        len(units),
        len(mine),
        len(mine) - len(todo),
        len(todo),
        workers,
    )
    progress = Progress("prepare", len(todo))
    if todo:
        _run_units(todo, cfg, tok, out, chash, workers, progress, keep_rejected)
    logger.info("%s", progress.line().replace("[prepare]", "[prepare done]"))
    fingerprint = None
    if finalize_when_done if finalize_when_done is not None else num_tasks == 1:
        fingerprint = finalize(cfg, units=units, tok=tok)  # says what was skipped
    else:  # this task's units only; finalize checks the whole dataset's share
        markers = [out.read_json(unit_marker_name(u.index)) for u in mine]
        SkipSummary.from_markers(markers).log(f"prepare task {task_index}")
    return PrepareResult(
        len(units), len(todo), len(mine) - len(todo), fingerprint, time.monotonic() - started
    )


def _run_units(
    todo: list[WorkUnit],
    cfg: PrepareConfig,
    tok: Tokenizer,
    out: Output,
    chash: str,
    workers: int,
    progress: Progress,
    keep_rejected: str | None = None,
) -> None:
    """Run ``todo`` on ``workers`` processes: this one and ``workers - 1`` spawned ones, all
    taking units from one queue. This process starts on the first unit at once, while the
    others start up (imports, tokenizer), so start-up costs one process's worth of wall time
    less; a thread here hands units to the others over pipes and applies their progress."""
    single_threaded_env()  # here, and inherited by the workers before they import tokenizers
    queue = deque(todo)
    errors: list[BaseException] = []
    helpers: list[tuple[BaseProcess, Connection]] = []
    dispatcher: threading.Thread | None = None
    committer = Committer(out, cfg.shard_bytes)
    try:
        if min(workers, len(todo)) > 1:
            # spawn, not fork: HF tokenizers' thread pool and s3fs's event loop do not survive a
            # fork. The tokenizer and output travel pickled (no storage reads in the worker).
            ctx = mp.get_context("spawn")
            for _ in range(min(workers, len(todo)) - 1):
                mine, theirs = ctx.Pipe()
                # The tokenizer goes over the pipe (see `_dispatch`), not with these arguments: the
                # spawn handshake blocks for good if a child dies before reading arguments
                # larger than a pipe buffer (the parent holds the pipe's other end meanwhile).
                proc = ctx.Process(
                    target=worker_main, args=(theirs, cfg, out, chash, keep_rejected), daemon=True
                )
                proc.start()
                theirs.close()
                helpers.append((proc, mine))
            dispatcher = threading.Thread(
                target=_dispatch,
                args=(helpers, tok, queue, workers, progress, errors),
                daemon=True,
            )
            dispatcher.start()
        while not errors:
            try:
                unit = queue.popleft()
            except IndexError:
                break
            run_unit(
                unit,
                cfg,
                tok,
                out,
                chash,
                lambda d, t, b: progress.add(d, t, b),
                committer,
                lambda: progress.add(units=1),
                keep_rejected,
            )
        committer.wait()
        if dispatcher is not None:
            dispatcher.join()
    finally:
        queue.clear()
        # This process's last commits, also after a failure (which is the error to raise).
        with contextlib.suppress(BaseException):
            committer.wait()
        for helper, pipe in helpers:
            if helper.is_alive():
                helper.terminate()  # only after a failure: a unit without a marker is redone
            helper.join()
            pipe.close()
    if errors:
        raise errors[0]


def _quality_stages_done(cfg: PrepareConfig, out: Output, workers: int, num_tasks: int) -> None:
    from data_pipeline import quality

    quality.check_quality_output(out, cfg)
    if out.exists(quality.SUMMARY):
        return
    if num_tasks > 1:
        raise RuntimeError(
            f"{out.url}: the recipe's quality stages are not done ({quality.SUMMARY} is "
            "missing); run `data-pipeline quality CONFIG --stage scan|buckets|clusters` (each "
            "stage's tasks, in that order) before the prepare tasks"
        )
    quality.run_stages(cfg, workers=workers)


def _dispatch(
    helpers: list[tuple[BaseProcess, Connection]],
    tok: Tokenizer,
    queue: deque[WorkUnit],
    workers: int,
    progress: Progress,
    errors: list[BaseException],
) -> None:
    """Send each spawned worker the tokenizer (pickled as its artifact), then units from
    ``queue`` until it is empty and they have exited. Each
    gets one unit ahead while many are left (it never waits for this thread, which may wait
    for the GIL), and none ahead near the end (the last units go to whoever is free)."""
    procs = {conn: proc for proc, conn in helpers}
    given = dict.fromkeys(procs, 0)  # units sent and not done yet
    exited: set[Connection] = set()

    def top_up(conn: Connection) -> None:
        while given[conn] < (2 if len(queue) >= workers else 1):
            try:
                unit: WorkUnit | None = queue.popleft()
            except IndexError:
                unit = None
            if unit is None and given[conn] > 0:
                return  # told to stop once its units are done
            conn.send(unit)
            if unit is None:
                given[conn] = -1  # stopped
                return
            given[conn] += 1

    with contextlib.suppress(OSError, ValueError):  # pipes closed under us: torn down
        for conn in procs:
            conn.send(tok)
        _serve(procs, given, exited, top_up, progress, errors, queue)


def _serve(
    procs: dict[Connection, BaseProcess],
    given: dict[Connection, int],
    exited: set[Connection],
    top_up: Callable[[Connection], None],
    progress: Progress,
    errors: list[BaseException],
    queue: deque[WorkUnit],
) -> None:
    for conn in procs:
        top_up(conn)
    live = set(procs)
    while live:
        for ready in wait(list(live)):
            assert isinstance(ready, Connection)
            conn = ready
            try:
                message = conn.recv()
            except (EOFError, OSError):
                live.discard(conn)
                proc = procs[conn]
                proc.join(timeout=5)
                if conn not in exited:
                    errors.append(
                        RuntimeError(
                            f"prepare worker process {proc.pid} died (exit code "
                            f"{proc.exitcode}); its unfinished units have no marker and are "
                            "redone by a rerun"
                        )
                    )
                    queue.clear()
                continue
            kind = message[0]
            if kind == "progress":
                progress.add(*message[1:])
            elif kind == "done":
                progress.add(units=1)
                given[conn] -= 1
                if given[conn] >= 0:
                    top_up(conn)
            elif kind == "error":
                errors.append(message[1])
                queue.clear()
                exited.add(conn)
            elif kind == "exit":
                exited.add(conn)


def _quality_summary(cfg: PrepareConfig, out: Output) -> dict[str, Any] | None:
    """What the quality stages removed, for the manifest (None for a recipe without them)."""
    if not cfg.quality.enabled:
        return None
    from data_pipeline.quality import SUMMARY

    summary: dict[str, Any] = out.read_json(SUMMARY)
    summary.pop("hash", None)
    return summary


def finalize(
    cfg: PrepareConfig,
    *,
    units: list[WorkUnit] | None = None,
    tok: Tokenizer | None = None,
) -> str:
    """Build manifest.json from the unit markers; every unit must be committed."""
    tok = tok or Tokenizer.load(cfg.tokenizer)
    out = Output(cfg.output, cfg.storage_options)
    existing = check_output(out, cfg, tok)
    units = units if units is not None else plan_units(cfg)
    committed = set(out.list("_units"))
    missing = [u.index for u in units if unit_marker_name(u.index) not in committed]
    if missing:
        raise RuntimeError(
            f"{out.url}: {len(missing)} of {len(units)} units are not committed yet (first: "
            f"{missing[:5]}); run the remaining `prepare --task-index` tasks first"
        )
    if existing is not None:
        # Finalized before, from the same recipe (check_output): keep its bytes, so the
        # fingerprint that loader states and stream plans hang on stays what it was, even if
        # the resolved config has gained defaulted keys since. It was accepted then: its skips
        # are said again, not checked again.
        manifest = json.loads(existing)
        fingerprint = manifest_fingerprint(existing)
        counters = manifest.get("counters", {})
        SkipSummary.from_markers([{"source": {"path": out.url}, "counters": counters}]).log(
            "finalize"
        )
    else:
        markers = [out.read_json(unit_marker_name(u.index)) for u in units]
        accepted = accepted_config_hashes(cfg, tok)
        if any(m.get("config_hash") not in accepted for m in markers):
            raise OutputConflictError(f"{out.url}: unit markers come from a different config")
        # Before the manifest: a dataset that lost too much of its input is not finished (its
        # committed units stay, so a rerun with a higher threshold only writes the manifest).
        skips = SkipSummary.from_markers(markers)
        skips.log("finalize")
        skips.check(cfg.source.max_skipped_fraction)
        manifest = build_manifest(
            recorded_config(cfg),
            tokenizer_entry(cfg, tok),
            tok.dtype,
            cfg.chunk_len,
            markers,
            _quality_summary(cfg, out),
        )
        fingerprint = write_manifest(out, manifest)
    out.remove_stale_temporaries()
    s = manifest["splits"]
    logger.info(
        "[finalize] %s/%s: train %s tokens in %d shards, validation %s tokens in %d shards; "
        "fingerprint %s",
        out.url,
        MANIFEST,
        f"{s['train']['tokens']:,}",
        len(s["train"]["shards"]),
        f"{s['validation']['tokens']:,}",
        len(s["validation"]["shards"]),
        fingerprint[:16],
    )
    return fingerprint
