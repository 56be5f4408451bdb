"""A damaged shard met in training (deleted, truncated, a token id past the vocabulary) ends
`pretrain train` with one error line naming the shard and exit code 1: not a rank's traceback,
nor an IndexError from the embedding lookup. Real single-process runs on the prepared
tinyshakespeare shards; every train shard is damaged, so the first step meets one."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.helpers.distributed import distributed_env, run_distributed
from tests.helpers.trained_runs import experiment_file

pytestmark = pytest.mark.distributed


def _delete(path: Path, vocab_size: int) -> None:
    path.unlink()


def _truncate(path: Path, vocab_size: int) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _past_the_vocabulary(path: Path, vocab_size: int) -> None:
    """The first token of every sample becomes ``vocab_size``: same size, still decodes."""
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".tokens.npy"):
                f = tar.extractfile(member)
                assert f is not None
                data = f.read()
                tokens = np.load(io.BytesIO(data), allow_pickle=False)
                at = member.offset_data + len(data) - tokens.nbytes
                first = np.array([vocab_size], tokens.dtype).tobytes()
                raw[at : at + len(first)] = first
    path.write_bytes(bytes(raw))


DAMAGE: dict[str, tuple[Callable[[Path, int], None], str]] = {
    "deleted": (_delete, "No such file"),
    "truncated": (_truncate, "bytes, the manifest says"),
    "token_past_vocabulary": (_past_the_vocabulary, "outside the manifest's vocabulary"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_shard_is_one_error_line_naming_it(
    char_manifest: Path, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(char_manifest.parent, data)
    manifest = json.loads((data / "manifest.json").read_text())
    vocab_size = int(manifest["tokenizer"]["vocab_size"])
    harm, says = DAMAGE[damage]
    for shard in manifest["splits"]["train"]["shards"]:
        harm(data / shard["name"], vocab_size)
    config = experiment_file(tmp_path, data / "manifest.json")
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "train", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=distributed_env(),
        timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: bad shard "), result.stderr
    assert f"{data}/train-" in errors[0] and ".tar" in errors[0] and says in errors[0]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_bad_shard_on_one_rank_stops_every_rank_with_its_cause(tmp_path: Path) -> None:
    """No rank is left waiting in the next collective for the one that stopped: each raises
    the same cause, the rank that met the shard its own error."""
    run = run_distributed("tests.helpers.rank_functions:bad_shard_on_rank_one", workdir=tmp_path)
    first, second = (r.value for r in run.ranks)
    assert second["raised"] == "bad shard /data/train-00001-00003.tar: truncated"
    assert first["raised"] == second["raised"] + " (met by rank 1)"
    assert first["after"] == second["after"] == 2.0
