"""Reading inputs: formats, compression, fsspec URLs and globs, and byte-range work units that
partition a file exactly."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_pipeline.configuration import from_dict
from data_pipeline.readers import UnitReader
from data_pipeline.schemas import PrepareConfig, SourceConfig
from data_pipeline.sources import SourceError, expand_sources
from data_pipeline.units import WorkUnit, plan_units

DOCS = ["first document\nwith two lines", "second — ünïcödé 中文", "third\ttabbed  spaces "]


def read_all(paths: list[str], **source: object) -> tuple[list[str], dict[str, int]]:
    cfg = from_dict(SourceConfig, {"paths": paths, **source})
    texts: list[str] = []
    skipped: dict[str, int] = {}
    for i, f in enumerate(expand_sources(cfg.paths)):
        reader = UnitReader(WorkUnit(i, f, 0, -1, -1, None), cfg)
        texts += [d.text for d in reader.documents()]
        for k, v in reader.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return texts, skipped


def test_text_modes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    assert read_all([str(tmp_path / "a.txt")], text_mode="paragraphs")[0] == DOCS
    whole = read_all([str(tmp_path / "a.txt")], text_mode="file")[0]
    assert whole == ["\n\n".join(DOCS) + "\n"]  # one document per file, every byte kept
    lines, skipped = read_all([str(tmp_path / "a.txt")], text_mode="lines")
    assert lines == [line for d in DOCS for line in d.split("\n")]
    assert skipped == {"empty_document": 2}  # the blank separator lines


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        ("", lambda b: b),
        (".gz", gzip.compress),
        (".bz2", bz2.compress),
        (".xz", lzma.compress),
        (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_jsonl_with_inferred_compression(tmp_path: Path, suffix: str, compress: object) -> None:
    body = "".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(DOCS)).encode()
    path = tmp_path / f"docs.jsonl{suffix}"
    path.write_bytes(compress(body))  # type: ignore[operator]
    assert read_all([str(path)], format="jsonl", text_field="body")[0] == DOCS


def test_parquet_column(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2, 3, 4], "content": [*DOCS, None]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    texts, skipped = read_all([str(tmp_path / "d.parquet")], format="parquet", text_field="content")
    assert texts == DOCS and skipped == {"missing_field": 1}


def test_globs_and_urls(tmp_path: Path) -> None:
    for i, d in enumerate(DOCS):
        (tmp_path / f"part-{i}.txt").write_text(d, encoding="utf-8")
    assert read_all([str(tmp_path / "part-*.txt")])[0] == DOCS
    assert read_all([f"file://{tmp_path}/part-?.txt"])[0] == DOCS
    mem = fsspec.filesystem("memory")
    for i, d in enumerate(DOCS):
        mem.pipe_file(f"/src/{i}.txt.gz", gzip.compress(d.encode()))
    assert read_all(["memory://src/*.txt.gz"])[0] == DOCS
    with pytest.raises(SourceError, match="no input file matches"):
        expand_sources([str(tmp_path / "nothing-*.txt")])


@pytest.mark.parametrize("mode", ["lines", "paragraphs"])
def test_byte_ranges_partition_the_file(tmp_path: Path, corpus_dir: Path, mode: str) -> None:
    """Cut into many small units, a file yields exactly the documents and bytes of one pass."""
    src = corpus_dir / "wikitext.txt"
    base = {
        "name": "t",
        "output": str(tmp_path / "o"),
        "tokenizer": "unused",
        "source": {"paths": [str(src)], "text_mode": mode},
    }
    whole_cfg = from_dict(PrepareConfig, {**base, "unit_bytes": 1 << 30})
    small_cfg = from_dict(PrepareConfig, {**base, "unit_bytes": 4096})
    (whole,) = plan_units(whole_cfg)
    units = plan_units(small_cfg)
    assert whole.is_whole_file and len(units) == -(-src.stat().st_size // 4096)

    def docs(unit: WorkUnit) -> tuple[list[str], int, dict[str, int]]:
        r = UnitReader(unit, small_cfg.source)
        return [d.text for d in r.documents()], r.bytes_read, dict(r.skipped)

    expected, size, skipped = docs(whole)
    got: list[str] = []
    total = 0
    got_skipped: dict[str, int] = {}
    for u in units:
        texts, nbytes, sk = docs(u)
        got += texts
        total += nbytes
        for k, v in sk.items():
            got_skipped[k] = got_skipped.get(k, 0) + v
    assert got == expected and total == size == src.stat().st_size
    assert got_skipped == skipped


def test_position_split_cuts_at_a_line_start(tmp_path: Path, corpus_dir: Path) -> None:
    src = corpus_dir / "shakespeare.txt"
    cfg = from_dict(
        PrepareConfig,
        {
            "name": "t",
            "output": str(tmp_path),
            "tokenizer": "unused",
            "unit_bytes": 1 << 20,
            "source": {"paths": [str(src)], "text_mode": "file"},
            "split": {"mode": "position", "validation_fraction": 0.1},
        },
    )
    train, val = plan_units(cfg)
    assert (train.split, val.split) == ("train", "validation")
    data = src.read_bytes()
    cut = val.start
    assert int(len(data) * 0.9) <= cut < int(len(data) * 0.9) + 200 and data[cut - 1 : cut] == b"\n"
    texts = [d.text for u in (train, val) for d in UnitReader(u, cfg.source).documents()]
    assert "".join(texts).encode() == data


@pytest.mark.parametrize("mode", ["paragraphs", "lines", "file"])
def test_documents_do_not_depend_on_the_read_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The reader handles runs of whole lines per read block: documents, line numbers and
    counters are the same whatever the block size (lines and paragraphs across blocks, CRLF,
    whitespace-only lines, Unicode whitespace, invalid UTF-8, over-long lines and paragraphs)."""
    import random

    from data_pipeline import readers

    rng = random.Random(5)
    atoms = [b"word", b" ", b"\t", b"\r", "\u00a0".encode(), b"\x1c", b"\xff", "é".encode()]
    atoms += [b"x" * 70, b"\n", b"\r\n", b"\n \n", b"\n\n", b"\n\x0b\n"]
    src = tmp_path / "mixed.txt"
    src.write_bytes(b"".join(rng.choice(atoms) for _ in range(3000)))

    def read(block: int) -> list[tuple[object, ...]]:
        monkeypatch.setattr(readers, "BLOCK", block)
        source = {"paths": [str(src)], "text_mode": mode, "max_document_bytes": 120}
        cfg = from_dict(
            PrepareConfig,
            {"name": "t", "output": str(tmp_path / "o"), "tokenizer": "t", "source": source},
        )
        got: list[tuple[object, ...]] = []
        for unit in plan_units(cfg):
            reader = UnitReader(unit, cfg.source)
            got += [(d.text, d.nbytes, d.line) for d in reader.documents()]
            got.append((dict(reader.skipped), reader.bytes_read, reader.sha256))
        return got

    reference = read(1 << 20)
    assert len(reference) > 3 or mode == "file"  # file mode: one (too long) document
    for block in (5, 64, 333):
        assert read(block) == reference, f"block {block}"
