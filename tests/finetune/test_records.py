"""Labelled records: JSON Lines, CSV and Parquet through fsspec; bad records counted and
skipped, or refused naming file:line; `pretrain finetune` turns a refusal into one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.finetune.records import BadRecordError, read_records

GOOD: list[dict[str, str | int]] = [
    {"text": "to be or not", "label": "hamlet"},
    {"text": "o romeo", "label": 1},
]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


BAD_LINES = [
    json.dumps(GOOD[0]),
    "{not json",
    json.dumps({"text": "no label here"}),
    json.dumps({"text": ["a", "list"], "label": "x"}),
    json.dumps({"text": "   ", "label": "x"}),
    json.dumps(["an", "array"]),
    "",  # blank lines are not records
    json.dumps(GOOD[1]),
]


def test_every_format_reads_the_same_records(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in GOOD])
    csv = tmp_path / "a.csv"
    csv.write_text('label,text\nhamlet,to be or not\n1,"o romeo"\n', encoding="utf-8")
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in GOOD], "label": ["hamlet", "1"]}), parquet)
    expected = [("to be or not", "hamlet"), ("o romeo", "1")]
    for path in (jsonl, csv, parquet):
        records, counts = read_records(str(path), ["text", "label"])
        assert [r.fields for r in records] == expected, path
        assert counts.skipped == 0
    records, _ = read_records(f"file://{jsonl}", ["text", "label"])  # through fsspec
    assert records[1].where.endswith("a.jsonl:2")


def test_skip_counts_every_bad_record_by_reason(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    records, counts = read_records(str(path), ["text", "label"], on_bad="skip")
    assert [r.where for r in records] == [f"{path}:1", f"{path}:8"]
    assert counts.read == 7 and counts.skipped == 5
    assert counts.by_reason == {
        "not JSON": 1,
        "no 'label'": 1,
        "'text' not text": 1,
        "empty 'text'": 1,
        "not a JSON object": 1,
    }
    assert counts.first["no 'label'"] == f"{path}:3"


def test_fail_names_the_first_bad_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    with pytest.raises(BadRecordError, match=rf"^{path}:2: not JSON"):
        read_records(str(path), ["text", "label"], on_bad="fail")


def test_a_missing_column_is_refused_whatever_the_policy(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("sentence,label\nhello,x\n", encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"a.csv:1: no column text \(columns: sentence"):
        read_records(str(csv), ["text", "label"], on_bad="skip")
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", None], "label": ["x", "y"]}), parquet)
    with pytest.raises(BadRecordError, match="no column target"):
        read_records(str(parquet), ["text", "target"], on_bad="skip")
    # A null in a column that exists is one bad row, named by its number.
    with pytest.raises(BadRecordError, match=r"a.parquet:row 2: no 'text'"):
        read_records(str(parquet), ["text", "label"])


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(BadRecordError, match="no such labelled file"):
        read_records(str(tmp_path / "none.jsonl"), ["text", "label"])
    with pytest.raises(BadRecordError, match=r"set task\.format"):
        read_records(str(tmp_path / "data.txt"), ["text", "label"])


def test_finetune_reports_a_bad_record_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any engine is built: the init is read (a tiny export), then the labelled data."""
    from pretrain.cli import main
    from tests.helpers.tiny_models import tiny_export, tiny_tokenizer

    export = tiny_export(tmp_path, tiny_tokenizer(tmp_path))
    train = _jsonl(tmp_path / "train.jsonl", BAD_LINES)
    config = tmp_path / "ft.yaml"
    config.write_text(
        f"init: {export}\ntask:\n  kind: classification\n  train: {train}\n"
        f"  validation: {train}\ncheckpoint:\n  dir: {tmp_path / 'ckpt'}\n"
    )
    assert main(["finetune", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {train}:2: not JSON (task.on_bad_record=skip skips it)"
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
    # Skipping: an unknown label in validation is one more bad record, counted, not an error.
    validation = _jsonl(
        tmp_path / "validation.jsonl",
        [json.dumps({"text": "x", "label": "nope"}), json.dumps(GOOD[0])],
    )
    from data_pipeline.configuration import load_config
    from pretrain.finetune.config import FinetuneConfig
    from pretrain.finetune.examples import load_task
    from pretrain.pretrained import load_pretrained

    ft = load_config(
        FinetuneConfig, config, ["task.on_bad_record=skip", f"task.validation={validation}"]
    )
    tokenizer = load_pretrained(export).tokenizer
    assert tokenizer is not None
    data = load_task(ft.task, tokenizer)
    assert data.labels == ["1", "hamlet"]
    assert [e.label for e in data.train] == [1, 0]
    assert [e.source_text for e in data.validation] == ["to be or not"]
    assert data.skipped == {"train": 5}
