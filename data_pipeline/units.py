"""Deterministic work units: a whole file, or a line-aligned byte range of a large uncompressed
file, so that one big file still keeps every worker busy.

A range is given by nominal byte offsets; its real bounds are the first *boundary* at or after
each nominal offset (a line start; in ``paragraphs`` mode the start of a blank line). Both
neighbours compute the same boundary, so ranges partition the file exactly, every unit finds its
own bounds by reading near them, and no pre-scan of the file is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import IO, Any

from data_pipeline.schemas import PrepareConfig, SourceConfig
from data_pipeline.sources import SourceFile, expand_sources, open_raw

SCAN_CHUNK = 1 << 16


@dataclass(frozen=True)
class WorkUnit:
    index: int
    source: SourceFile
    start: int  # nominal byte range in the (uncompressed) file; end -1: to the end of the file
    end: int
    limit: int  # end of the part this range lies in (a boundary): real bounds never pass it
    split: str | None  # fixed split (position and files modes) or None: decided per document

    @property
    def is_whole_file(self) -> bool:
        return self.start == 0 and self.end == -1


def is_blank(line: bytes) -> bool:
    return not line.strip()


def _next_line_start(f: IO[bytes], offset: int, stop: int) -> int | None:
    """The first line start in [offset, stop] (0, or right after a newline), or None."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while pos < stop:
        block = f.read(min(SCAN_CHUNK, stop - pos))
        if not block:
            return pos
        hit = block.find(b"\n")
        if hit >= 0:
            return pos + hit + 1
        pos += len(block)
    return None


def find_boundary(
    f: IO[bytes], offset: int, size: int, text_mode: str, fmt: str, stop: int | None = None
) -> int | None:
    """The real position of the nominal cut ``offset`` (see the module docstring), or None when
    it lies beyond ``stop``: the unit starting there is empty, and scanning further would make
    every unit inside one huge line read the rest of that line (quadratic)."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    limit = size if stop is None else min(size, stop)
    pos = _next_line_start(f, offset, limit)
    if pos is None:
        return None
    if fmt != "text" or text_mode != "paragraphs":
        return pos
    f.seek(pos)
    at_line_start = True
    while pos < limit:
        piece = f.readline(SCAN_CHUNK)  # bounded: a huge line is scanned, never held
        if not piece:
            break
        if at_line_start and piece.endswith(b"\n") and is_blank(piece):
            return pos
        at_line_start = piece.endswith(b"\n")
        pos += len(piece)
    return size if stop is None or pos >= size else None


def _splittable(source: SourceFile, cfg: SourceConfig, position_split: bool) -> bool:
    if source.compression is not None or cfg.format == "parquet":
        return False
    # One document per file stays whole unless the position split cuts it anyway.
    return position_split or not (cfg.format == "text" and cfg.text_mode == "file")


def plan_units(cfg: PrepareConfig) -> list[WorkUnit]:
    """Every work unit of the corpus, in a fixed order that depends only on the inputs and the
    config (never on worker counts), so unit numbers name the same text on every machine."""
    position = cfg.split.mode == "position"
    sources = expand_sources(cfg.source.paths, cfg.source.storage_options)
    held_out = _validation_files(cfg, sources) if cfg.split.mode == "files" else None
    units: list[WorkUnit] = []
    for source in sources:
        # files mode: the whole file's split is fixed; otherwise decided per document by hash.
        whole_file_split = None if held_out is None else _file_split(source, held_out)
        if position and (source.compression is not None or cfg.source.format == "parquet"):
            raise ValueError(
                f"{source.path}: split.mode=position needs uncompressed text or JSON Lines "
                "(the split point is a byte offset)"
            )
        if not _splittable(source, cfg.source, position):
            units.append(WorkUnit(len(units), source, 0, -1, -1, whole_file_split))
            continue
        pieces: list[tuple[int, int, str | None]] = []
        if position:
            cut = _split_point(source, cfg, cfg.source.storage_options)
            pieces.append((0, cut, "train"))
            pieces.append((cut, source.size, "validation"))
        else:
            pieces.append((0, source.size, whole_file_split))
        for lo, hi, split in pieces:
            count = max(1, math.ceil((hi - lo) / cfg.unit_bytes))
            for k in range(count):
                start = lo + k * cfg.unit_bytes
                end = hi if k == count - 1 else start + cfg.unit_bytes
                if not position and start == 0 and end == source.size:
                    end = -1
                units.append(WorkUnit(len(units), source, start, end, hi, split))
    return units


def _split_point(source: SourceFile, cfg: PrepareConfig, options: dict[str, Any]) -> int:
    nominal = math.floor(source.size * (1.0 - cfg.split.validation_fraction))
    with open_raw(source.url, options) as f:
        cut = find_boundary(f, nominal, source.size, cfg.source.text_mode, cfg.source.format)
    assert cut is not None  # no stop given: the scan ends at a boundary or the end of the file
    return cut


def _validation_files(cfg: PrepareConfig, sources: list[SourceFile]) -> set[str]:
    """URLs of the inputs ``split.validation_paths`` names; each pattern must name an input."""
    inputs = {source.url for source in sources}
    held_out: set[str] = set()
    for pattern in cfg.split.validation_paths:
        matched = {s.url for s in expand_sources([pattern], cfg.source.storage_options)}
        if not matched & inputs:
            raise ValueError(
                f"split.validation_paths: {pattern} names no file of source.paths; list the "
                "held-out files among the inputs too"
            )
        held_out |= matched & inputs
    if held_out == inputs:
        raise ValueError("split.validation_paths names every input: nothing is left to train on")
    return held_out


def _file_split(source: SourceFile, held_out: set[str]) -> str:
    return "validation" if source.url in held_out else "train"
