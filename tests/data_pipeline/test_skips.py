"""Bad input through the real command line: what is skipped is the bad line (or paragraph), never
more; every prepare says what it skipped; a run that lost more than source.max_skipped_fraction
of its input, or all of it, fails with one error line naming the file; non-regular inputs are
refused instead of blocking; nothing already written is removed or changed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_pipeline.readers import UnitReader
from data_pipeline.schemas import PrepareConfig
from data_pipeline.sources import SourceFile
from data_pipeline.units import WorkUnit

from .conftest import REPO_ROOT, cli, cli_env

RECIPE = REPO_ROOT / "configs" / "data" / "shakespeare_char.yaml"  # text_mode: file, position
TOKENIZER_RECIPE = REPO_ROOT / "configs" / "tokenizer" / "shakespeare_char.yaml"
TIMEOUT = 120  # a FIFO used to block for ever: every run here has a deadline


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def prepare(
    tok: str, out: Path, paths: list[Path], *overrides: str, workers: int = 1
) -> subprocess.CompletedProcess[str]:
    listed = ", ".join(str(p) for p in paths)
    return run(
        "prepare", str(RECIPE), f"output={out}", f"tokenizer={tok}", f"source.paths=[{listed}]",
        "unit_bytes=65536", "shard_bytes=65536", "chunk_len=64", *overrides,
        "--workers", str(workers),
    )  # fmt: skip


def error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The run's one error line (the last line of stderr), after checking the exit code and
    that there is no traceback and no other error line."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], result.stderr
    return lines[-1]


def snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def text(corpus_dir: Path) -> bytes:
    return (corpus_dir / "shakespeare.txt").read_bytes()


def test_one_bad_byte_in_file_mode_drops_only_its_line(
    char_tokenizer: str, tmp_path: Path, text: bytes
) -> None:
    """It used to drop its whole 64 KiB unit (256 KiB in the quickstart recipe)."""
    at = text.index(b"\nFirst", 100_000) + 1  # a line in the middle of a unit
    end = text.index(b"\n", at) + 1
    src = tmp_path / "bad.txt"
    src.write_bytes(text[:at] + b"\xff" + text[at:])
    one = prepare(char_tokenizer, tmp_path / "w1", [src])
    assert one.returncode == 0, one.stderr
    assert "bad input skipped: invalid_utf8 1" in one.stderr
    manifest = json.loads((tmp_path / "w1" / "manifest.json").read_bytes())
    assert manifest["counters"]["skipped"] == {"invalid_utf8": 1}
    assert manifest["counters"]["skipped_bytes"] == {"invalid_utf8": end - at + 1}
    # Every other character is in the dataset (one token each, and an EOS per document).
    counters = manifest["counters"]
    tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "validation"))
    tokens += counters["tail_tokens_dropped"] - counters["documents_read"]
    assert tokens == len(text) - (end - at)
    # Byte-identical with another worker count.
    two = prepare(char_tokenizer, tmp_path / "w2", [src], workers=2)
    assert two.returncode == 0, two.stderr
    shards = {k: v for k, v in snapshot(tmp_path / "w1").items() if k.endswith(".tar")}
    assert shards and {k: snapshot(tmp_path / "w2")[k] for k in shards} == shards
    other = json.loads((tmp_path / "w2" / "manifest.json").read_bytes())
    assert (other["splits"], other["counters"]) == (manifest["splits"], manifest["counters"])


def test_reader_cuts_bad_lines_out_of_file_and_paragraph_documents(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    src = tmp_path / "doc.txt"
    src.write_bytes(b"first line\nbad \xfe line\nthird\x00line\nlast line\n\nnext\n")
    unit = WorkUnit(0, SourceFile(str(src), str(src), src.stat().st_size, None), 0, -1, -1, None)
    reader = UnitReader(unit, recipe(source={"paths": [str(src)], "text_mode": "file"}).source)
    assert [d.text for d in reader.documents()] == ["first line\nlast line\n\nnext\n"]
    assert reader.skipped == {"invalid_utf8": 1, "binary": 1}
    assert reader.skipped_bytes == {"invalid_utf8": 11, "binary": 11}
    cfg = recipe(source={"paths": [str(src)], "text_mode": "paragraphs"}).source
    reader = UnitReader(unit, cfg)
    assert [d.text for d in reader.documents()] == ["first line\nlast line", "next"]
    cfg.on_error = "fail"
    with pytest.raises(ValueError, match=r"doc\.txt:2: invalid_utf8"):
        list(UnitReader(unit, cfg).documents())


def test_too_much_skipped_fails_naming_the_file_and_a_rerun_finishes_the_same_units(
    char_tokenizer: str, tmp_path: Path, text: bytes
) -> None:
    """A line over max_document_bytes used to leave an empty dataset at exit 0."""
    src = tmp_path / "long.txt"
    src.write_bytes(text[:50_000] + b"x" * 20_000 + b"\n" + text[50_000:100_000])
    out = tmp_path / "out"
    args = ("source.text_mode=lines", "source.max_document_bytes=10000")
    line = error_line(prepare(char_tokenizer, out, [src], *args))
    assert line.startswith(f"error: {src} (17% of it: empty_document 741, too_long 1): 16.67%")
    assert "more than source.max_skipped_fraction=0.01" in line
    assert not (out / "manifest.json").exists()
    committed = snapshot(out)
    assert any(name.startswith("_units") for name in committed)
    # The threshold is no part of the recipe: raising it finishes this output, units untouched.
    again = prepare(char_tokenizer, out, [src], *args, "source.max_skipped_fraction=0.5")
    assert again.returncode == 0, again.stderr
    said = "bad input skipped: empty_document 741 (0 B), too_long 1 (20,010 B); 20,010 of"
    assert said in again.stderr
    after = snapshot(out)
    assert {k: after[k] for k in committed} == committed and "manifest.json" in after


def test_empty_input_fails_naming_the_file(char_tokenizer: str, tmp_path: Path) -> None:
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    line = error_line(prepare(char_tokenizer, tmp_path / "out", [src]))
    assert str(src) in line and "empty" in line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_every_document_bad_fails(char_tokenizer: str, tmp_path: Path) -> None:
    src = tmp_path / "all_bad.txt"
    src.write_bytes(b"\xff\xfe\n" * 100)
    line = error_line(prepare(char_tokenizer, tmp_path / "out", [src], "source.text_mode=lines"))
    assert (
        line == f"error: {src} (100% of it: invalid_utf8 100): no usable document, every one "
        "was skipped as bad input; fix or leave out those inputs"
    )


def test_a_binary_file_read_as_text_is_refused_naming_it(
    char_tokenizer: str, tmp_path: Path
) -> None:
    binary = Path(sys.executable).resolve()  # an executable: NUL bytes, and not UTF-8
    out = tmp_path / "out"
    line = error_line(prepare(char_tokenizer, out, [binary], "source.text_mode=lines"))
    assert line.startswith(f"error: {binary} (") and "binary" in line
    assert not (out / "manifest.json").exists()


def test_a_directory_as_input_path_is_an_error_naming_it(
    char_tokenizer: str, tmp_path: Path, corpus_dir: Path
) -> None:
    out = tmp_path / "out"
    line = error_line(prepare(char_tokenizer, out, [corpus_dir]))
    assert f"{corpus_dir}: is a directory" in line and "glob" in line
    assert snapshot(out) == {}


@pytest.fixture
def special_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "corpus.sock"))
    yield {"fifo": fifo, "socket": tmp_path / "corpus.sock", "device": Path("/dev/zero")}
    sock.close()


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_non_regular_inputs_are_refused_not_waited_on(
    char_tokenizer: str, tmp_path: Path, special_files: dict[str, Path], kind: str, text: bytes
) -> None:
    path = special_files[kind]
    good = tmp_path / "good.txt"
    good.write_bytes(text)
    out = tmp_path / "out"
    line = error_line(prepare(char_tokenizer, out, [good, path]))
    assert f"{path}: not a regular file" in line
    assert snapshot(out) == {}
    tok = tmp_path / "tok"
    line = error_line(
        run("train-tokenizer", str(TOKENIZER_RECIPE), f"output={tok}", f"source.paths=[{path}]")
    )
    assert f"{path}: not a regular file" in line and not tok.exists()


def test_a_failing_run_leaves_a_finished_output_as_it_was(
    char_tokenizer: str, tmp_path: Path, text: bytes
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(text)
    out = tmp_path / "out"
    assert prepare(char_tokenizer, out, [src]).returncode == 0
    before = snapshot(out)
    src.write_bytes(b"")  # the same recipe over an input that is now empty: still finished
    result = prepare(char_tokenizer, out, [src])
    assert result.returncode == 0 and snapshot(out) == before, result.stderr


@pytest.mark.parametrize(
    "override", ["source.max_skipped_fraction=1.5", "source.max_skipped_fraction=nan"]
)
def test_the_threshold_is_validated(char_tokenizer: str, tmp_path: Path, override: str) -> None:
    line = error_line(prepare(char_tokenizer, tmp_path / "out", [tmp_path], override), code=2)
    assert "source.max_skipped_fraction" in line and override in line
