"""`pretrain generate` streams its text as it is generated, in whole characters, and stops on
SIGINT or SIGTERM with what it generated so far (exit code 128 + the signal, one line on
stderr), instead of printing nothing for hours and losing it all to Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.tokenizer import Tokenizer
from pretrain.generate.command import TextStream
from tests.conftest import REPO_ROOT
from tests.helpers.tiny_models import tiny_export, tiny_tokenizer

# Characters of 1 to 4 UTF-8 bytes, some the tokenizers never saw (byte tokens then).
TEXT = "héllo 日本語 🙂 ok Ελληνικά, and unseen: 漢字 ✓ ∑ 🚲."
PROMPT = "Café 🙂:"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("streaming")
    return tiny_export(root, tiny_tokenizer(root))


@pytest.mark.parametrize(("kind", "vocab_size"), [("hf_bpe", 300), ("sp_bpe", 400)])
def test_text_comes_out_in_whole_characters(tmp_path: Path, kind: str, vocab_size: int) -> None:
    tokenizer = tiny_tokenizer(tmp_path, kind, vocab_size)
    ids = tokenizer.encode(TEXT)
    assert len(ids) > len(TEXT.encode()) // 3  # the rare characters are in several tokens
    stream = TextStream(tokenizer, tokenizer.encode(PROMPT))
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for p in pieces if p) > 10  # given out as it came, not at the end


def test_a_held_character_is_given_out_after_its_last_byte(tmp_path: Path) -> None:
    tokenizer: Tokenizer = tiny_tokenizer(tmp_path)
    ids = tokenizer.encode("🚲")
    assert len(ids) > 1  # byte tokens: 4 bytes, never seen in training
    stream = TextStream(tokenizer, [])
    assert [stream.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🚲"]


def _start(export: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain.cli", "generate", str(export), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )


def _read_until(proc: subprocess.Popen[bytes], size: int, timeout: float = 120) -> bytes:
    """What the process printed, once it is more than ``size`` bytes (read while it runs)."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) <= size:
        assert time.monotonic() < deadline, f"no streamed output within {timeout} s: {got!r}"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"generate ended before streaming anything: {proc.wait()} {got!r}"
        got += chunk
    return got


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_an_endless_generation_with_what_it_made(
    export: Path, sig: signal.Signals
) -> None:
    proc = _start(export, "--prompt", PROMPT, "--max-new-tokens", "1000000000", "--seed", "3")
    streamed = _read_until(proc, len(PROMPT.encode()) + 20)
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)
    out = (streamed + rest).decode("utf-8")  # strict: whole characters only
    assert proc.returncode == 128 + sig, err
    assert out.startswith(PROMPT) and out.endswith("\n")
    assert len(streamed + rest) > len(PROMPT.encode()) + 20
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.decode(), err
    assert f"stopped by {sig.name} after" in lines[0] and "of 1000000000 new tokens" in lines[0]


def test_several_samples_as_json_are_printed_when_stopped(export: Path) -> None:
    proc = _start(
        export, "--prompt", PROMPT, "--max-new-tokens", "1000000000", "--num-samples", "2",
        "--json",
    )  # fmt: skip
    time.sleep(8)  # nothing is printed before the end: give it time to start generating
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    records = json.loads(out)
    assert len(records) == 2 and len(records[0]["ids"]) == len(records[1]["ids"])
    assert "stopped by SIGTERM" in err.decode() and "Traceback" not in err.decode()


def test_a_reader_that_closes_the_pipe_ends_it_quietly(export: Path) -> None:
    proc = _start(export, "--prompt", PROMPT, "--max-new-tokens", "1000000000")
    _read_until(proc, 40)
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head -c 40` does
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()


def test_output_is_the_same_streamed_or_not(export: Path) -> None:
    """One sample streamed and the same seed as JSON give the same text."""
    args = ["--prompt", PROMPT, "--max-new-tokens", "60", "--seed", "5", "--temperature", "1"]
    streamed = _start(export, *args).communicate(timeout=120)[0].decode("utf-8")
    as_json = json.loads(_start(export, *args, "--json").communicate(timeout=120)[0])
    assert streamed == PROMPT + as_json[0]["text"] + "\n"
