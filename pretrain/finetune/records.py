"""Labelled records out of JSON Lines, CSV or Parquet files, local or through fsspec, with the
bad-input policy of `data-pipeline prepare` (docs/bad_input.md): a bad record is either counted
by reason and skipped (``skip``), or refused with `BadRecordError` naming ``file:line``
(``fail``; the row number, for Parquet). A file that cannot hold the fields at all (a CSV or
Parquet file without the column) is refused whatever the policy: every record would be bad.

Torch-free: records are plain strings; tokenizing them is `pretrain.finetune.examples`' job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from data_pipeline.console import first_process
from data_pipeline.readers import BadInputError

logger = logging.getLogger(__name__)


class BadRecordError(BadInputError):
    """A labelled record (or file) the ``fail`` policy refuses; the message starts with
    ``path:line:``."""


@dataclass(frozen=True)
class Record:
    fields: tuple[str, ...]  # the requested fields' values, in the order asked for
    where: str  # path:line (path:row N for Parquet)


@dataclass
class SkipCounts:
    """Records skipped per reason, with the first place each reason was seen."""

    read: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.by_reason[reason] += 1
        self.first.setdefault(reason, where)

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    def describe(self) -> str:
        parts = [
            f"{n} {reason} (first at {self.first[reason]})"
            for reason, n in self.by_reason.most_common()
        ]
        return f"skipped {self.skipped} of {self.read} records: " + "; ".join(parts)


def record_format(url: str, configured: str) -> Literal["jsonl", "csv", "parquet"]:
    if configured != "auto":
        return configured  # type: ignore[return-value]
    name = url.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    raise BadRecordError(
        f"{url}: cannot tell the format from the name; set task.format (jsonl, csv or parquet)"
    )


def _open(url: str, storage_options: dict[str, str]) -> Any:
    import fsspec

    try:
        return fsspec.open(url, "rb", compression="infer", **storage_options).open()
    except FileNotFoundError:
        raise BadRecordError(f"{url}: no such labelled file") from None


def _value(raw: Any) -> str | None:
    """A field's text: strings as they are, numbers and booleans (labels such as 0/1) as
    written; anything else (null, a list, a mapping) is not a value."""
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, str | int):
        return str(raw)
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return None


def _rows(
    url: str, fmt: str, names: Sequence[str], options: dict[str, str]
) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """(where, row or None when unreadable, reason) for every record of the file."""
    with _open(url, options) as handle:
        if fmt == "jsonl":
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{url}:{number}"
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield where, None, "not JSON"
                    continue
                if not isinstance(row, dict):
                    yield where, None, "not a JSON object"
                    continue
                yield where, row, ""
        elif fmt == "csv":
            try:
                text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
                reader = csv.DictReader(text)
                absent = [n for n in names if n not in (reader.fieldnames or [])]
            except UnicodeDecodeError:
                raise BadRecordError(f"{url}:1: the header is not UTF-8") from None
            if absent:
                raise BadRecordError(
                    f"{url}:1: no column {', '.join(absent)} (columns: "
                    f"{', '.join(reader.fieldnames or [])}); set the task's *_field keys"
                )
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except (UnicodeDecodeError, csv.Error) as err:
                    yield f"{url}:{reader.line_num}", None, f"unreadable ({err})"
                    break  # the stream's position is lost: nothing after it can be trusted
                yield f"{url}:{reader.line_num}", row, ""
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(handle)
            absent = [n for n in names if n not in table.column_names]
            if absent:
                raise BadRecordError(
                    f"{url}: no column {', '.join(absent)} (columns: "
                    f"{', '.join(table.column_names)}); set the task's *_field keys"
                )
            for number, row in enumerate(table.select(list(names)).to_pylist(), start=1):
                yield f"{url}:row {number}", row, ""


def read_records(
    url: str,
    names: Sequence[str],
    *,
    fmt: str = "auto",
    on_bad: str = "fail",
    storage_options: dict[str, str] | None = None,
) -> tuple[list[Record], SkipCounts]:
    """Every record of ``url`` with a non-empty text value for each of ``names``."""
    counts = SkipCounts()
    records: list[Record] = []
    for where, row, reason in _rows(url, record_format(url, fmt), names, storage_options or {}):
        counts.read += 1
        values: list[str] = []
        if row is not None:
            for name in names:
                value = _value(row.get(name))
                if value is None:
                    reason = f"no {name!r}" if row.get(name) is None else f"{name!r} not text"
                    break
                if not value.strip():
                    reason = f"empty {name!r}"
                    break
                values.append(value)
        if reason:
            if on_bad == "fail":
                raise BadRecordError(f"{where}: {reason} (task.on_bad_record=skip skips it)")
            counts.add(reason, where)
            continue
        records.append(Record(tuple(values), where))
    if counts.skipped and first_process():  # every rank reads the whole file alike
        logger.warning("%s: %s", url, counts.describe())
    if not records:
        raise BadRecordError(f"{url}: no usable record ({counts.read} read)")
    return records, counts
