"""Bad input under both policies: ``skip`` counts it by reason in the manifest, ``fail`` raises an
error naming the file and line. Either way the outcome is deterministic and nothing committed
earlier is lost."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from data_pipeline import manifest_fingerprint
from data_pipeline.configuration import to_dict, without_defaults, without_storage_options
from data_pipeline.manifest import unit_marker_name
from data_pipeline.prepare import OutputConflictError, prepare
from data_pipeline.readers import BadInputError, UnitReader
from data_pipeline.schemas import PrepareConfig
from data_pipeline.sources import SourceFile
from data_pipeline.storage import json_bytes
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.units import WorkUnit

GOOD = [{"text": f"document number {i}: " + "to be or not to be. " * 20} for i in range(40)]


def jsonl(records: Sequence[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.fixture
def bad_corpus(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a_good.jsonl").write_bytes(jsonl(GOOD))
    lines = [
        jsonl(GOOD[:2]),  # lines 1-2
        b'{"text": "bad utf-8 \xff\xfe here"}\n',  # line 3
        b'{"text": "not json",,}\n',  # line 4
        b'{"body": "no text field"}\n',  # line 5
        b'{"text": "   \\n  "}\n',  # line 6: empty document
        b'{"text": "' + b"y" * (50 << 20) + b'"}\n',  # line 7: one 50 MB line
        jsonl(GOOD[2:4]),  # lines 8-9
    ]
    (d / "b_mixed.jsonl").write_bytes(b"".join(lines))
    whole = gzip.compress(jsonl(GOOD))
    (d / "c_truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    yield d


def make(
    recipe: Callable[..., PrepareConfig], d: Path, policy: str, **over: object
) -> PrepareConfig:
    # The 50 MB line is most of the input: accept any share skipped, to see every reason.
    source = {"paths": [str(d / "*.jsonl*")], "format": "jsonl", "on_error": policy}
    return recipe(source={**source, "max_skipped_fraction": 1.0}, **over)


def test_skip_policy_counts_every_reason_and_is_deterministic(
    recipe: Callable[..., PrepareConfig], bad_corpus: Path, tmp_path: Path
) -> None:
    cfg = make(recipe, bad_corpus, "skip")
    result = prepare(cfg, workers=1)
    manifest_bytes = Path(cfg.output, "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    skipped = manifest["counters"]["skipped"]
    assert skipped == {
        "invalid_utf8": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "empty_document": 1,
        "too_long": 1,
        "corrupt_input": 1,
    }
    # Each skip counts the input bytes it dropped: the 50 MB line is most of them.
    lost = manifest["counters"]["skipped_bytes"]
    assert set(lost) == set(skipped) and lost["too_long"] > 50 << 20
    assert manifest["counters"]["input_bytes"] > sum(lost.values())
    # Good documents around the bad ones were kept, including those before the gzip truncation.
    read = manifest["counters"]["documents_read"]
    assert 40 + 4 < read < 40 + 4 + 40
    # The same inputs give the same bytes with another worker count.
    again = make(recipe, bad_corpus, "skip", output=str(tmp_path / "again"))
    prepare(again, workers=2)
    other = json.loads(Path(again.output, "manifest.json").read_bytes())
    assert other["splits"] == manifest["splits"] and other["counters"] == manifest["counters"]
    assert result.fingerprint is not None


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b'{"text": "ok"}\n{"text": "bad \xff"}\n', ":2: invalid_utf8"),
        (b'{"text": "ok"}\n{"text": "ok"}\n{oops}\n', ":3: invalid_json"),
        (b'{"text": "ok"}\n{"title": "x"}\n', ":2: missing_field"),
        (b'{"text": ""}\n', ":1: empty_document"),
        (b'{"text": "ok"}\n{"text": "' + b"z" * (9 << 20) + b'"}\n', ":2: too_long"),
    ],
)
def test_fail_policy_names_file_and_line(
    recipe: Callable[..., PrepareConfig], tmp_path: Path, content: bytes, where: str
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    cfg = recipe(source={"paths": [str(src)], "format": "jsonl", "on_error": "fail"})
    with pytest.raises(BadInputError, match=f"bad.jsonl{where}"):
        prepare(cfg, workers=1)


def test_fail_policy_line_numbers_are_absolute_in_byte_ranges(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    src = tmp_path / "big.jsonl"
    src.write_bytes(jsonl(GOOD * 5) + b"{broken\n")
    cfg = recipe(
        source={"paths": [str(src)], "format": "jsonl", "on_error": "fail"}, unit_bytes=8192
    )
    with pytest.raises(BadInputError, match=r"big.jsonl:201: invalid_json"):
        prepare(cfg, workers=1)


def test_fail_on_truncated_gzip_and_unreadable_file(
    recipe: Callable[..., PrepareConfig], bad_corpus: Path, tmp_path: Path
) -> None:
    gz = make(recipe, bad_corpus, "fail")
    gz.source.paths = [str(bad_corpus / "c_truncated.jsonl.gz")]
    with pytest.raises(BadInputError, match=r"c_truncated.jsonl.gz:\d+: corrupt_input \(EOFError"):
        prepare(gz, workers=1)
    # A file that was listed but cannot be opened (gone since, or a remote read error).
    missing = tmp_path / "gone.jsonl"
    source = SourceFile(str(missing), str(missing), 1234, None)
    unit = WorkUnit(0, source, 0, -1, -1, None)
    for policy in ("skip", "fail"):
        cfg = make(recipe, bad_corpus, policy).source
        reader = UnitReader(unit, cfg)
        if policy == "fail":
            with pytest.raises(BadInputError, match=r"gone\.jsonl:0: unreadable_file"):
                list(reader.documents())
        else:
            assert list(reader.documents()) == [] and reader.sha256 is None
            assert reader.skipped == {"unreadable_file": 1}
            assert reader.skipped_bytes == {"unreadable_file": 1234}


def test_failure_keeps_committed_units_and_a_rerun_resumes(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    d = tmp_path / "src"
    d.mkdir()
    (d / "1.jsonl").write_bytes(jsonl(GOOD))
    (d / "2.jsonl").write_bytes(jsonl(GOOD[:3]) + b"{not json\n")
    cfg = recipe(source={"paths": [str(d / "*.jsonl")], "format": "jsonl", "on_error": "fail"})
    with pytest.raises(BadInputError, match=r"2.jsonl:4: invalid_json"):
        prepare(cfg, workers=1)
    out = Path(cfg.output)
    marker = (out / unit_marker_name(0)).read_bytes()
    shards = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert shards and not (out / "manifest.json").exists()
    (d / "2.jsonl").write_bytes(jsonl(GOOD[:3]))
    result = prepare(cfg, workers=1)
    assert (result.units_skipped, result.units_run) == (1, 1)
    assert (out / unit_marker_name(0)).read_bytes() == marker
    assert all((out / name).read_bytes() == data for name, data in shards.items())


def test_output_holding_another_configs_manifest_is_refused(
    recipe: Callable[..., PrepareConfig],
) -> None:
    first = recipe()
    prepare(first, workers=1)
    before = Path(first.output, "manifest.json").read_bytes()
    with pytest.raises(OutputConflictError, match=r"different config \(differs in: chunk_len"):
        prepare(recipe(chunk_len=32), workers=1)
    assert Path(first.output, "manifest.json").read_bytes() == before
    # The same config again is fine: every unit is committed, the manifest is kept as it is.
    result = prepare(first, workers=1)
    assert result.units_run == 0 and Path(first.output, "manifest.json").read_bytes() == before


def test_fail_policy_error_in_a_whole_file_unit_keeps_its_reason(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    """The fail policy's error is a ValueError, like a broken stream's: it used to be caught
    and reported again as ``corrupt_input`` (with another line number)."""
    src = tmp_path / "bad.txt.gz"
    src.write_bytes(gzip.compress(b"good line\n\xff bad line\nanother good line\n"))
    cfg = recipe(source={"paths": [str(src)], "text_mode": "lines", "on_error": "fail"})
    with pytest.raises(BadInputError, match=r"^\S*bad\.txt\.gz:2: invalid_utf8 \(byte 0"):
        prepare(cfg, workers=1)


def _rehash_markers(out: Path, config: dict[str, Any], tokenizer_hash: str) -> None:
    """Give every unit marker the hash an older version computed over ``config``."""
    digest = hashlib.sha256(json_bytes({"config": config, "tokenizer": tokenizer_hash}))
    marker_paths = sorted(out.glob("_units/*.json"))
    assert marker_paths
    for marker_path in marker_paths:
        marker = json.loads(marker_path.read_bytes())
        marker["config_hash"] = digest.hexdigest()
        marker_path.write_bytes(json_bytes(marker))


def test_an_output_recorded_before_a_defaulted_key_existed_is_still_this_recipes(
    recipe: Callable[..., PrepareConfig],
) -> None:
    """A key added to the schema with a default (here split.validation_paths) neither makes
    prepare refuse an output written before it existed nor changes that output's fingerprint:
    the manifest is left byte for byte, whatever hash its markers carry. Unfinished, markers
    hashed over the whole resolved config (as before recipes) are still recognised."""
    cfg = recipe()
    prepare(cfg, workers=1)
    out = Path(cfg.output)
    tok = Tokenizer.load(cfg.tokenizer)
    manifest = json.loads((out / "manifest.json").read_bytes())
    del manifest["config"]["split"]["validation_paths"]  # as an older version recorded it
    older = json_bytes(manifest)
    (out / "manifest.json").write_bytes(older)
    _rehash_markers(out, manifest["config"], tok.hash)  # over the older, shorter config
    result = prepare(cfg, workers=1)
    assert result.units_run == 0
    assert (out / "manifest.json").read_bytes() == older
    assert result.fingerprint == manifest_fingerprint(older)
    # A real difference is still one, named by its key, whatever the form it was recorded in.
    with pytest.raises(OutputConflictError, match=r"differs in: split\)"):
        prepare(recipe(split={"mode": "hash", "validation_fraction": 0.5}))
    # Unfinished (no manifest yet) with markers of the whole current config: finalized.
    (out / "manifest.json").unlink()
    _rehash_markers(out, to_dict(cfg), tok.hash)
    assert prepare(cfg, workers=1).units_run == 0
    assert (out / "manifest.json").exists()
    # ...but markers of another config are not.
    (out / "manifest.json").unlink()
    _rehash_markers(out, manifest["config"], tok.hash)
    with pytest.raises(OutputConflictError, match="prepared with a different config"):
        prepare(cfg, workers=1)


def test_without_defaults_keeps_only_the_choices() -> None:
    tree = to_dict(PrepareConfig(name="x", output="o", tokenizer="t", chunk_len=32))
    tree["split"]["validation_fraction"] = 0.25
    tree["removed_key"] = 1  # a key this version does not know is a difference
    assert without_defaults(PrepareConfig, tree) == {
        "name": "x",
        "output": "o",
        "tokenizer": "t",
        "chunk_len": 32,
        "split": {"validation_fraction": 0.25},
        "removed_key": 1,
    }


def test_storage_options_are_left_out_at_any_depth() -> None:
    tree = {"storage_options": {"secret": "s"}, "source": {"paths": ["a"], "storage_options": {}}}
    assert without_storage_options(tree) == {"source": {"paths": ["a"]}}
