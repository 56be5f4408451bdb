"""Faults: SIGKILL midway then rerun gives byte-identical shards and no partial file ever sits
under a final name; `verify` names a truncated shard and a shard with one flipped byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from data_pipeline.configuration import to_dict
from data_pipeline.prepare import prepare
from data_pipeline.schemas import PrepareConfig
from data_pipeline.verify import verify

from .conftest import CORPORA, cli, cli_env


def sha_by_name(manifest: dict) -> dict[str, str]:
    return {
        s["name"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]
    }


@pytest.mark.slow
def test_sigkill_midway_then_rerun_is_byte_identical(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    source = CORPORA / "tinyshakespeare" / "input.txt"
    cfg = recipe(source={"paths": [str(source)]}, unit_bytes=16384, shard_bytes=16384)
    prepare(cfg, workers=2)
    out = Path(cfg.output)
    clean_manifest = (out / "manifest.json").read_bytes()
    clean = sha_by_name(json.loads(clean_manifest))
    out.rename(tmp_path / "clean")
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))

    proc = subprocess.Popen(
        cli("prepare", str(config_file), "--workers", "2"),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen_final: set[str] = set()
    killed = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # Every file under a final shard name, whenever we look, is the complete shard.
        for path in out.glob("*.tar"):
            if path.name.startswith(".tmp-"):
                continue  # a temporary, under no final name
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            assert hashlib.sha256(data).hexdigest() == clean[path.name], f"partial {path.name}"
            seen_final.add(path.name)
        if len(_markers(out)) >= 8:
            os.killpg(proc.pid, signal.SIGKILL)  # the job and its workers, mid-run
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert killed, f"prepare ended before it could be killed: {err}"
    assert not (out / "manifest.json").exists()
    committed = len(_markers(out))
    assert 8 <= committed < 70 and seen_final

    result = prepare(cfg, workers=2)
    assert result.units_skipped >= committed
    assert (out / "manifest.json").read_bytes() == clean_manifest
    final = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("[tv]*.tar")}
    assert final == clean
    assert not list(out.rglob(".tmp-*"))  # finalize cleared the killed run's temporaries


def test_verify_names_truncated_and_flipped_shards(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    cfg = recipe()
    prepare(cfg, workers=1)
    out = Path(cfg.output)
    manifest = json.loads((out / "manifest.json").read_text())
    names = [s["name"] for s in manifest["splits"]["train"]["shards"]]
    assert verify(cfg.output) == {}
    truncated, flipped = out / names[0], out / names[-1]
    truncated.write_bytes(truncated.read_bytes()[:-700])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0x01
    flipped.write_bytes(bytes(data))
    bad = verify(str(out / "manifest.json"))
    assert set(bad) == {names[0], names[-1]}
    assert "size" in bad[names[0]][0] and "sha256" in bad[names[-1]][0]
    run = subprocess.run(cli("verify", str(out)), env=cli_env(), capture_output=True, text=True)
    assert run.returncode == 1
    assert f"BAD {names[0]}" in run.stdout and f"BAD {names[-1]}" in run.stdout


def _markers(out: Path) -> list[Path]:
    """Committed unit markers; pathlib's glob also matches a marker's in-flight temporary."""
    return [p for p in out.glob("_units/*.json") if not p.name.startswith(".")]
