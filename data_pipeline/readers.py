"""Documents out of one work unit, for every input format, with the bad-input policy applied.

Bad input is either counted by reason (``skip``) or raised as `BadInputError` naming the file and
line (``fail``). Either way the outcome depends only on the bytes, so reruns agree. Memory stays
bounded: lines are read in blocks and an over-long line is counted, not held.

What is skipped is as small as the format allows: a line (``lines`` mode, JSON Lines), a row
(Parquet), and in ``file`` and ``paragraphs`` modes, whose documents are made of lines, only the
lines that are not text (invalid UTF-8, or a NUL byte: binary data) are cut out of their
document, which keeps the rest. Each skip counts its bytes too (``skipped_bytes``), against the
``input_bytes`` the unit covered, so `data_pipeline.skips` can tell what share was lost.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from data_pipeline.schemas import SourceConfig
from data_pipeline.sources import decompressing, open_raw
from data_pipeline.units import WorkUnit, find_boundary, is_blank

BLOCK = 1 << 20

# What a broken compressed stream raises: truncated gzip -> EOFError, bad header -> OSError
# (BadGzipFile), and the codecs' own errors.
try:
    import zstandard

    _CODEC_ERRORS: tuple[type[BaseException], ...] = (
        EOFError,
        zlib.error,
        lzma.LZMAError,
        zstandard.ZstdError,
        ValueError,
    )
except ImportError:  # pragma: no cover - zstandard is a dependency
    _CODEC_ERRORS = (EOFError, zlib.error, lzma.LZMAError, ValueError)
_BROKEN_STREAM: tuple[type[BaseException], ...] = (*_CODEC_ERRORS, OSError)  # OSError: BadGzipFile


class BadInputError(ValueError):
    """Input that the ``fail`` policy refuses; the message starts with ``path:line:``."""


@dataclass(slots=True)
class Document:
    text: str
    nbytes: int  # UTF-8 bytes of ``text``
    line: int  # 1-based line (row, for parquet) where it starts, counted from the unit start
    data: bytes | None = None  # ``text`` as UTF-8, when the reader has it (saves re-encoding)

    @property
    def utf8(self) -> bytes:
        return self.data if self.data is not None else self.text.encode("utf-8")


class _HashingReader:
    """Counts and hashes the bytes read from the stored file (before decompression)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    read1 = read  # never let a caller bypass the count through __getattr__

    def drain(self) -> None:
        while self.read(BLOCK):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class UnitReader:
    """Iterate `documents()`; afterwards ``counters`` (skipped by reason), ``bytes_read`` and
    ``sha256`` (of the stored bytes this unit covers) describe what was read."""

    def __init__(self, unit: WorkUnit, cfg: SourceConfig) -> None:
        self.unit = unit
        self.cfg = cfg
        self.skipped: Counter[str] = Counter()
        self.skipped_bytes: Counter[str] = Counter()  # input bytes dropped, by reason
        self.input_bytes = 0  # (uncompressed) input bytes this unit covered
        self.bytes_read = 0
        self.sha256: str | None = None
        self._line_base = 0  # lines before the unit's real start (for error messages)
        self._real_start = 0

    # -- policy ---------------------------------------------------------------------------
    def bad(self, reason: str, line: int, detail: str = "", nbytes: int = 0) -> None:
        """Count ``nbytes`` of input at ``line`` as skipped for ``reason`` (or raise)."""
        if self.cfg.on_error == "fail":
            where = self._absolute_line(line)
            more = f" ({detail})" if detail else ""
            raise BadInputError(f"{self.unit.source.path}:{where}: {reason}{more}")
        self.skipped[reason] += 1
        self.skipped_bytes[reason] += nbytes

    def _absolute_line(self, line: int) -> int:
        if self._real_start == 0:
            return line
        # Only on the failure path: count the newlines before this unit's range.
        count = 0
        with open_raw(self.unit.source.url, self.cfg.storage_options) as f:
            left = self._real_start
            while left > 0:
                block = f.read(min(BLOCK, left))
                if not block:
                    break
                count += block.count(b"\n")
                left -= len(block)
        return count + line

    # -- reading --------------------------------------------------------------------------
    def documents(self) -> Iterator[Document]:
        try:
            raw = open_raw(self.unit.source.url, self.cfg.storage_options)
        except OSError as err:
            self.input_bytes = self.unit.source.size
            self.bad(
                "unreadable_file", 0, err.strerror or type(err).__name__, self.unit.source.size
            )
            return
        if self.unit.source.size == 0 and (
            self.unit.is_whole_file or (self.unit.start == 0 and self.unit.split != "validation")
        ):
            # Counted once per file (a position split gives an empty file two empty units).
            self.bad("empty_file", 0, "0 bytes")
        with raw:
            if self.cfg.format == "parquet":
                yield from self._parquet(raw)
            elif self.unit.is_whole_file:
                yield from self._whole_file(raw)
            else:
                yield from self._range(raw)

    def _whole_file(self, raw: IO[bytes]) -> Iterator[Document]:
        hashing = _HashingReader(raw)
        stream = decompressing(hashing, self.unit.source.compression)  # type: ignore[arg-type]
        line = 0
        try:
            for line, data in self._chunks(stream, None):
                yield from self._from_chunk(line, data)
            final = self._flush()
            if final is not None:
                yield final
            hashing.drain()
        except BadInputError:
            raise  # the fail policy's own error (a ValueError), not a broken stream
        except _BROKEN_STREAM as err:
            # What is lost is the open document (the broken block's size is unknown).
            lost = self.pending_bytes if self.pending is not None else 0
            self.bad("corrupt_input", self._lines_done + 1, f"{type(err).__name__}: {err}", lost)
            self.pending = None
        self.bytes_read = hashing.count
        self.sha256 = hashing.sha.hexdigest()

    def _range(self, raw: IO[bytes]) -> Iterator[Document]:
        u, size = self.unit, self.unit.source.size
        mode, fmt = self.cfg.text_mode, self.cfg.format
        first = find_boundary(raw, u.start, size, mode, fmt, stop=u.end)
        if first is None or first >= min(u.end, u.limit):
            # No boundary inside the nominal range: the previous unit reads past it.
            self.sha256 = hashlib.sha256().hexdigest()
            return
        start = first
        last = find_boundary(raw, u.end, size, mode, fmt)
        end = min(size if last is None else last, u.limit)
        self._real_start = start
        raw.seek(start)
        sha = hashlib.sha256()
        for line, data in self._chunks(raw, max(0, end - start), sha):
            yield from self._from_chunk(line, data)
        final = self._flush()
        if final is not None:
            yield final
        self.bytes_read = max(0, end - start)
        self.sha256 = sha.hexdigest()

    _lines_done = 0  # lines completely read so far (where a broken compressed stream broke)

    def _chunks(
        self, stream: IO[bytes], limit: int | None, sha: Any = None
    ) -> Iterator[tuple[int, bytes | None]]:
        """The input as runs of whole lines, in order: (1-based number of the first line,
        bytes of one or more whole lines), each line with its newline except the input's last
        and none over max_document_bytes; or (number, None) for one line over that, which is
        never held in memory. A run is up to a read block (1 MiB) of lines, so the per-line
        work is left to bytes methods."""
        max_line = self.cfg.max_document_bytes
        carry: list[bytes] = []  # the line that the last block left open
        carry_len = 0  # its length so far, also once it is over max_line and dropped
        number = 0  # lines completed
        left = limit
        # read1 returns what is decoded so far: a truncated compressed stream then loses only
        # its last block, not everything a read(BLOCK) had gathered before the error.
        read = getattr(stream, "read1", stream.read) if limit is None else stream.read
        while left is None or left > 0:
            block = read(BLOCK if left is None else min(BLOCK, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            self.input_bytes += len(block)
            if sha is not None:
                sha.update(block)
            last = block.rfind(b"\n")
            if last < 0:
                carry_len += len(block)
                if carry_len <= max_line:
                    carry.append(block)
                else:
                    carry = []
                continue
            head = block.find(b"\n") + 1  # the open line ends here
            if carry_len + head > max_line:
                number += 1
                self._lines_done = number
                self._long_bytes = carry_len + head
                yield number, None
                lines = block[head : last + 1]
            elif carry:
                carry.append(block[: last + 1])
                lines = b"".join(carry)
            else:
                lines = block[: last + 1]
            if lines:
                if len(lines) > max_line:  # only when max_document_bytes is below a block
                    for piece in lines.split(b"\n")[:-1]:
                        number += 1
                        self._lines_done = number
                        self._long_bytes = len(piece) + 1
                        yield number, (piece + b"\n" if len(piece) < max_line else None)
                else:
                    count = lines.count(b"\n")
                    self._lines_done = number + count
                    yield number + 1, lines
                    number += count
            tail = block[last + 1 :]
            carry_len = len(tail)
            carry = [tail] if tail and carry_len <= max_line else []
        if carry_len:
            number += 1
            self._lines_done = number
            self._long_bytes = carry_len
            yield number, (b"".join(carry) if carry_len <= max_line else None)

    # -- formats --------------------------------------------------------------------------
    pending: list[bytes] | None = None  # text file/paragraphs: lines of the open document
    pending_line = 0
    pending_bytes = 0
    pending_too_long = False
    _long_bytes = 0  # length of the over-long line `_chunks` yielded last as None

    def _document(
        self, data: bytes, line: int, by_lines: bool = False, covers: int = 0
    ) -> Document | None:
        """The document of these bytes, or None (counted or raised) when they are not text or
        only whitespace. ``by_lines``: a document made of lines (file, paragraphs) loses only
        its lines that are not text, not the whole document. ``covers``: the input bytes it
        stands for, when more than ``data`` (a line with its newline)."""
        size = max(len(data), covers)
        if b"\0" in data:  # no text has NUL bytes: binary data read as text
            if by_lines:
                return self._cut_bad_lines(data, line)
            self.bad("binary", line, f"NUL byte at byte {data.index(0)}", size)
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            if by_lines:
                return self._cut_bad_lines(data, line)
            self.bad("invalid_utf8", line, f"byte {err.start}: {err.reason}", size)
            return None
        if not text or text.isspace():  # i.e. not text.strip()
            self.bad("empty_document", line)  # whitespace only: no bytes of text are lost
            return None
        return Document(text, len(data), line, data)

    def _cut_bad_lines(self, data: bytes, first: int) -> Document | None:
        """The document of ``data`` (whole lines from line ``first``) without its lines that
        hold a NUL byte (``binary``) or invalid UTF-8 (``invalid_utf8``), each counted."""
        kept: list[bytes] = []
        pieces = data.split(b"\n")
        for i, piece in enumerate(pieces):
            line = piece if i == len(pieces) - 1 else piece + b"\n"
            if not line:
                continue
            if b"\0" in piece:
                self.bad("binary", first + i, f"NUL byte at byte {piece.index(0)}", len(line))
                continue
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as err:
                detail = f"byte {err.start}: {err.reason}"
                self.bad("invalid_utf8", first + i, detail, len(line))
                continue
            kept.append(line)
        rest = b"".join(kept)
        if self.cfg.text_mode == "paragraphs":
            rest = _chomp(rest)  # as every paragraph, without its last newline
        if not rest:
            return None
        return self._document(rest, first)

    def _from_chunk(self, first: int, data: bytes | None) -> list[Document]:
        """Documents completed by a run of whole lines from `_chunks`."""
        fmt, mode = self.cfg.format, self.cfg.text_mode
        if data is None:
            return list(self._from_line(first, None))
        if fmt == "text" and mode == "paragraphs":
            return self._paragraphs(first, data)
        if fmt == "text" and mode == "file":
            self._extend_pending(first, data)
            return []
        docs: list[Document] = []  # one document per line
        pos, number, end = 0, first, len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            nxt = end if nl < 0 else nl + 1
            docs.extend(self._from_line(number, data[pos:nxt]))
            pos, number = nxt, number + 1
        return docs

    def _paragraphs(self, first: int, data: bytes) -> list[Document]:
        """Paragraph mode over whole lines: a document is a run of lines that are not blank
        (whitespace only), without its last newline; blank lines end it. A paragraph that lies
        inside the run is cut out of it directly; one that starts in an earlier run, or goes on
        into the next, goes through ``pending``."""
        docs: list[Document] = []
        max_bytes = self.cfg.max_document_bytes
        pos, start, start_line = 0, -1, 0  # start: where this run's open paragraph begins
        pieces = data.split(b"\n")
        if not pieces[-1]:
            pieces.pop()  # the run ends with a newline, not with a last unterminated line
        for number, piece in enumerate(pieces, first):
            if not piece or piece.isspace():  # a blank line, as `is_blank` (ASCII whitespace)
                if start >= 0 and self.pending is None:
                    if pos - start > max_bytes:
                        detail = f"document over max_document_bytes={max_bytes}"
                        self.bad("too_long", start_line, detail, pos - start)
                    else:
                        # Without its last newline (EOS stands for it), as `_chomp`.
                        end = pos - 2 if data[pos - 2] == 13 else pos - 1
                        doc = self._document(data[start:end], start_line, by_lines=True)
                        if doc is not None:
                            docs.append(doc)
                    start = -1
                else:
                    if start >= 0:
                        self._extend_pending(start_line, data[start:pos])
                        start = -1
                    if self.pending is not None:
                        doc = self._flush()
                        if doc is not None:
                            docs.append(doc)
            elif start < 0:
                start, start_line = pos, number
            pos += len(piece) + 1
        if start >= 0:
            self._extend_pending(start_line, data[start:pos])
        return docs

    def _extend_pending(self, line: int, data: bytes) -> None:
        """Whole lines of the open document (file mode, or a paragraph), ``line`` the first."""
        if self.pending is None:
            self.pending, self.pending_line = [], line
            self.pending_bytes, self.pending_too_long = 0, False
        self.pending_bytes += len(data)
        if self.pending_bytes > self.cfg.max_document_bytes:
            self.pending_too_long, self.pending = True, []
        elif not self.pending_too_long:
            self.pending.append(data)

    def _from_line(self, line: int, data: bytes | None) -> Iterator[Document]:
        fmt, mode = self.cfg.format, self.cfg.text_mode
        too_long = f"line over max_document_bytes={self.cfg.max_document_bytes}"
        if fmt == "jsonl":
            if data is None:
                self.bad("too_long", line, too_long, self._long_bytes)
            elif not data.strip():
                self.bad("empty_document", line)
            else:
                yield from self._json_line(data, line)
        elif mode == "lines":
            if data is None:
                self.bad("too_long", line, too_long, self._long_bytes)
            else:
                doc = self._document(_chomp(data), line, covers=len(data))
                if doc is not None:
                    yield doc
        elif mode == "paragraphs" and data is not None and is_blank(data):
            doc = self._flush()
            if doc is not None:
                yield doc
        else:  # a line of the open document (file mode, or a paragraph's line)
            if self.pending is None:
                self.pending, self.pending_line = [], line
                self.pending_bytes, self.pending_too_long = 0, False
            self.pending_bytes += len(data) if data is not None else self._long_bytes
            if data is None or self.pending_bytes > self.cfg.max_document_bytes:
                self.pending_too_long, self.pending = True, []
            elif not self.pending_too_long:
                self.pending.append(data)

    def _flush(self) -> Document | None:
        """The open document (file mode, or a paragraph), now complete."""
        if self.pending is None:
            return None
        lines, first = self.pending, self.pending_line
        self.pending = None
        if self.pending_too_long:
            self.bad(
                "too_long",
                first,
                f"document over max_document_bytes={self.cfg.max_document_bytes}",
                self.pending_bytes,
            )
            return None
        data = b"".join(lines)
        # Paragraphs end at their last newline (EOS stands for it); file mode keeps every byte.
        paragraph = self.cfg.text_mode == "paragraphs"
        return self._document(_chomp(data) if paragraph else data, first, by_lines=True)

    def _json_line(self, data: bytes, line: int) -> Iterator[Document]:
        try:
            record = json.loads(data)
        except UnicodeDecodeError as err:
            self.bad("invalid_utf8", line, str(err), len(data))
            return
        except json.JSONDecodeError as err:
            self.bad("invalid_json", line, f"{err.msg} at column {err.colno}", len(data))
            return
        field = self.cfg.text_field
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            self.bad("missing_field", line, f"no string field {field!r}", len(data))
            return
        encoded = value.encode("utf-8", errors="surrogatepass")
        if len(encoded) > self.cfg.max_document_bytes:
            detail = f"document over max_document_bytes={self.cfg.max_document_bytes}"
            self.bad("too_long", line, detail, len(data))
            return
        # JSON escapes can carry lone surrogates (\ud800): not text, and not encodable.
        doc = self._document(encoded, line)
        if doc is not None:
            yield doc

    def _parquet(self, raw: IO[bytes]) -> Iterator[Document]:
        import pyarrow.parquet as pq

        hashing = _HashingReader(raw)
        try:
            pfile = pq.ParquetFile(raw)
            names = pfile.schema_arrow.names
            if self.cfg.text_field not in names:
                self.input_bytes = self.unit.source.size
                detail = f"no column {self.cfg.text_field!r} (has {names})"
                self.bad("missing_field", 0, detail, self.unit.source.size)
                return
            row = 0
            for batch in pfile.iter_batches(columns=[self.cfg.text_field], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    row += 1
                    if not isinstance(value, str):
                        self.bad("missing_field", row, f"row has no string {self.cfg.text_field!r}")
                        continue
                    data = value.encode("utf-8", errors="surrogatepass")
                    self.input_bytes += len(data)
                    if len(data) > self.cfg.max_document_bytes:
                        self.bad("too_long", row, "document over max_document_bytes", len(data))
                        continue
                    doc = self._document(data, row)
                    if doc is not None:
                        yield doc
        except BadInputError:
            raise
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            # The rows not read are unknown: the stored bytes stand for them.
            self.input_bytes = max(self.input_bytes, self.unit.source.size)
            self.bad("corrupt_input", 0, f"{type(err).__name__}: {err}", self.unit.source.size)
        finally:
            raw.seek(0)
            hashing.drain()
            self.bytes_read = hashing.count
            self.sha256 = hashing.sha.hexdigest()


def _chomp(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data
